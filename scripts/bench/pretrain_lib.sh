# Sourced by the benchmark scripts that pretrain a model before they measure it. `pretrain A
# OUT` runs `andes train` (binary A) on RECIPE (default the tiny recipe,
# configs/recipes/tiny/pretrain.toml) at SEQ_LEN tokens a window (default 512) for STEPS steps
# (default 600) of BATCH windows (default the recipe's) on TEXT (default
# datasets/gcide/gcide-large.txt, made by scripts/datasets/make_gcide_sample.py --large-bytes),
# from INIT (optional, a checkpoint) on DEVICE (default cpu), into OUT/pretrain; a second call
# with the same OUT resumes an interrupted run or reuses a finished one. Sets P to the final
# checkpoint.
pretrain() {
  local A=$1 OUT=$2
  local recipe=${RECIPE:-configs/recipes/tiny/pretrain.toml}
  local set_args=(--set data.seq_len=${SEQ_LEN:-512} --set train.steps=${STEPS:-600}
    --set "data.train=\"${TEXT:-datasets/gcide/gcide-large.txt}\""
    --set train.eval_every=1000000 --set train.device=\"${DEVICE:-cpu}\")
  [ -n "${BATCH:-}" ] && set_args+=(--set train.batch_size=$BATCH)
  [ -n "${INIT:-}" ] && set_args+=(--set "model.checkpoint=\"$INIT\"")
  if [ -f "$OUT/pretrain.done" ]; then :
  elif [ -f "$OUT/pretrain/checkpoints/latest" ]; then
    "$A" train --resume "$OUT/pretrain" --quiet > /dev/null && touch "$OUT/pretrain.done"
  else
    "$A" train --config "$recipe" --out "$OUT/pretrain" --quiet "${set_args[@]}" > /dev/null \
      && touch "$OUT/pretrain.done"
  fi
  [ -f "$OUT/pretrain.done" ] || { echo "pretraining failed" >&2; return 1; }
  P="$OUT/pretrain/checkpoints/$(cat "$OUT/pretrain/checkpoints/latest")"
}
