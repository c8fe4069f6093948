#!/bin/bash
# ab.sh ARGS...: old/new product_speed interleaved 5 times, median GB/s each
for i in 1 2 3 4 5; do for b in old new; do echo "$b $(RAYON_NUM_THREADS=${T:-1} /tmp/ps-$b "$@" | grep -o '[0-9.]* GB/s' | cut -d' ' -f1)"; done; done > /tmp/ab.out
for b in old new; do echo "$b median $(grep "^$b " /tmp/ab.out | cut -d' ' -f2 | sort -n | sed -n 3p) all: $(grep "^$b " /tmp/ab.out | cut -d' ' -f2 | tr '\n' ' ')"; done
