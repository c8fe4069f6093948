#!/usr/bin/env python3
"""Peer benchmark: Hugging Face transformers Qwen3ForCausalLM prefill / decode throughput.

Random weights built from a Qwen3 config.json (no checkpoint download), eager attention by
default, so the numbers are a like-for-like reference for andes' own forward pass.

  prefill: one forward over N random token ids (use_cache=True), timed from call to logits
           materialised (torch.cuda.synchronize on cuda). tokens/s = batch*N / time.
  decode:  greedy loop of M steps, each a direct model forward of one token per sequence with
           the KV cache returned by that prefill (no generate()), argmax on the last logits.
           tokens/s = batch*M / time; the prefill is not included.

Each repeat does a fresh prefill + decode; warmup repeats are discarded; medians are reported.

Example:
  python3 scripts/bench/forward_peer.py --config configs/models/qwen3-0.6b.json \
      --device cuda --dtype bfloat16 --out peer.json
"""
import argparse
import inspect
import json
import platform
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoConfig, Qwen3ForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="Qwen3 config.json")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU only)")
    p.add_argument("--attn", choices=["eager", "sdpa"], default="eager",
                   help="attention implementation (default eager)")
    p.add_argument("--prefill-logits", choices=["all", "last"], default="all",
                   help="prefill computes logits for all N positions (plain forward, default) "
                        "or only the last one (logits_to_keep=1, as generate() does)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 for float32 matmuls on cuda (default off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write JSON result here")
    return p.parse_args()


def set_tf32(enabled):
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):  # torch >= 2.9 API
        m.fp32_precision = "tf32" if enabled else "ieee"
    else:
        m.allow_tf32 = enabled


def cache_kwarg_name(model):
    # transformers 5.x renamed `past_key_values` to `cache` (forward kwarg and output field).
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def main():
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads is not None:
        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        else:
            print("note: --threads ignored on cuda", file=sys.stderr)
    if args.device == "cuda":
        set_tf32(args.tf32)
    torch.manual_seed(args.seed)

    dtype = DTYPES[args.dtype]
    device = torch.device(args.device)
    config = AutoConfig.from_pretrained(args.config)
    if config.model_type != "qwen3":
        sys.exit(f"expected model_type qwen3, got {config.model_type!r}")
    config._attn_implementation = args.attn
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is not None and args.prompt_len + args.decode_tokens > max_pos:
        sys.exit(f"prompt_len + decode_tokens exceeds max_position_embeddings={max_pos}")

    t0 = time.perf_counter()
    model = Qwen3ForCausalLM(config)
    model = model.to(dtype).to(device)
    model.eval()
    init_s = time.perf_counter() - t0
    assert model.config._attn_implementation == args.attn, model.config._attn_implementation
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once

    cache_kw = cache_kwarg_name(model)
    logits_to_keep = 1 if args.prefill_logits == "last" else 0
    B, N, M = args.batch, args.prompt_len, args.decode_tokens
    vocab = config.vocab_size

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def one_run():
        ids = torch.randint(0, vocab, (B, N), device=device)
        sync()
        t_start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=logits_to_keep)
        logits = out.logits
        sync()
        prefill_s = time.perf_counter() - t_start
        cache = getattr(out, cache_kw)
        assert cache is not None and cache.get_seq_length() == N

        last = logits[:, -1, :]
        sync()
        t_start = time.perf_counter()
        for _ in range(M):
            tok = last.argmax(dim=-1, keepdim=True)  # (B, 1)
            out = model(input_ids=tok, use_cache=True, **{cache_kw: cache})
            cache = getattr(out, cache_kw)
            last = out.logits[:, -1, :]
        last.argmax(dim=-1)  # the token the last step yields
        sync()
        decode_s = time.perf_counter() - t_start
        assert cache.get_seq_length() == N + M
        return prefill_s, decode_s

    prefill_times, decode_times = [], []
    with torch.inference_mode():
        for _ in range(args.warmup):
            one_run()
        for _ in range(args.repeats):
            p_s, d_s = one_run()
            prefill_times.append(p_s)
            decode_times.append(d_s)

    prefill_med = statistics.median(prefill_times)
    decode_med = statistics.median(decode_times) if M > 0 else float("nan")
    result = {
        "peer": f"transformers-{args.attn}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": args.device,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "tf32": args.tf32 if device.type == "cuda" else None,
        "dtype": args.dtype,
        "attn_implementation": args.attn,
        "config": args.config,
        "batch": B,
        "prompt_len": N,
        "decode_tokens": M,
        "prefill_logits": args.prefill_logits,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "prefill_tokens_per_s": B * N / prefill_med,
        "decode_tokens_per_s": B * M / decode_med if M > 0 else None,
        "prefill_ms_median": prefill_med * 1e3,
        "decode_ms_per_token_median": decode_med * 1e3 / M if M > 0 else None,
        "prefill_ms_all": [t * 1e3 for t in prefill_times],
        "decode_ms_all": [t * 1e3 for t in decode_times],
        "params": n_params,
        "init_s": init_s,
    }
    if device.type == "cuda":
        result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20

    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    where = result["gpu_name"] or f"cpu x{result['threads']}"
    dec = (f"decode {result['decode_tokens_per_s']:.1f} tok/s "
           f"({result['decode_ms_per_token_median']:.2f} ms/tok, M={M})" if M > 0 else "decode skipped")
    print(f"{result['peer']} {args.dtype} on {where}: params {n_params/1e6:.1f}M, batch {B}, "
          f"prefill {result['prefill_tokens_per_s']:.1f} tok/s ({prefill_med*1e3:.1f} ms, N={N}), {dec}"
          f" [median of {args.repeats}, torch {torch.__version__}, transformers {transformers.__version__}]")


if __name__ == "__main__":
    main()
