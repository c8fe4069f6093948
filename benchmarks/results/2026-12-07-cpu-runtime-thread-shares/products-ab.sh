#!/bin/bash
# products-ab.sh ROUNDS: product_speed of the session's first build (/tmp/ps-base) and its last
# (/tmp/ps-final), interleaved, each row's median over ROUNDS; THREADS=1 rows run on one thread.
R=${1:-5}
rows=("2 int4-g128-sym 3072 1024 64 1" "2 int4-g128-sym 3072 1024 64 4" "2 int8-channel-sym 151936 1024 1 1"
      "2 int8-channel-sym 151936 1024 1 4" "2 int2-g128-sym 3072 1024 64 1" "1 int4-g128-sym 3072 1024 1 1"
      "1 int4-g128-sym 3072 1024 1 2" "1 int4-g128-sym 3072 1024 1 3" "1 int4-g128-sym 3072 1024 1 4"
      "1 int2-g128-sym 3072 1024 1 1")
for i in $(seq $R); do for row in "${rows[@]}"; do set -- $row; t=$1; shift
  for b in base final; do echo "$b $t $* $(RAYON_NUM_THREADS=$t /tmp/ps-$b "$@" | awk '{print $(NF-1)}')"; done
done; done > products.raw
for row in "${rows[@]}"; do set -- $row; t=$1; shift
  for b in base final; do printf '%s threads=%s %s: median %s GB/s\n' $b $t "$*" \
    "$(grep "^$b $t $* " products.raw | awk '{print $NF}' | sort -n | sed -n "$(( (R+1)/2 ))p")"; done
done
