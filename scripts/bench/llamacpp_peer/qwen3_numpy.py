#!/usr/bin/env python3
"""A Qwen3 forward pass in numpy (float64), for llama.cpp's importance matrix.

  perplexity: held-out perplexity of a text file by the sliding windows of `andes eval`
              (crates/andes-model/src/perplexity.rs): the whole file is one token sequence
              (no special tokens added), windows of --window tokens every --stride tokens,
              each window scoring only the tokens no earlier window scored. Printed as JSON,
              to check this forward against `andes eval` on the same model.
  imatrix:    what llama-imatrix collects: for every linear, the mean over calibration tokens
              of x_j^2 for each input column j, x being that linear's input. The text is
              tokenized as one sequence and cut into consecutive --window-token chunks, each
              run from position 0 (llama-imatrix's chunks of n_ctx). Written as a
              safetensors file of one f32 vector per linear weight name.

  python3 qwen3_numpy.py perplexity --model DIR --text FILE --window 64
  python3 qwen3_numpy.py imatrix --model DIR --text FILE --window 64 --out imatrix.safetensors
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x, theta):
    """Rotary embedding (rotate-half layout) of x: [heads, seq, head_dim]."""
    dim, seq = x.shape[-1], x.shape[-2]
    inv_freq = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(seq)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))
    half = dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class Qwen3:
    def __init__(self, model_dir):
        model_dir = Path(model_dir)
        self.cfg = json.loads((model_dir / "config.json").read_text())
        self.w = {k: v.astype(np.float64) for k, v in load_file(model_dir / "model.safetensors").items()}
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def encode(self, path):
        return self.tokenizer.encode(Path(path).read_text(), add_special_tokens=False).ids

    def forward(self, ids, record=None):
        """Logits [seq, vocab] of one sequence; record(name, x) sees each linear's input."""
        c, w = self.cfg, self.w
        eps = c["rms_norm_eps"]
        theta = (c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta"))  # transformers 5 or 4
        nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        seq = len(ids)
        mask = np.triu(np.full((seq, seq), -np.inf), 1)

        def linear(name, x):
            if record:
                record(name, x)
            return x @ w[name].T

        h = w["model.embed_tokens.weight"][ids]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
            heads = lambda t, n: t.reshape(seq, n, hd).transpose(1, 0, 2)
            q = heads(linear(p + "self_attn.q_proj.weight", x), nh)
            k = heads(linear(p + "self_attn.k_proj.weight", x), nkv)
            v = heads(linear(p + "self_attn.v_proj.weight", x), nkv)
            q = rope(rms_norm(q, w[p + "self_attn.q_norm.weight"], eps), theta)
            k = rope(rms_norm(k, w[p + "self_attn.k_norm.weight"], eps), theta)
            k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            attn = (probs @ v).transpose(1, 0, 2).reshape(seq, nh * hd)
            h = h + linear(p + "self_attn.o_proj.weight", attn)
            x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
            gate = linear(p + "mlp.gate_proj.weight", x)
            up = linear(p + "mlp.up_proj.weight", x)
            h = h + linear(p + "mlp.down_proj.weight", gate / (1 + np.exp(-gate)) * up)
        h = rms_norm(h, w["model.norm.weight"], eps)
        return h @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T  # tied: the embedding

    def token_nll(self, ids):
        """NLL of tokens 1.. of ids given the tokens before each."""
        logits = self.forward(ids)[:-1]
        top = logits.max(-1, keepdims=True)
        log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
        return log_z - logits[np.arange(len(ids) - 1), ids[1:]]


def perplexity(model, ids, window, stride):
    """The sliding-window perplexity of andes eval (transformers' perplexity guide)."""
    nll_sum, scored, previous_end, begin = 0.0, 0, 0, 0
    while True:
        end = min(begin + window, len(ids))
        first_scored = max(end - begin - (end - previous_end), 1)
        nll = model.token_nll(ids[begin:end])
        nll_sum += nll[first_scored - 1:].sum()
        scored += len(nll) + 1 - first_scored
        previous_end = end
        if end == len(ids):
            break
        begin += stride
    mean = nll_sum / scored
    return {"tokens": len(ids), "scored_tokens": scored, "mean_nll": mean,
            "perplexity": float(np.exp(mean)), "window": window, "stride": stride}


def imatrix(model, ids, window):
    sums, counts = defaultdict(float), defaultdict(int)

    def record(name, x):
        sums[name] = sums[name] + (x * x).sum(0)
        counts[name] += x.shape[0]

    for begin in range(0, len(ids) - window + 1, window):
        model.forward(ids[begin:begin + window], record)
    return {name: (sums[name] / counts[name]).astype(np.float32) for name in sums}, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["perplexity", "imatrix"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--stride", type=int, help="default: half the window")
    ap.add_argument("--out", help="imatrix: output safetensors file")
    args = ap.parse_args()
    model = Qwen3(args.model)
    ids = np.array(model.encode(args.text))
    if args.command == "perplexity":
        print(json.dumps(perplexity(model, ids, args.window, args.stride or max(args.window // 2, 1))))
    else:
        matrix, counts = imatrix(model, ids, args.window)
        save_file(matrix, args.out)
        print(json.dumps({"linears": len(matrix), "tokens": max(counts.values()), "chunks": len(ids) // args.window}))


if __name__ == "__main__":
    main()
