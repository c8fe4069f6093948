"""Holds the flash attention kernels (crates/andes-model/src/sdpa/flash.cu) to PyTorch's
scaled_dot_product_attention, forward and backward, and times both, on the GPU machine; each
configuration of the kernels (`--variants`, their compile-time options) is checked and timed
in the same process, so one call chooses among them.

The kernels are compiled with NVRTC and launched through the driver API on PyTorch's stream,
so this runs without the andes binary: the peer check of the kernels themselves. The
reference is PyTorch's causal SDPA in float64 (the exact answer for the bf16 operands), and
PyTorch's bf16 SDPA (its flash kernel) beside it: our error against float64 is reported next to
PyTorch's own. Timing: forward, and forward + backward, CUDA events, median of 20.

usage: python3 scripts/gpu/flash_check.py [--out FILE.json]
       [--variants "NAME=-DM_TILES=2 -DKEYS=32 -DPIPELINE=1;NAME=--source=OLD.cu -D...;..."] [--profile]
(default: the configuration sdpa/flash.rs compiles, FLASH_OPTIONS below; `--source=FILE` in a
variant compiles another version of the kernels, e.g. the last commit's, beside this one)
"""

import argparse
import ctypes
import glob
import json
import math
import os
import statistics

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "../../crates/andes-model/src/sdpa/flash.cu")
TILE, THREADS = 64, 128
# The options sdpa/flash.rs passes to NVRTC (its `Config::SHIPPED`).
FLASH_OPTIONS = "-DM_TILES=1 -DKEYS=64 -DPIPELINE=1"


def nvrtc():
    site = os.path.dirname(os.path.dirname(torch.__file__))
    for pattern in ("nvidia/cu13/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
        found = sorted(glob.glob(os.path.join(site, pattern)))
        found = [f for f in found if "builtins" not in f]
        if found:
            return ctypes.CDLL(found[0])
    return ctypes.CDLL("libnvrtc.so")


NVRTC = nvrtc()
CUDA = ctypes.CDLL("libcuda.so.1")


def check(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what} failed: {rc}")


class Config:
    """A configuration's compile-time options and the launch sizes they imply."""

    def __init__(self, options):
        tokens = options.split()
        self.source = next((t.split("=", 1)[1] for t in tokens if t.startswith("--source=")), SOURCE)
        self.options = " ".join(t for t in tokens if not t.startswith("--source="))
        values = dict(o[2:].split("=") for o in self.options.split())
        self.q_rows = 64 * int(values.get("M_TILES", 1))
        self.keys = int(values.get("KEYS", 64))
        self.stages = 2 if int(values.get("PIPELINE", 0)) else 1


def compile_module(head_dim, config):
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}" + ("a" if major >= 9 else "")
    prog = ctypes.c_void_p()
    check(NVRTC.nvrtcCreateProgram(ctypes.byref(prog), open(config.source, "rb").read(), b"flash.cu", 0, None, None), "nvrtcCreateProgram")
    opts = [f"--gpu-architecture={arch}".encode(), f"-DHEAD_DIM={head_dim}".encode()] + [o.encode() for o in config.options.split()]
    rc = NVRTC.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(prog, log)
    check(rc, "nvrtcCompileProgram: " + log.value.decode())
    NVRTC.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetPTX(prog, ptx)
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # a current context
    module = ctypes.c_void_p()
    check(CUDA.cuModuleLoadData(ctypes.byref(module), ptx), "cuModuleLoadData")
    functions = {}
    for name in ("flash_forward", "flash_backward_delta", "flash_backward_dkdv", "flash_backward_dq"):
        f = ctypes.c_void_p()
        check(CUDA.cuModuleGetFunction(ctypes.byref(f), module, name.encode()), name)
        # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
        check(CUDA.cuFuncSetAttribute(f, 8, shared_bytes(name, head_dim, config)), "cuFuncSetAttribute")
        functions[name] = f
    functions["config"] = config
    return functions


def shared_bytes(name, head_dim, config):
    row = (head_dim + 8) * 2
    return {"flash_forward": (config.q_rows + 2 * config.keys) * row, "flash_backward_delta": 0,
            "flash_backward_dkdv": (2 + 2 * config.stages) * TILE * row + 2 * config.stages * TILE * 4,
            "flash_backward_dq": (2 + 2 * config.stages) * TILE * row}[name]


