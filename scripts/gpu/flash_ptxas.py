"""Compiles the flash attention kernels (crates/andes-model/src/sdpa/flash.cu) as andes does,
with NVRTC, and assembles them with ptxas, on any x86-64 machine without a GPU: whether they
compile, each kernel's registers and spills, and the mix of its PTX instructions (tensor-core
products, shared-memory matrix loads, compares and selects, arithmetic, bit and conversion
work), for heads of 64 and 128. With --sass, the machine code ptxas made (nvdisasm): each
kernel's instructions, and those from its first tensor-core product (HMMA) to its last, the
main loop, by opcode: what the schedulers issue, where the PTX counts include what ptxas
removes.

Needs NVIDIA's NVRTC and ptxas from PyPI: `pip install nvidia-cuda-nvrtc nvidia-cuda-nvcc`
(or NVRTC=/path/libnvrtc.so.13 PTXAS=/path/ptxas); --sass also `pip install
nvidia-cuda-nvdisasm` (or NVDISASM=/path/nvdisasm). SOURCE=/path/flash.cu reads another
version of the kernels. Check a change with the NVRTC the GPU machine has, too (its PyTorch's,
13.0: `pip download "nvidia-cuda-nvrtc==13.0.*"`, NVRTC=... with its lib folder on
LD_LIBRARY_PATH): it refuses some C++ that 13.5 takes, e.g. a generic lambda inside a kernel.

usage: python3 scripts/gpu/flash_ptxas.py [--arch sm_90a] [--options "-DM_TILES=1 -DKEYS=64 -DPIPELINE=1"] [--sass]
"""

import argparse
import collections
import ctypes
import glob
import os
import re
import site
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("SOURCE") or os.path.join(HERE, "../../crates/andes-model/src/sdpa/flash.cu")


def find(variable, pattern):
    if os.environ.get(variable):
        return os.environ[variable]
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        found = sorted(f for f in glob.glob(os.path.join(root, pattern)) if "builtins" not in f)
        if found:
            return found[0]
    raise SystemExit(f"{pattern} not found: pip install nvidia-cuda-nvrtc nvidia-cuda-nvcc, or set {variable}")


def shipped_options():
    text = open(os.path.join(HERE, "flash_check.py")).read()
    return re.search(r'FLASH_OPTIONS = "([^"]*)"', text).group(1)


KINDS = {
    "mma.sync": r"^\s+mma\.sync",
    "ldmatrix": r"^\s+ldmatrix",
    "setp/selp": r"^\s+(setp|selp)",
    "arithmetic": r"^\s+(add|sub|mul|mad|fma|max|min|neg|abs)\b",
    "bits/cvt": r"^\s+(shl|shr|cvt|and|or|xor|not|cvta)\b",
    "ex2": r"^\s+ex2",
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--options", default=shipped_options())
    parser.add_argument("--sass", action="store_true", help="count the machine code's instructions (nvdisasm)")
    args = parser.parse_args()
    nvdisasm = find("NVDISASM", "nvidia/cu13/bin/nvdisasm") if args.sass else None
    nvrtc = ctypes.CDLL(find("NVRTC", "nvidia/cu13/lib/libnvrtc.so.13"))
    ptxas = find("PTXAS", "nvidia/cu13/bin/ptxas")
    for head_dim in (64, 128):
        prog = ctypes.c_void_p()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), open(SOURCE, "rb").read(), b"flash.cu", 0, None, None) == 0
        opts = [f"--gpu-architecture={args.arch}", f"-DHEAD_DIM={head_dim}"] + args.options.split()
        rc = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts]))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            raise SystemExit(f"NVRTC refused flash.cu (HEAD_DIM={head_dim} {args.options}):\n{log.value.decode()}")
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetPTX(prog, ptx)
        ptx = ptx.value.decode()
        with tempfile.TemporaryDirectory() as work:
            path = os.path.join(work, "flash.ptx")
            open(path, "w").write(ptx)
            cubin = os.path.join(work, "flash.cubin")
            report = subprocess.run([ptxas, "-v", f"--gpu-name={args.arch}", path, "-o", cubin],
                                    capture_output=True, text=True, check=True).stderr
            sass = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True, check=True).stdout if nvdisasm else ""
        resources = {}
        for name, body in re.findall(r"Compiling entry function '(\w+)'.*?\n(.*?)(?=Compiling entry|\Z)", report, re.S):
            registers = re.search(r"Used (\d+) registers", body).group(1)
            spills = re.search(r"(\d+) bytes spill stores", body).group(1)
            resources[name] = (registers, spills)
        print(f"HEAD_DIM={head_dim} {args.options}")
        for name, body in re.findall(r"\.entry (\w+)\((.*?)\n}", ptx, re.S):
            counts = {kind: len(re.findall(pattern, body, re.M)) for kind, pattern in KINDS.items()}
            registers, spills = resources.get(name, ("?", "?"))
            print(f"  {name}: {registers} registers, {spills} bytes spilled; "
                  + ", ".join(f"{kind} {count}" for kind, count in counts.items()))
        for name, body in re.findall(r"\.text\.(\w+):\n(.*?)(?=\n\s*//-----|\Z)", sass, re.S):
            opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)", body)
            products = [i for i, op in enumerate(opcodes) if op == "HMMA"]
            if products:
                loop = collections.Counter(opcodes[products[0]:products[-1] + 1])
                print(f"  {name} machine code: {len(opcodes)} instructions; first to last HMMA {sum(loop.values())}: "
                      + ", ".join(f"{op} {count}" for op, count in loop.most_common(12)))


if __name__ == "__main__":
    main()
