#!/usr/bin/env bash
# The llama.cpp quantization peer of BENCHMARKS.md's "perplexity against bits per weight":
# trains a Qwen3 whose linear rows are multiples of 256 (config.json here), quantizes its
# linears with llama.cpp's quantizers (ggml, from the llama-cpp-python sdist) and with andes,
# and scores every variant with `andes eval` on held-out GCIDE prose. See README.md.
#
#   scripts/bench/llamacpp_peer/run.sh RESULTS_DIR
#
# Environment: ANDES (andes binary; default `andes` on PATH), WORK (scratch directory,
# default /tmp/llamacpp/work-run), STEPS (600),
# LLAMA_CPP_PYTHON (0.3.36). Heavy steps run under `nice -n 19`.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
OUT=$(realpath -m "${1:?usage: run.sh RESULTS_DIR}")
ANDES=$(realpath "$(command -v "${ANDES:-andes}")")
WORK=$(realpath -m "${WORK:-/tmp/llamacpp/work-run}")
STEPS=${STEPS:-600}
LCP=${LLAMA_CPP_PYTHON:-0.3.36}
NICE="nice -n 19"
TRAIN_TEXT=datasets/gcide/gcide-sample.txt
EVAL_TEXT=datasets/gcide/gcide-eval.txt
WINDOW=64 # the window of `cargo xtask bench quantize`
mkdir -p "$OUT" "$WORK"
ROWS=$OUT/rows.jsonl TIMES=$OUT/timings.jsonl
: > "$ROWS"; : > "$TIMES"
cd "$ROOT"

since() { awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }'; }

phase() { # NAME COMMAND...: runs COMMAND, appends its wall time to timings.jsonl
    local name=$1 t0; shift; t0=$(date +%s.%N)
    "$@"
    echo "{\"phase\": \"$name\", \"seconds\": $(since "$t0")}" >> "$TIMES"
}

# One row: METHOD LABEL MODEL BPW [andes eval args...]; BPW null takes eval's bpw_linears.
row() {
    local method=$1 label=$2 model=$3 bpw=$4 t0 json; shift 4; t0=$(date +%s.%N)
    json=$($NICE "$ANDES" eval --model "$model" --text $EVAL_TEXT --window $WINDOW --json "$@")
    echo "{\"method\": \"$method\", \"label\": \"$label\", \"bpw\": $bpw, \"eval\": $json," \
        "\"eval_seconds\": $(since "$t0")}" >> "$ROWS"
}

setup() {
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3 \
        scikit-build-core cmake
    # --no-build-isolation: pip must not build cmake from source to read the sdist's metadata.
    "$WORK/venv/bin/pip" download -q --no-binary :all: --no-deps --no-build-isolation \
        "llama-cpp-python==$LCP" -d "$WORK/dl"
    tar xzf "$WORK/dl/llama_cpp_python-$LCP.tar.gz" -C "$WORK"
}

build() { # ggml-base (quantizers and dequantizers, no backend) and the round-trip tool
    local src=$WORK/llama_cpp_python-$LCP/vendor/llama.cpp
    $NICE "$WORK/venv/bin/cmake" -S "$src" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_CPU=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF > "$WORK/build.log"
    $NICE "$WORK/venv/bin/cmake" --build "$WORK/build" --target ggml-base -j 2 >> "$WORK/build.log"
    $NICE gcc -O2 -fopenmp -I"$src/ggml/include" -o "$WORK/ggml_roundtrip" "$HERE/ggml_roundtrip.c" \
        "$WORK/build/ggml/src/libggml-base.a" -lstdc++ -lm
    for type in q4_K q3_K q2_K iq2_xxs iq1_m; do # name, bpw, ggml_quantize_requires_imatrix
        "$WORK/ggml_roundtrip" $type
    done > "$OUT/ggml_types.txt"
}

train() {
    rm -rf "$WORK/init" "$WORK/pretrain"
    $NICE "$ANDES" init --config "$HERE/config.json" \
        --tokenizer fixtures/qwen3-tiny-untied-mha-f32 --out "$WORK/init"
    $NICE "$ANDES" train --config configs/recipes/tiny/pretrain.toml --out "$WORK/pretrain" \
        --quiet --set model.checkpoint="$WORK/init" --set train.steps="$STEPS"
}

phase setup setup
phase build build
phase train train
PY=$WORK/venv/bin/python
MODEL=$WORK/pretrain/checkpoints/$(cat "$WORK/pretrain/checkpoints/latest")

# The numpy forward must reproduce andes eval before its importance matrix is trusted.
phase numpy_perplexity sh -c "$NICE $PY $HERE/qwen3_numpy.py perplexity --model $MODEL \
    --text $EVAL_TEXT --window $WINDOW > $OUT/numpy_perplexity.json"
phase imatrix sh -c "$NICE $PY $HERE/qwen3_numpy.py imatrix --model $MODEL --text $TRAIN_TEXT \
    --window $WINDOW --out $WORK/imatrix.safetensors > $OUT/imatrix.json"

phase andes_float row float f32 "$MODEL" 32