class Layout(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_longlong), ("head", ctypes.c_longlong), ("row", ctypes.c_longlong)]


class Problem(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("q", "k", "v", "o", "d_o", "out", "lse", "delta", "dq", "dk", "dv")] + \
        [(n, Layout) for n in ("q_l", "k_l", "v_l", "o_l", "do_l", "out_l", "dq_l", "dk_l", "dv_l")] + \
        [(n, ctypes.c_int) for n in ("batch", "seq_q", "seq_k", "start", "group", "heads")] + \
        [("scale_log2", ctypes.c_float), ("scale", ctypes.c_float)]


def layout(t):
    if t is None:
        return Layout(0, 0, 0)
    assert t.stride(3) == 1
    return Layout(t.stride(0), t.stride(1), t.stride(2))


def ptr(t):
    return 0 if t is None else t.data_ptr()


def launch(functions, name, grid, problem, head_dim):
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    arg = ctypes.pointer(problem)
    args = (ctypes.c_void_p * 1)(ctypes.cast(arg, ctypes.c_void_p))
    check(CUDA.cuLaunchKernel(functions[name], grid[0], grid[1], grid[2], THREADS, 1, 1,
                              shared_bytes(name, head_dim, functions["config"]), stream, args, None), name)


def flash(functions, q, k, v, d_o, start):
    """Our forward, then (if d_o) our backward: (out, lse, dq, dk, dv)."""
    b, h, n, d = q.shape
    hk, nk = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(b, h, n, device=q.device, dtype=torch.float32)
    scale = 1 / math.sqrt(d)
    problem = Problem(q=ptr(q), k=ptr(k), v=ptr(v), out=ptr(out), lse=ptr(lse),
                      q_l=layout(q), k_l=layout(k), v_l=layout(v), out_l=layout(out),
                      batch=b, seq_q=n, seq_k=nk, start=start, group=h // hk, heads=h,
                      scale_log2=scale * math.log2(math.e), scale=scale)
    q_rows = functions["config"].q_rows
    launch(functions, "flash_forward", ((n + q_rows - 1) // q_rows, h, b), problem, d)
    if d_o is None:
        return out, lse, None, None, None
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    problem.o, problem.o_l = ptr(out), layout(out)
    problem.d_o, problem.do_l = ptr(d_o), layout(d_o)
    problem.delta = ptr(delta)
    problem.dq, problem.dq_l = ptr(dq), layout(dq)
    problem.dk, problem.dk_l = ptr(dk), layout(dk)
    problem.dv, problem.dv_l = ptr(dv), layout(dv)
    launch(functions, "flash_backward_delta", ((b * h * n + 3) // 4, 1, 1), problem, d)
    launch(functions, "flash_backward_dkdv", ((nk + TILE - 1) // TILE, hk, b), problem, d)
    launch(functions, "flash_backward_dq", ((n + TILE - 1) // TILE, h, b), problem, d)
    return out, lse, dq, dk, dv


def reference(q, k, v, d_o, start, dtype):
    """PyTorch's causal SDPA (keys aligned to the end: query i sees keys <= i + start)."""
    group = q.shape[1] // k.shape[1]
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    n, nk = q.shape[2], k.shape[2]
    mask = torch.ones(n, nk, dtype=torch.bool, device=q.device).tril(diagonal=start)
    ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    if start == 0 and n == nk:
        out = F.scaled_dot_product_attention(q, ke, ve, is_causal=True)
    else:
        out = F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask)
    out.backward(d_o.to(dtype))
    return out.detach(), q.grad, k.grad, v.grad


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


def time_ms(fn, repeats=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def profile(config):
    functions = compile_module(128, config)
    b, h, hk, n, d = 1, 16, 8, 8192, 128
    q = torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(b, hk, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    d_o = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16)
    qr, kr, vr = (t.detach().requires_grad_() for t in (q, k, v))
    for _ in range(2):  # the first round warms up, the second is profiled
        flash(functions, q, k, v, d_o, 0)
        F.scaled_dot_product_attention(qr, kr, vr, is_causal=True, enable_gqa=True).backward(d_o)
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--variants", default=f"shipped={FLASH_OPTIONS}")
    parser.add_argument("--profile", action="store_true",
                        help="one forward + backward of the first variant at [1, 16, 8, 8192, 128], then "
                             "PyTorch's, after a warm-up of each (what scripts/gpu/flash_ncu.sh profiles)")
    args = parser.parse_args()
    if args.profile:
        profile(Config(args.variants.split(";")[0].split("=", 1)[1]))
        return
    variants = [v.split("=", 1) for v in args.variants.split(";")]
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "variants": {}, "torch_timings": []}
    failures = []
    timing_shapes = ((4, 16, 8, 1024), (1, 16, 8, 8192))
    for name, options in variants:
        torch.manual_seed(0)
        entry = report["variants"][name] = {"options": options, "cases": [], "timings": []}
        for head_dim in (64, 128):
            functions = compile_module(head_dim, Config(options))
            cases = [(1, 2, 1, 64, 0), (2, 4, 2, 100, 0), (1, 16, 8, 1024, 0), (1, 4, 4, 37, 27), (2, 8, 2, 130, 0), (1, 2, 1, 1, 70)]
            for b, h, hk, n, start in cases:
                nk = n + start
                q = torch.randn(b, n, h, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # strided, as the model's
                k = torch.randn(b, hk, nk, head_dim, device="cuda", dtype=torch.bfloat16)
                v = torch.randn(b, hk, nk, head_dim, device="cuda", dtype=torch.bfloat16)
                d_o = torch.randn(b, h, n, head_dim, device="cuda", dtype=torch.bfloat16)
                ours = flash(functions, q, k, v, d_o, start)
                exact = reference(q, k, v, d_o, start, torch.float64)
                torch_bf16 = reference(q, k, v, d_o, start, torch.bfloat16)
                row = {"head_dim": head_dim, "shape": [b, h, hk, n, start]}
                for out_name, i, j in (("out", 0, 0), ("dq", 2, 1), ("dk", 3, 2), ("dv", 4, 3)):
                    row[out_name] = rel(ours[i], exact[j])
                    row[out_name + "_torch_bf16"] = rel(torch_bf16[j], exact[j])
                    # Within 4x PyTorch's own bf16 error, or 2e-2 relative to the largest entry.
                    if not row[out_name] <= max(4 * row[out_name + "_torch_bf16"], 2e-2):
                        failures.append(f"{name}: {out_name} {row['shape']} d={head_dim}: {row[out_name]:.2e}")
                entry["cases"].append(row)
            worst = max(r[o] / r[o + "_torch_bf16"] for r in entry["cases"] for o in ("out", "dq", "dk", "dv"))
            if head_dim == 128:
                for b, h, hk, n in timing_shapes:
                    q = torch.randn(b, n, h, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                    k = torch.randn(b, hk, n, head_dim, device="cuda", dtype=torch.bfloat16)
                    v = torch.randn(b, hk, n, head_dim, device="cuda", dtype=torch.bfloat16)
                    d_o = torch.randn(b, h, n, head_dim, device="cuda", dtype=torch.bfloat16)
                    timing = {"shape": [b, h, hk, n, head_dim],
                              "forward_ms": time_ms(lambda: flash(functions, q, k, v, None, 0)),
                              "forward_backward_ms": time_ms(lambda: flash(functions, q, k, v, d_o, 0))}
                    entry["timings"].append(timing)
        print(json.dumps({"variant": name, "options": options, "worst_error_vs_torch_bf16": round(worst, 3), "timings": entry["timings"]}))
    for b, h, hk, n in timing_shapes:
        head_dim = 128
        q = torch.randn(b, n, h, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        k = torch.randn(b, hk, n, head_dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, hk, n, head_dim, device="cuda", dtype=torch.bfloat16)
        d_o = torch.randn(b, h, n, head_dim, device="cuda", dtype=torch.bfloat16)
        qr, kr, vr = (t.detach().requires_grad_() for t in (q, k, v))

        def torch_step(backward):
            out = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True, enable_gqa=True)
            if backward:
                out.backward(d_o)
        timing = {"shape": [b, h, hk, n, head_dim], "forward_ms": time_ms(lambda: torch_step(False)),
                  "forward_backward_ms": time_ms(lambda: torch_step(True))}
        print(json.dumps({"torch": timing}))
        report["torch_timings"].append(timing)
    report["failures"] = failures
    if args.out:
        json.dump(report, open(args.out, "w"), indent=1)
    print("failures:", failures)
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
