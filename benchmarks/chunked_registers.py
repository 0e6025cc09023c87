"""Registers, spills, shared memory and SASS of `chunked` kernels, compiled for sm_90 without a GPU.

Triton compiles ahead of time for a target it is told (Hopper, sm_90a); ptxas reports each
kernel's registers and spills, and cuobjdump its SASS: the instructions a warp issues
outside loops, each loop body (its size and bar.sync's; the trip counts follow from the
tiles) and the barriers. A way to compare two versions of a kernel before any GPU run
(the UT transform's rewrite, counted so with Triton 3.6: `wy_fwd` at BT=32, 8 warps from
~4400 to ~1100 instructions issued per warp, loop bodies times their trips included, and
from ~330 to ~30 barriers). The Triton imported is the one compiling: to match a GPU
stack, put that version first on PYTHONPATH (pip install --target DIR triton==X).

    python benchmarks/chunked_registers.py delta_net                        # wy_fwd, bwd_wy at BT=32
    python benchmarks/chunked_registers.py delta_product --kernels wy_fwd --BT 32 64 --warps 2 4 8 \\
        --tiles "{'BI': 8, 'wy_BV': 128}"
    python benchmarks/chunked_registers.py gla --plan h200 --dtype fp32     # every kernel at the H200 plans

Kernels are named as in the generated module without the spec's prefix (wy_fwd, fwd_h,
fwd_o, fwd_ho, bwd_dv, bwd_dh, bwd_dqk, bwd_wy); tiles take the host code's names (BI, BKS,
<kernel>_BV; BT and warps from the flags). Pointers are declared 16-byte aligned, as
Triton specializes them at a real launch. Uses Triton internals (ASTSource, GPUTarget,
the bundled ptxas and cuobjdump): a dev tool.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
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
from recc.lower.chunked import lower_chunked  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# the fp32 buffers; the rest (q, k, v, w, u, v_new, dv_new, dW, h, ...) in the inputs' type, bf16 here
FP32 = {"G", "Tm", "dgp", "dcp", "dA", "dg", "dbeta", "dc", "beta", "c", "h0", "ht", "dht", "dh0",
        "hn", "dhn", "mst", "men", "nt", "mrow", "r2", "rden", "dr2", "dn0", "n0", "dnt"}   # mLSTM's normaliser
KERNEL_TILE = {"wy_fwd": "wy", "fwd_h": "h", "fwd_o": "o", "bwd_dv": "dv", "bwd_dh": "dh", "bwd_dqk": "dqk",
               "bwd_wy": "wyb", "fwd_A": "a", "fwd_ho": "ho"}
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def module_of(spec):
    """(rec, the imported chunked module) of a spec: its name under specs/, or a checked Recurrence."""
    rec = recc.load_spec(ROOT / "specs" / f"{spec}.rec") if isinstance(spec, str) else spec
    folder = Path(tempfile.mkdtemp())
    path = folder / f"{rec.name}_chunked_probe.py"
    path.write_text(lower_chunked(rec).source)
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return rec, module


def constexprs(fn, kernel: str, dims: dict, tiles: dict, BT: int, NS: int, precision: str = "tf32") -> dict:
    KP = max(16, 1 << (dims["K"] - 1).bit_length())
    BKS = min(tiles.get("BKS", 64), KP)
    whole_k = kernel in ("wy_fwd", "fwd_h", "fwd_ho", "bwd_dh")   # the kernels that hold all of K
    values = dict(H=16, K=dims["K"], V=dims["V"], NS=NS, BT=BT, BK=KP if whole_k else BKS,
                  BV=tiles.get(f"{KERNEL_TILE.get(kernel, kernel)}_BV", 64), BI=min(tiles.get("BI", 8), BT),
                  BC=tiles.get("BC", 16), NKB=-(-dims["K"] // BKS), HAS_H0=False, HAS_DHT=False,
                  NVB=-(-dims["V"] // tiles.get("dv_BV", 64)), EXACT=False,   # per-key dqk: dv's V blocks
                  PRECISION=precision,
                  D=dims["K"], BD=KP, BR=64)   # cumsum: per-key decays (D = K); mLSTM's bwd_rows: 64 rows
    return {name: values[name] for name in fn.arg_names if name in values}


def compile_kernel(fn, consts: dict, warps: int, stages: int, maxnreg: int | None = None, dtype: str = "bf16"):
    signature, values = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name], values[(i,)] = "constexpr", consts[name]
        elif name in ("cu", "info", "chunk_first"):
            signature[name] = "*i32"
        elif name in ("stride_p", "stride", "rows"):
            signature[name] = "i32"
        elif name in ("scale", "floor"):
            signature[name] = "fp32"
        else:
            signature[name] = "*fp32" if name in FP32 else f"*{dtype}"
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in signature.items() if t.startswith("*")}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=values, attrs=attrs)
    options = {"num_warps": warps, "num_stages": stages} | ({"maxnreg": maxnreg} if maxnreg else {})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def assemble(compiled) -> tuple[str, str]:
    """(ptxas -v's report, cuobjdump's SASS) of a compiled kernel's PTX, assembled for sm_90a."""
    with tempfile.TemporaryDirectory() as d:
        ptx, cubin = Path(d) / "k.ptx", Path(d) / "k.cubin"
        ptx.write_text(compiled.asm["ptx"])
        ptxas = BIN / ("ptxas-blackwell" if (BIN / "ptxas-blackwell").exists() else "ptxas")
        out = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", str(ptx), "-o", str(cubin)],
                             capture_output=True, text=True, check=True)
        sass = subprocess.run([str(BIN / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True).stdout
    return out.stderr, sass


def sass(compiled) -> str:
    """The kernel's instructions, one a line, without addresses or names (to compare two builds)."""
    text = assemble(compiled)[1]
    return "\n".join(re.sub(r"/\*[0-9a-f]{4,6}\*/", "", line).strip() for line in text.splitlines()
                     if "/*" in line and "Function" not in line) + "\n"


def report(compiled) -> str:
    out, sass = assemble(compiled)
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores", out)
    line = re.compile(r"\s+/\*([0-9a-f]{4,6})\*/\s+(.*)")
    instrs = [(int(m.group(1), 16), m.group(2)) for m in map(line.match, sass.splitlines()) if m]
    at = {a: i for i, (a, _) in enumerate(instrs)}
    loops = []
    for i, (a, text) in enumerate(instrs):
        target = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < a and int(target.group(1), 16) in at:
            body = instrs[at[int(target.group(1), 16)]:i + 1]
            loops.append(f"{len(body)} ({sum('BAR' in t for _, t in body)} BAR)")
    bars = sum("BAR" in t for _, t in instrs)
    # tensor-core instructions: HGMMA (wgmma, sm_90's warpgroup path, M a multiple of 64 per warpgroup)
    # or HMMA (mma.sync, what a tl.dot with fewer rows falls back to)
    hgmma = sum(t.startswith("HGMMA") for _, t in instrs)
    hmma = sum(t.startswith("HMMA") for _, t in instrs)
    return (f"{regs.group(1) if regs else '?':>3s} regs, {spills.group(1) if spills else '?':>4s} B spilled, "
            f"smem {compiled.metadata.shared:6d} B, SASS {len(instrs):5d} instrs, {bars:3d} BAR, "
            f"{hgmma} HGMMA, {hmma} HMMA; loop bodies: {', '.join(loops) or 'none'}")


def plan_points(spec: str, hw: str, dtype: str = "bf16", precision: str | None = None):
    """(rec, [(plan, kernel, fn, constexprs, warps, stages)]): every kernel of `spec`'s chunked module
    at the tiles the solver picks for the hardware model `hw` at the main shape, for inputs of
    `dtype` (its elem_bytes): the training plan ("train"), and the forward's plan for calls without
    gradient ("no_grad", its kernels only) where the spec has one. A kernel without a tile of its
    own (cumsum, mLSTM's bwd_rows) at 4 warps, 2 stages. `precision`: the host's for the dtype
    (tf32x3 for fp32 inputs, torch's default) unless given."""
    from recc.tiles import choose_tiles, families_of, hardware
    rec, module = module_of(spec)
    dims, shape = families_of(rec)["chunked"]
    if dtype == "fp32":   # (16-bit: the default, and a revision from before the keyword takes it too)
        shape = {**shape, "elem_bytes": 4}
    plans = {"train": choose_tiles("chunked", dims, hardware(hw), **shape).assignment}
    if not shape.get("normaliser"):
        plans["no_grad"] = choose_tiles("chunked", dims, hardware(hw), **shape, inference=True).assignment
    precision = precision or ("tf32x3" if dtype == "fp32" else "tf32")
    names = sorted(n for n in dir(module) if n.startswith(f"{rec.name}_chunk_") and n.endswith("_kernel"))
    points = []
    for plan, tiles in plans.items():
        for name in names:
            kernel = name[len(rec.name) + len("_chunk_"):-len("_kernel")]
            key = KERNEL_TILE.get(kernel, kernel)
            if plan == "train" and kernel == "fwd_ho":
                continue   # launched only by a call without gradient
            if plan == "no_grad" and (kernel.startswith("bwd_") or (kernel in ("fwd_h", "fwd_o", "fwd_ho")
                                                                   and tiles.get("FUSE") != (kernel == "fwd_ho"))):
                continue   # not launched by a call without gradient (ho where FUSE = 1, else h and o)
            fn = getattr(module, name)
            consts = constexprs(fn, kernel, {"K": dims["K"], "V": dims["V"]}, tiles, tiles["BT"], module._NS, precision)
            points.append((plan, kernel, fn, consts, tiles.get(f"{key}_warps", 4), tiles.get(f"{key}_stages", 2)))
    return rec, points


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec")
    p.add_argument("--kernels", default="wy_fwd,bwd_wy", help=f"comma-separated, of {', '.join(KERNEL_TILE)}")
    p.add_argument("--size", type=int, default=128, help="K and V")
    p.add_argument("--BT", type=int, nargs="+", default=[32])
    p.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="the inputs' type")
    p.add_argument("--precision", choices=("tf32", "tf32x3", "ieee"), default=None,
                   help="the kernels' PRECISION, every tl.dot's input_precision (the host code's for fp32 inputs: tf32 or tf32x3)")
    p.add_argument("--maxnreg", type=int, default=None,
                   help="cap the registers a thread (Triton's maxnreg option; ptxas spills past it)")
    p.add_argument("--tiles", default="{}", help="the host code's names: BI, BKS, BC, <kernel>_BV")
    p.add_argument("--plan", metavar="HW", default=None,
                   help="every kernel at the solver's plans for the hardware model HW (a recc.hardware preset, "
                        "e.g. h200) and --dtype, instead of --kernels, --BT, --warps, --stages, --tiles")
    args = p.parse_args(argv)
    if args.plan:
        rec, points = plan_points(args.spec, args.plan, args.dtype, args.precision)
        for plan, kernel, fn, consts, warps, stages in points:
            try:
                text = report(compile_kernel(fn, consts, warps, stages, args.maxnreg, args.dtype))
            except Exception as error:  # noqa: BLE001 - a point that does not compile is reported
                text = f"does not compile: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
            tiles = " ".join(f"{k}={consts[k]}" for k in ("BT", "BK", "BV") if k in consts)
            print(f"{rec.name} {plan:7s} {kernel:8s} {tiles} warps={warps} stages={stages}: {text}", flush=True)
        return 0
    rec, module = module_of(args.spec)
    tiles = ast.literal_eval(args.tiles)
    dims = {"K": args.size, "V": args.size}
    for kernel in args.kernels.split(","):
        fn = getattr(module, f"{rec.name}_chunk_{kernel}_kernel")
        for BT in args.BT:
            for warps in args.warps:
                consts = constexprs(fn, kernel, dims, tiles, BT, module._NS, args.precision or "tf32")
                shown = " ".join(f"{k}={v}" for k, v in consts.items() if k not in ("H", "K", "V", "NS")
                                 and not k.startswith("HAS_"))
                try:
                    text = report(compile_kernel(fn, consts, warps, args.stages, args.maxnreg, args.dtype))
                except Exception as error:  # noqa: BLE001 - a point that does not compile is reported
                    text = f"does not compile: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
                print(f"{rec.name} {kernel:8s} {shown} warps={warps}: {text}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
