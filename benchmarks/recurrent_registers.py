"""Registers and spills of the `recurrent` kernels, compiled for sm_90 without a GPU.

Triton compiles ahead of time for a target it is told (here Hopper, sm_90a), and
ptxas reports each kernel's registers per thread and spills. That is what decides
how many programs fit an SM, so it is how the recurrent tiles (now `recc.tiles`, calibrated on GPU sweeps)
were chosen before any GPU run.

    python benchmarks/recurrent_registers.py                      # gla, defaults
    python benchmarks/recurrent_registers.py gated_delta_net --bv 32 64 --warps 4 8 --reg-steps 1 2

Pointer arguments are declared 16-byte aligned, as Triton specializes them at a real
launch (alignment decides vectorization, which decides the register layout).
Uses Triton internals (ASTSource, GPUTarget, the bundled ptxas): a dev tool.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

import recc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FLAGS = {"HAS_INITIAL": False, "STORE_FINAL": True, "SAVE_CHECKPOINTS": True, "VARLEN": False}


def ptxas() -> str:
    folder = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for name in ("ptxas-blackwell", "ptxas"):  # the newer one reads the newer PTX
        if (folder / name).exists():
            return str(folder / name)
    raise SystemExit("no ptxas in this Triton install")


def compile_kernel(fn, constexprs: dict, num_warps: int, fp32_pointers: set):
    signature, values = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            values[(i,)] = constexprs[name]
        elif name in ("cu_seqlens", "chunk_offsets") or name.startswith(("initial_", "dinitial_")):
            signature[name] = "constexpr"          # None: no varlen, no initial state
            values[(i,)] = None
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in fp32_pointers else "*bf16"
        elif name in ("T", "n_tokens"):
            signature[name] = "i32"
        else:
            signature[name] = "fp32"                # consts
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]]
             for n, t in signature.items() if t.startswith("*") or n in ("T", "n_tokens")}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=values, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def fp32_pointers(rec) -> set:
    """States, checkpoints, scratch and the gradients of inputs and params are fp32; the rest bf16."""
    names = {f"{w}_{s.name}_ptr" for s in rec.states for w in ("final", "checkpoint", "scratch", "dfinal")}
    return names | {f"d{d.name}_ptr" for d in rec.inputs + rec.params}


def usage(kernel) -> str:
    with tempfile.TemporaryDirectory() as d:
        ptx = Path(d) / "k.ptx"
        ptx.write_text(kernel.asm["ptx"])
        out = subprocess.run([ptxas(), "-v", "--gpu-name", "sm_90a", str(ptx), "-o", str(Path(d) / "k.cubin")],
                             capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spills = re.search(r"(\d+) bytes spill stores", out.stderr)
    return f"{regs.group(1) if regs else '?':>3s} registers, {spills.group(1) if spills else '?':>5s} bytes spilled"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", default="gla")
    p.add_argument("--size", type=int, default=128, help="every free dim (K, V, ...)")
    p.add_argument("--bv", type=int, nargs="+", default=[32, 64])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--reg-steps", nargs="+", default=["auto"], help="numbers, or auto (the plan's choice)")
    p.add_argument("--chunk", type=int, default=32)
    args = p.parse_args(argv)
    rec = recc.load_spec(ROOT / "specs" / f"{args.spec}.rec")
    dims = {d: args.size for d in rec.free_dims} | rec.fixed_dims
    first = True
    for steps in args.reg_steps:
        steps = steps if steps == "auto" else int(steps)
        op = recc.load(ROOT / "specs" / f"{args.spec}.rec", strategy="recurrent", tiles={"REG_STEPS": steps})
        module = op.module
        steps = module.REG_STEPS
        kernels = [(getattr(module, f"{rec.name}_fwd_kernel"), False)] if first else []
        first = False
        kernels.append((getattr(module, f"{rec.name}_bwd_kernel"), True))
        for bv in args.bv:
            module.TILES.update(BV=bv, BV_bwd=bv)
            for kernel, backward in kernels:
                BR, BC, _ = module._tiles(dims, module.TILES, backward=backward)
                flags = {"HAS_INITIAL": False, "VARLEN": False} if backward else FLAGS
                consts = dict(dims, H=16, CHUNK=args.chunk, **flags)
                tile_names = [n for n in kernel.arg_names if n[:1] == "B" and n[1:] in dims]  # BK, BV, ...
                consts.update(zip(tile_names, [BR, BC] if len(tile_names) == 2 else [BC]))
                label = f"bwd REG_STEPS={steps}" if backward else "fwd"
                for warps in args.warps:
                    compiled = compile_kernel(kernel, consts, warps, fp32_pointers(rec))
                    print(f"{rec.name:16s} {label:14s} BV={bv:3d} num_warps={warps}: {usage(compiled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
