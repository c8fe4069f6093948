#!/usr/bin/env python3
"""Peer benchmark: transformers vision-tower images/s at one native resolution.

Random weights from a config (a SigLIP2 / AIMv2 config.json, or an andes AndesVL config.json
whose `vision_config` is used), random pixels, the same shape andes' `andes bench vision`
runs. SigLIP2 gets its NaFlex inputs (patch vectors, spatial_shapes, an all-ones mask),
AIMv2 the image. Timed from call to features materialised (torch.cuda.synchronize on cuda);
warmup passes discarded; the median is reported as JSON.

  python3 scripts/bench/vision_peer.py --config configs/models/andesvl-0.6b/config.json \\
      --device cuda --dtype bfloat16 --height 512 --width 512 --batch 8
"""
import argparse
import json
import statistics
import time

import torch
import transformers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--attn", choices=["eager", "sdpa"], default="eager")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = json.load(open(args.config))
    vision = raw.get("vision_config", raw) if raw.get("model_type") in ("andesvl", "siglip2", "aimv2") else raw
    vision = {k: v for k, v in vision.items() if k != "rope_2d_theta"}
    family = vision["model_type"]
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    b, h, w = args.batch, args.height, args.width
    if family == "siglip2_vision_model":
        config = transformers.Siglip2VisionConfig(**vision)
        model = transformers.Siglip2VisionModel(config)
        ps = config.patch_size
        n = (h // ps) * (w // ps)
        inputs = dict(
            pixel_values=torch.randn(b, n, 3 * ps * ps, dtype=dtype, device=device),
            pixel_attention_mask=torch.ones(b, n, dtype=torch.long, device=device),
            spatial_shapes=torch.tensor([[h // ps, w // ps]] * b, device=device),
        )
    elif family == "aimv2_vision_model":
        config = transformers.Aimv2VisionConfig(**vision)
        model = transformers.Aimv2VisionModel(config)
        ps = config.patch_size
        n = (h // ps) * (w // ps)
        inputs = dict(pixel_values=torch.randn(b, 3, h, w, dtype=dtype, device=device))
    else:
        raise SystemExit(f"{args.config}: unsupported vision model_type {family}")
    model.config._attn_implementation = args.attn
    model = model.to(device=device, dtype=dtype).eval()
    seconds = []
    with torch.inference_mode():
        for run in range(args.warmup + args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = model(**inputs).last_hidden_state
            out.sum().item()
            if run >= args.warmup:
                seconds.append(time.perf_counter() - start)
    t = statistics.median(seconds)
    report = {
        "peer": f"transformers {transformers.__version__} {args.attn}",
        "torch": torch.__version__,
        "model_type": family,
        "device": args.device,
        "dtype": args.dtype,
        "height": h,
        "width": w,
        "patches": n,
        "batch": b,
        "params": sum(p.numel() for p in model.parameters()),
        "ms_median": t * 1e3,
        "images_per_s": b / t,
    }
    text = json.dumps(report)
    if args.out:
        open(args.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
