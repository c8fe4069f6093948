#!/bin/bash
# ab.sh ARGS...: two product_speed builds, OLD and NEW (paths), interleaved five times with
# RAYON_NUM_THREADS=T (default 1); each build's median GB/s and every run.
out=$(mktemp)
for i in 1 2 3 4 5; do for b in OLD NEW; do echo "$b $(RAYON_NUM_THREADS=${T:-1} "${!b}" "$@" | grep -o '[0-9.]* GB/s' | cut -d' ' -f1)"; done; done > "$out"
for b in OLD NEW; do echo "$b median $(grep "^$b " "$out" | cut -d' ' -f2 | sort -n | sed -n 3p) all: $(grep "^$b " "$out" | cut -d' ' -f2 | tr '\n' ' ')"; done
