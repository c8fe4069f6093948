#!/usr/bin/env python3
"""Peer check of andes' PEFT export: loads an adapter directory written by andes with peft onto
the transformers base model and compares its logits with those andes computed.

usage: check_peft_export.py ADAPTER_DIR BASE_DIR REFERENCE.json [--tolerance 1e-4]

REFERENCE.json is written by andes beside the adapter (the lora_parity test does it when
ANDES_EXPORT_DIR is set): {"prompt_ids": [...], "logits": [...]} with the adapted model's
logits, row-major [prompt length, vocab], f32 CPU, eager attention. Prints one JSON line with
the relative error ||peft - andes|| / ||andes|| and exits non-zero above the tolerance.
"""
import argparse
import json
import sys

import torch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter")
    parser.add_argument("base")
    parser.add_argument("reference")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    reference = json.load(open(args.reference))
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    with torch.inference_mode():
        ids = torch.tensor([reference["prompt_ids"]])
        logits = model(input_ids=ids, use_cache=False).logits[0].flatten()
        with model.disable_adapter():
            plain = model(input_ids=ids, use_cache=False).logits[0].flatten()
    expected = torch.tensor(reference["logits"], dtype=torch.float32)
    error = ((logits - expected).norm() / expected.norm()).item()
    adapter_effect = ((logits - plain).norm() / plain.norm()).item()
    print(json.dumps({
        "adapter": args.adapter,
        "relative_error": error,
        "adapter_vs_base_relative_difference": adapter_effect,
        "tolerance": args.tolerance,
    }))
    return 0 if error <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
