#!/usr/bin/env python3
"""The llama.cpp peer of `cargo xtask bench runtime`: the same Hugging Face Qwen3 checkpoint
converted to GGUF (f16), quantized to llama.cpp's types, and decoded greedily with the same
prompt ids and thread count; one JSON line per type on stdout.

    pip install llama-cpp-python gguf safetensors numpy tokenizers   # builds llama.cpp

On a CPU whose flags list AMX but whose virtual machine faults on it (llama.cpp's Q4_K path
dies with SIGILL), build it with every other extension of the CPU instead:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
      -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
      pip install --no-cache-dir llama-cpp-python==0.3.36
    python3 scripts/bench/runtime_llamacpp.py --model DIR --work DIR --threads 2 \
        --types f16,Q4_K_M,Q2_K,IQ2_XXS,IQ1_M --prompt "..." --new-tokens 64 \
        --imatrix imatrix.safetensors

The GGUF is written here with the `gguf` package (llama.cpp's own writer library), since
llama-cpp-python ships no converter: Qwen3's hyperparameters, the tokenizer as a GPT-2 BPE
vocabulary padded to the model's vocab size, and every tensor under llama.cpp's names
(gguf's tensor-name map for the qwen3 architecture); matrices f16, norms f32, as
convert_hf_to_gguf.py writes `--outtype f16`. Each type decodes in a fresh process so that its
peak memory (VmHWM) is its own. The IQ types need an importance matrix: `--imatrix FILE` hands
llama_model_quantize one (a safetensors file of per-input-column importances under the
checkpoint's linear names, as `llamacpp_peer/qwen3_numpy.py imatrix` writes it), under the
GGUF names; without one a type llama.cpp refuses to make is reported with its error, not
measured.
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

FTYPES = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
          "IQ2_XXS": "LLAMA_FTYPE_MOSTLY_IQ2_XXS", "IQ1_M": "LLAMA_FTYPE_MOSTLY_IQ1_M",
          "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


def convert(model, out):
    import gguf
    import numpy as np
    from safetensors import safe_open

    config = json.load(open(os.path.join(model, "config.json")))
    arch = gguf.MODEL_ARCH.QWEN3
    layers, vocab_size = config["num_hidden_layers"], config["vocab_size"]
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_rope_freq_base(float(config["rope_theta"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokenizer = json.load(open(os.path.join(model, "tokenizer.json")))
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in tokenizer["model"]["vocab"].items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for added in tokenizer["added_tokens"]:
        tokens[added["id"]], types[added["id"]] = added["content"], gguf.TokenType.CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = min(config["eos_token_id"], len(tokenizer["model"]["vocab"]))
    writer.add_eos_token_id(eos)
    names = gguf.get_tensor_name_map(arch, layers)
    files = sorted(f for f in os.listdir(model) if f.endswith(".safetensors"))
    for file in files:
        with safe_open(os.path.join(model, file), framework="np") as f:
            for name in f.keys():
                data = f.get_tensor(name)
                target = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise SystemExit(f"{file}: no GGUF name for tensor {name}")
                writer.add_tensor(target, data.astype(np.float16 if data.ndim == 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def importances(path, layers):
    """The importance matrix of `path` as llama_model_quantize takes it: an array of
    (GGUF tensor name, f32 values, count) ending in a null name. The arrays are returned too,
    since the structures only point at them."""
    import gguf
    import llama_cpp
    import numpy as np
    from safetensors.numpy import load_file

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, layers)
    vectors = []
    for name, values in load_file(path).items():
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise SystemExit(f"{path}: no GGUF name for tensor {name}")
        vectors.append((target.encode(), np.ascontiguousarray(values, np.float32)))
    entries = (llama_cpp.llama_model_imatrix_data * (len(vectors) + 1))()
    for entry, (name, values) in zip(entries, vectors):
        entry.name = name
        entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entry.size = values.size
    return entries, vectors


def quantize(source, out, kind, threads, imatrix):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[kind])
    params.nthread = threads
    if imatrix is not None:
        params.imatrix = ctypes.cast(imatrix[0], ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    partial = out + ".partial"  # a refused or interrupted quantization leaves no file behind
    code = llama_cpp.llama_model_quantize(source.encode(), partial.encode(), ctypes.byref(params))
    if code == 0:
        os.replace(partial, out)
    elif os.path.exists(partial):
        os.remove(partial)
    return code == 0


def decode(path, ids, new_tokens, threads, flash_attn):
    """Runs in its own process: prefill, then greedy steps; prints one JSON object. The
    context holds the prompt and every generated token (512 at least)."""
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads,
                n_ctx=max(512, len(ids) + new_tokens), n_batch=512, flash_attn=flash_attn,
                verbose=False)
    vocab = llm.n_vocab()

    def next_token():
        logits = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(vocab,))))

    start = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - start
    token = next_token()
    generated = [token]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([token])
        token = next_token()
        generated.append(token)
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"prefill_tokens_per_s": len(ids) / prefill,
                      "decode_tokens_per_s": (new_tokens - 1) / seconds,
                      "peak_memory_mib": peak / 1024, "file_bytes": os.path.getsize(path),
                      "token_ids": generated}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--types", default="f16,Q4_K_M,Q2_K,IQ2_XXS,IQ1_M")
    parser.add_argument("--prompt", default="The meaning of the word is the meaning")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--imatrix", help="safetensors of per-linear input-column importances")
    parser.add_argument("--flash-attn", action="store_true",
                        help="llama.cpp's fused attention (llama-cpp-python leaves it off)")
    parser.add_argument("--decode-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json")).encode(
        args.prompt, add_special_tokens=False).ids
    if args.decode_only:
        decode(args.decode_only, ids, args.new_tokens, args.threads, args.flash_attn)
        return
    os.makedirs(args.work, exist_ok=True)
    f16 = os.path.join(args.work, "model-f16.gguf")
    if not os.path.exists(f16):
        convert(args.model, f16)
    imatrix = None
    if args.imatrix:
        layers = json.load(open(os.path.join(args.model, "config.json")))["num_hidden_layers"]
        imatrix = importances(args.imatrix, layers)
    for kind in args.types.split(","):
        path = f16 if kind == "f16" else os.path.join(args.work, f"model-{kind}.gguf")
        row = {"engine": "llama.cpp", "type": kind, "threads": args.threads,
               "imatrix": bool(args.imatrix), "flash_attn": args.flash_attn}
        if kind != "f16" and not os.path.exists(path) and not quantize(f16, path, kind, args.threads, imatrix):
            row["error"] = "llama_model_quantize refused it" + ("" if imatrix else " (IQ types need an importance matrix)")
            print(json.dumps(row), flush=True)
            continue
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--work", args.work,
                              "--threads", str(args.threads), "--prompt", args.prompt,
                              "--new-tokens", str(args.new_tokens), "--decode-only", path]
                             + (["--flash-attn"] if args.flash_attn else []),
                             capture_output=True, text=True)
        if out.returncode != 0:
            row["error"] = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
        else:
            row.update(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
