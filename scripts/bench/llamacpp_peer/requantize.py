#!/usr/bin/env python3
"""Round-trips every linear of a Hugging Face Qwen3 checkpoint through a llama.cpp (ggml) type.

Each q/k/v/o/gate/up/down weight ([out, in], f32) is written as raw f32, quantized and
dequantized by ggml_roundtrip (ggml_quantize_chunk, then the type's to_float), and read back;
embeddings, norms and lm_head stay float, as in andes' quantizers. The result is a new model
directory (config, tokenizer, model.safetensors) that `andes eval --model` scores like any
other checkpoint. Prints JSON: the type, the packed bytes and bpw over the linears.

  python3 requantize.py --tool ./ggml_roundtrip --type q4_K --model DIR --out DIR \
      [--imatrix imatrix.safetensors]
"""
import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", required=True, help="the ggml_roundtrip binary")
    ap.add_argument("--type", required=True, help="ggml type name, e.g. q4_K, iq2_xxs")
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--imatrix", help="safetensors of per-linear input-column importances")
    args = ap.parse_args()

    weights = load_file(args.model / "model.safetensors")
    imatrix = load_file(args.imatrix) if args.imatrix else {}
    packed_bytes, count = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, imx = (Path(tmp) / n for n in ("w.f32", "q.f32", "imatrix.f32"))
        for name in sorted(weights):
            if not any(name.endswith(f"{linear}.weight") for linear in LINEARS):
                continue
            w = np.ascontiguousarray(weights[name], dtype=np.float32)
            rows, cols = w.shape
            w.tofile(src)
            cmd = [args.tool, args.type, str(rows), str(cols), str(src), str(dst)]
            if args.imatrix:
                imatrix[name].astype(np.float32).tofile(imx)
                cmd.append(str(imx))
            packed_bytes += int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            weights[name] = np.fromfile(dst, dtype=np.float32).reshape(rows, cols)
            count += w.size

    args.out.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (args.model / f).exists():
            shutil.copy(args.model / f, args.out / f)
    save_file(weights, args.out / "model.safetensors")
    print(json.dumps({"type": args.type, "imatrix": bool(args.imatrix), "weights": count,
                      "packed_bytes": packed_bytes, "bpw_linears": 8 * packed_bytes / count}))


if __name__ == "__main__":
    main()
