#!/usr/bin/env python3
"""Compile one chunked kernel for sm_90 WITHOUT a GPU and dump its TTGIR / PTX / SASS, to compare a
tile point that faults on the H200 with one that passes.

    PYTHONPATH=<triton 3.6 site>:$PWD python benchmarks/ttgir_dump.py simple_gla dv \\
        "BT=64,BKS=64,dv_BV=32,dv_warps=4,dv_stages=1" "BT=64,BKS=64,dv_BV=64,dv_warps=8,dv_stages=2" --out /tmp/ttg

The kernel's launch arguments are recorded at the main shape (B=4, T=4096, H=16, K=V=128, bf16) by
running the host code on CPU tensors with every kernel stubbed (nothing runs); its signature and
constexprs (and tt.divisibility=16 on every pointer, as the JIT gives torch's allocations) go to
`triton.compile` with GPUTarget("cuda", 90, 32) and the point's num_warps / num_stages. Run it
with the Triton the GPU has (3.6: `pip install --target DIR triton==3.6.0 --no-deps`) ahead on
PYTHONPATH. Writes <out>/<spec>_<kernel>_<point>.{ttgir,ptx,sass} and prints a summary per point:
the mma ops (version, instrShape), async copies / waits, shared-memory size, and `cross_mma_dot_op`:
conversions of one wgmma's result into the register A operand of a wgmma with another instrShape.
--all-crash-points: the named kernel of every benchmarks/crash_repro.py point (the layouts each has).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import recc  # noqa: E402
from chunked_gpu_check import module_of, record_launches  # noqa: E402
from tile_sweep import KERNEL_GLOBALS  # noqa: E402

MAIN = dict(B=4, T=4096, H=16, K=128, V=128)
GLOBALS = KERNEL_GLOBALS["chunked"]   # the tuned kernels' globals (after "<spec>_")
_TY = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32", torch.int64: "i64"}


def record(spec: str, tiles: dict):
    """(rec, module, [(kernel global, grid, args, kwargs)]) of a forward + backward at the main shape."""
    rec = recc.load_spec(ROOT / "specs" / f"{spec}.rec")
    module = module_of(rec, tiles)
    # the GPU's model picks the kernels the point leaves open (the host asks the inputs' device: CPU here)
    from recc import tiles as rt
    from recc.hardware import H200
    module._launch_tiles = lambda fam, d, dev, k, **s: rt.launch_tiles(fam, d, H200, k, **s)
    module._MIN_DOT = 16
    kernels, calls, launched = record_launches(rec, module, MAIN)
    return rec, kernels, calls, launched


def compile_call(kernel, args, kwargs):
    fn = kernel
    names = fn.arg_names
    bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    opts = {k: v for k, v in kwargs.items() if k not in names}
    sig, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = bound[p.name]
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            constexprs[p.name] = v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _TY[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{p.name}: {type(v)}")
    src = ASTSource(fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts), opts, constexprs


def summary(k) -> dict:
    ttgir = k.asm["ttgir"]
    out = dict(
        mma=sorted(set(re.findall(r"#ttg\.nvidia_mma<\{[^}]*versionMajor = (\d+)[^}]*instrShape = \[([\d, ]+)\]", ttgir))),
        wgmma=len(re.findall(r"ttng\.warp_group_dot ", ttgir)),
        mma_v2=len(re.findall(r"tt\.dot ", ttgir)),
        async_copy=len(re.findall(r"ttg\.async_copy_global_to_local", ttgir)),
        async_wait=len(re.findall(r"ttg\.async_wait", ttgir)),
        tma=len(re.findall(r"async_tma", ttgir)),
        local_alloc=len(re.findall(r"ttg\.local_alloc", ttgir)),
        shared=k.metadata.shared, num_warps=k.metadata.num_warps, num_stages=k.metadata.num_stages,
    )
    # a score matrix fed to a second wgmma whose layout has another instrShape (mma -> dot_op of
    # another parent): present at every point that faulted, absent at the passing ones we compiled
    out["cross_mma_dot_op"] = sorted(set(
        f"{a}->{b}" for a, b in re.findall(r"convert_layout %\S+ : tensor<[^>]*, #(mma\d*)> -> tensor<[^>]*"
                                            r"#ttg\.dot_op<\{opIdx = 0, parent = #(mma\d*)", ttgir) if a != b))
    ptx = k.asm.get("ptx", "")
    out["ld_global"] = len(re.findall(r"ld\.global", ptx))
    out["cp_async"] = len(re.findall(r"cp\.async\.(?:ca|cg)", ptx))
    out["regs"] = getattr(k, "n_regs", None)
    out["spills"] = getattr(k, "n_spills", None)
    m = re.search(r"\.maxnreg (\d+)", ptx)
    if m:
        out["maxnreg"] = int(m.group(1))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?")
    ap.add_argument("kernel", nargs="?", choices=sorted(GLOBALS))
    ap.add_argument("points", nargs="*", help='tile overrides, e.g. "BT=64,BKS=64,dv_BV=32,dv_warps=4,dv_stages=1"')
    ap.add_argument("--out", default="/tmp/recc_ttgir")
    ap.add_argument("--all-crash-points", action="store_true")
    a = ap.parse_args(argv)
    if a.all_crash_points:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from crash_repro import points
        for p in points():
            if not p["kernel"]:
                continue
            _, kernels, calls, launched = record(p["spec"], p["tiles"])
            name = f"{p['spec']}_{GLOBALS[p['kernel']]}"
            (_, grid, args, kwargs), = [c for c in calls if c[0] == name]
            sm = summary(compile_call(kernels[name], args, kwargs)[0])
            print(f"#{p['id']:<2d} {p['spec']:15s} {p['label']:38s} BT={launched['BT']} BV={launched[p['kernel'] + '_BV']} "
                  f"w={sm['num_warps']} s={sm['num_stages']} mma={[x[1] for x in sm['mma']]} "
                  f"cross={sm['cross_mma_dot_op']} smem={sm['shared']}", flush=True)
        return 0
    Path(a.out).mkdir(parents=True, exist_ok=True)
    print(f"triton {triton.__version__} ({triton.__file__})")
    for point in a.points:
        tiles = {k: int(v) for k, v in (x.split("=") for x in point.split(","))}
        rec, kernels, calls, launched = record(a.spec, tiles)
        name = f"{a.spec}_{GLOBALS[a.kernel]}"
        (_, grid, args, kwargs), = [c for c in calls if c[0] == name]
        k, opts, constexprs = compile_call(kernels[name], args, kwargs)
        stem = Path(a.out) / f"{a.spec}_{a.kernel}_{point.replace(',', '_').replace('=', '')}"
        stem.with_suffix(".ttgir").write_text(k.asm["ttgir"])
        stem.with_suffix(".ptx").write_text(k.asm["ptx"])
        cubin = stem.with_suffix(".cubin")
        cubin.write_bytes(k.asm["cubin"])
        cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if cuobjdump.exists():
            sass = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True).stdout
            stem.with_suffix(".sass").write_text(sass)
        print(f"{point}\n  grid {grid} constexprs {constexprs} options {opts}\n  {summary(k)}\n  -> {stem}.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