for spec in q4_K: q3_K: q2_K: iq2_xxs:imatrix iq1_m:imatrix q4_K:imatrix q3_K:imatrix q2_K:imatrix; do
    type=${spec%%:*} dir=$WORK/llamacpp-${spec/:/-}
    args=(--tool "$WORK/ggml_roundtrip" --type "$type" --model "$MODEL" --out "$dir")
    [[ $spec == *:imatrix ]] && args+=(--imatrix "$WORK/imatrix.safetensors")
    t0=$(date +%s.%N)
    bpw=$($NICE "$PY" "$HERE/requantize.py" "${args[@]}" | tee "$dir.json" | "$PY" -c \
        'import json, sys; print(json.load(sys.stdin)["bpw_linears"])')
    echo "{\"phase\": \"requantize $spec\", \"seconds\": $(since "$t0")}" >> "$TIMES"
    label=${type^^}
    [[ $spec == *:imatrix ]] && label="$label + imatrix"
    row "llama.cpp (ggml)" "$label" "$dir" "$bpw"
done

for format in int4-channel-sym int3-g64-asym int2-g64-asym int2-g128-asym ternary-channel; do
    row "uniform GPTQ" $format "$MODEL" null --quant $format --init gptq --calib $TRAIN_TEXT
done
for format in int4-channel-sym int2-g64-asym; do
    row "uniform RTN" $format "$MODEL" null --quant $format --init rtn --calib $TRAIN_TEXT
done
rm -rf "$WORK/packages"; mkdir -p "$WORK/packages"
for budget in 4 3 2.5 2 1.8; do
    package=$WORK/packages/bpw-$budget
    phase "andes quantize --bpw $budget" sh -c "$NICE $ANDES quantize --target dimensity9500 \
        --bpw $budget --calib $TRAIN_TEXT --model $MODEL --cache $WORK/packages/cache \
        --out $package --json > $OUT/quantize-bpw-$budget.json"
    row "planned (dimensity9500)" "--bpw $budget" "$package" null
done

# Versions, model and the table.
"$PY" - "$OUT" "$MODEL" "$WORK" "$LCP" "$("$ANDES" --version)" <<'EOF'
import json, subprocess, sys
from pathlib import Path
out, model, work, lcp, andes = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]
src = work / f"llama_cpp_python-{lcp}/vendor/llama.cpp"
rows = [json.loads(l) for l in (out / "rows.jsonl").read_text().splitlines()]
times = [json.loads(l) for l in (out / "timings.jsonl").read_text().splitlines()]
metrics = [json.loads(l) for l in (work / "pretrain/metrics.jsonl").read_text().splitlines()]
config = json.loads((model / "config.json").read_text())
numpy_ppl = json.loads((out / "numpy_perplexity.json").read_text())
cmake = (src / "ggml/CMakeLists.txt").read_text()
ggml = ".".join(l.split()[1].rstrip(")") for l in cmake.splitlines() if l.startswith("set(GGML_VERSION_M") or l.startswith("set(GGML_VERSION_PATCH"))
meta = {
    "andes": andes, "llama_cpp_python": lcp, "ggml": ggml,
    "llama_cpp_commit": subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None,
    "model": {k: config[k] for k in ("hidden_size", "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "vocab_size", "tie_word_embeddings")},
    "train_steps": metrics[-1]["step"], "train_tokens": sum(m["tokens"] for m in metrics),
    "ggml_types": {t: {"bpw": float(b), "requires_imatrix": r == "1"} for t, b, r in
                   (l.split() for l in (out / "ggml_types.txt").read_text().splitlines())},
    "numpy_forward_perplexity": numpy_ppl["perplexity"], "imatrix": json.loads((out / "imatrix.json").read_text()),
}
float_ppl = rows[0]["eval"]["perplexity"]
for r in rows:
    r["bpw"] = r["eval"]["bpw_linears"] if r["bpw"] is None else r["bpw"]
    r["perplexity"], r["vs_float"] = r["eval"]["perplexity"], r["eval"]["perplexity"] / float_ppl
(out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "timings": times}, indent=2) + "\n")
m = meta["model"]
table = (f"Qwen3 (hidden {m['hidden_size']}, intermediate {m['intermediate_size']}, {m['num_hidden_layers']} layers, "
         f"{m['num_attention_heads']} heads of {m['head_dim']}, vocab {m['vocab_size']}, untied) pretrained "
         f"{meta['train_steps']} steps ({meta['train_tokens']} tokens) on GCIDE prose; held-out prose perplexity "
         f"(`andes eval`, window 64); float: {float_ppl:.3f} (numpy forward: {numpy_ppl['perplexity']:.3f}). "
         f"bpw over the quantized linears, scales and zeros counted. llama-cpp-python {lcp} "
         f"(llama.cpp {meta['llama_cpp_commit']}, ggml {ggml}).\n\n"
         "| method | type / format / budget | bpw | perplexity | vs float |\n|---|---|---|---|---|\n")
table += "".join(f"| {r['method']} | {r['label']} | {r['bpw']:.3f} | {r['perplexity']:.3f} | {r['vs_float']:.3f}× |\n" for r in rows)
(out / "table.md").write_text(table)
print(table)
EOF
