#!/usr/bin/env python3
"""The chunked specs' forward and backward under the interpreter's address sanitizer (tests/oob.py),
at forced tile points, on small but representative shapes (CPU, TRITON_INTERPRET=1).

    python benchmarks/oob_check.py                          # the crash points and the covering grid
    python benchmarks/oob_check.py --specs simple_gla --points crash
    python benchmarks/oob_check.py --specs gla --shapes k128v128 --tiles "BT=64,BKS=64,BV=32"

Every kernel launch of a run checks each active lane of every load, store and atomic against the
storages of the launch's tensors (red zones around them); the first violation names kernel, line,
program id, argument and offset. Each run is also compared with the float64 reference (outputs,
final states, every gradient; `err` is the largest relative error), so a wrong mask that stays in
bounds shows too. Warps and stages are not varied: the interpreter ignores them.

Points: `crash` (the points that crashed an H200 with Triton 3.6), `grid` (per spec, BT in {16, 32,
64, 128} (householder: up to 64; at least 16 substeps), every kernel's BV in {16, 32, 64, 128} one
value at a time, BKS in {32, 64, 128} cycled so that every (BT, BV) and (BT, BKS) pair runs; BC, BI
cycled where a spec uses them). Shapes (bf16; `ragged`: T not a multiple of any chunk):
k64v64 (B=2, T=100, H=2), k128v128 (B=1, T=200, H=2), k128v64 (B=1, T=130, H=2, K != V),
varlen (K=V=128, cu_seqlens [0, 37, 101, 230], H=2).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

import conftest  # noqa: E402,F401  (the tests' strict launches and GPU rounding)
import recc  # noqa: E402
from chunked_gpu_check import REALISTIC, errors_against, module_of, record_launches  # noqa: E402
from oob import OutOfBounds, sanitizer  # noqa: E402
from tile_sweep import KERNEL_GLOBALS  # noqa: E402
from recc.lower.chunked import chunked_form  # noqa: E402
from recc.primitives import sample_input  # noqa: E402
from recc.reference import reference  # noqa: E402
from recc.signature import bind  # noqa: E402

SPECS = ["simple_gla", "retnet", "mamba2", "gla", "mlstm", "delta_net", "gated_delta_net", "delta_product"]
SHAPES = {
    "k64v64": dict(B=2, T=100, H=2, K=64, V=64),
    "k128v128": dict(B=1, T=200, H=2, K=128, V=128),
    "k128v64": dict(B=1, T=130, H=2, K=128, V=64),
    "varlen": dict(B=1, T=230, H=2, K=128, V=128, cu=[0, 37, 101, 230]),
    "check": dict(B=2, T=300, H=2, K=128, V=128),     # chunked_gpu_check.py's check shape
}
# the points that crashed on the H200 (warps/stages left out: the interpreter ignores them)
CRASH = {
    "simple_gla": [dict(BT=64, BKS=64, dv_BV=32), dict(BT=128, BKS=64, dv_BV=32), dict(BT=128, BKS=32, dv_BV=16)],
    "mlstm": [dict(BT=64, BKS=64, o_BV=32), dict(BT=64, BKS=64, dv_BV=32),
              dict(BT=64, BKS=128, o_BV=32, dv_BV=32, dqk_BV=16)],
    "delta_net": [dict(BT=64, BKS=64, BV=32), dict(BT=64, BKS=128, BV=64)],
    "gated_delta_net": [dict(BT=64, BKS=64, BV=32)],
    "delta_product": [dict(BT=64, BKS=64, BV=32)],
}
BASE = dict(BT=64, BC=16, BI=16, BKS=64, BV=64)   # the kernels not named in a point


def _draw(rec, d, shape, gen):
    """Random values for input/param d; Mamba2's decay parameters as chunked_gpu_check draws them
    (randn gives log-decays near -20 per step, whose exp over a chunk of 64 overflows fp32)."""
    if rec.name == "mamba2" and d.name in REALISTIC:
        return REALISTIC[d.name](shape, gen).double()
    return sample_input(shape, d.annotations, gen)


@contextlib.contextmanager
def tf32_dots(mode="truncate"):
    """tl.dot's fp32 operands rounded to tf32 (10 mantissa bits), as a GPU's tensor cores take them
    under Triton's default input_precision; the interpreter multiplies them in full fp32. bf16
    operands (which the kernels' _dot widens to fp32 in the interpreter) pass unchanged."""
    import numpy as np
    import triton.runtime.interpreter as interp
    dot = interp.InterpreterBuilder.create_dot

    def rounded(x):
        if x.dtype != np.float32:
            return x
        if mode == "rne":
            return interp._round_f32_to_tf32(x)
        return (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        a = interp.TensorHandle(rounded(a.data), a.dtype)
        b = interp.TensorHandle(rounded(b.data), b.dtype)
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    interp.InterpreterBuilder.create_dot = create_dot
    try:
        yield
    finally:
        interp.InterpreterBuilder.create_dot = dot


def run_point(rec, tiles, shape, dtype=torch.bfloat16, seed=0, compare=True):
    """Forward + backward at one tile point under the sanitizer; returns a result dict."""
    module = module_of(rec, tiles)
    gen = torch.Generator().manual_seed(seed)
    B, T, H = shape["B"], shape["T"], shape["H"]
    form = chunked_form(rec)
    dims = {form.K: shape["K"], form.V: shape["V"]} | rec.fixed_dims
    size = lambda s: tuple(dims.get(x, x) for x in s)
    cu = torch.tensor(shape["cu"]) if "cu" in shape else None
    N = len(shape["cu"]) - 1 if cu is not None else B
    args = [_draw(rec, d, (B, T, H) + size(d.shape), gen) for d in rec.inputs]
    args += [_draw(rec, d, (H,) + size(d.shape), gen) for d in rec.params]
    args = [a.to(dtype).double() for a in args]
    init = tuple(torch.randn((N, H) + size(s.shape), generator=gen, dtype=torch.float64) for s in rec.states)
    pack = lambda st: st[0] if len(st) == 1 else st
    kw = {"output_final_state": True, "initial_state": pack(init), **({"cu_seqlens": cu} if cu is not None else {})}
    call = bind(rec, tuple(a.to(dtype) for a in args), dict(kw, initial_state=pack(tuple(t.float() for t in init))))
    call.requires_grad = True
    out = rec.outputs[0].name
    do = torch.randn((B, T, H) + size(rec.outputs[0].shape), generator=gen, dtype=torch.float64)
    ds = tuple(torch.randn((N, H) + size(s.shape), generator=gen, dtype=torch.float64) for s in rec.states)
    t0 = time.time()
    with sanitizer() as report:
        outputs, finals, saved = module._forward(call)
        d_in, d_par, d_init = module._backward(call, saved, {out: do.to(dtype)},
                                               {s.name: d.float() for s, d in zip(rec.states, ds)})
    res = dict(launches=report.launches, accesses=report.accesses, lanes=report.lanes,
               launched=module._LAUNCHED and next(iter(module._LAUNCHED.values())), secs=round(time.time() - t0, 1))
    if compare:
        leaves = [a.clone().requires_grad_() for a in args]
        init_leaves = tuple(t.clone().requires_grad_() for t in init)
        o_ref, s_ref = reference(rec, *leaves, **dict(kw, initial_state=pack(init_leaves)))
        s_ref = s_ref if isinstance(s_ref, tuple) else (s_ref,)
        ((o_ref * do).sum() + sum((s * d).sum() for s, d in zip(s_ref, ds))).backward()
        errs = errors_against(rec, (outputs, finals, d_in, d_par, d_init), (o_ref, s_ref, leaves, init_leaves),
                              final_prefix="final ")
        worst = max(errs, key=errs.get)
        res.update(err=errs[worst], worst=worst, errs={k: float(f"{v:.3g}") for k, v in errs.items()})
    return res


MAIN = dict(B=4, T=4096, H=16, K=128, V=128)
# the tuned kernels' globals (after "<spec>_"), and the decays' cumsum
GLOBALS = {**KERNEL_GLOBALS["chunked"], "cumsum": "chunk_cumsum_kernel"}


def main_shape_kernels(rec, tiles, kernels, shape=MAIN, dtype=torch.bfloat16):
    """The named kernels alone at the main shape under the sanitizer: the host code runs forward and
    backward with every kernel stubbed (recording its launches; the tensors hold garbage, which no
    address depends on), then each recorded launch of a named kernel runs in the interpreter."""
    real, calls, launched = record_launches(rec, module_of(rec, tiles), shape, dtype)
    rows = []
    for kernel in kernels:
        name = f"{rec.name}_{GLOBALS[kernel]}"
        for _, grid, a, kw in [c for c in calls if c[0] == name]:
            t0 = time.time()
            with sanitizer() as report:
                real[name][grid](*a, **kw)
            rows.append(dict(kernel=kernel, grid=grid, lanes=report.lanes, accesses=report.accesses,
                             constexprs={k: v for k, v in kw.items() if k.isupper() or k.startswith("B")},
                             secs=round(time.time() - t0, 1)))
    return rows, launched


def grid_points(rec, shape, thin=False):
    """A covering subset of the tile grid (see the module docstring) for one spec and shape;
    `thin`: one BV per BT (cycled), every BT and BV still once."""
    form = chunked_form(rec)
    ns = len(form.substeps)
    hh = form.householder
    KP = max(16, 1 << (shape["K"] - 1).bit_length())
    VP = max(16, 1 << (shape["V"] - 1).bit_length())
    bts = [bt for bt in (16, 32, 64, 128) if bt >= 16 * ns and (not hh or bt <= 64)]
    bvs = [bv for bv in (16, 32, 64, 128) if bv <= VP]
    bkss = [b for b in (32, 64, 128) if b <= KP]
    points = []
    pairs = list(itertools.product(bts, bvs))
    if thin:
        pairs = [(bt, bvs[(j + len(bvs) - len(bts) + 1) % len(bvs)]) for j, bt in enumerate(bts)]
        pairs += [(bts[-1], bv) for bv in bvs if bv not in {b for _, b in pairs}]
    for i, (bt, bv) in enumerate(pairs):
        p = dict(BT=bt, BV=bv, BKS=bkss[(i if thin else i + bts.index(bt)) % len(bkss)])
        if form.decay == "key":
            p["BC"] = [16, 32][i % 2] if bt >= 32 else 16
        if hh:
            p["BI"] = [b for b in (4, 8, 16, 32) if b <= bt and bt <= 16 * b][i % 2]
        points.append(p)
    return points


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--points", default="crash,grid", help="crash, grid or both")
    ap.add_argument("--tiles", default=None, help='one point, e.g. "BT=64,BKS=64,dv_BV=32" (over BT=64 BKS=64 BV=64)')
    ap.add_argument("--thin", action="store_true", help="grid: one BV per BT (every BT and BV once)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="inputs' type (bf16: the GPU's; fp32 tells bf16 conditioning from a bug)")
    ap.add_argument("--tf32", choices=["truncate", "rne"], default=None,
                    help="round tl.dot's fp32 operands to tf32 (the GPU's default precision)")
    ap.add_argument("--no-compare", action="store_true", help="skip the float64 reference")
    ap.add_argument("--out", default=None, help="JSON lines of every run")
    ap.add_argument("--main", action="append", default=[], metavar="SPEC:KERNELS:TILES",
                    help='named kernels alone at the main shape, e.g. "simple_gla:dv:BT=64,BKS=64,dv_BV=32"')
    ap.add_argument("--main-B", type=int, default=MAIN["B"], help="--main: batch (default 4; 1 is 4x faster)")
    a = ap.parse_args(argv)
    if a.main:
        import warnings
        warnings.filterwarnings("ignore", category=RuntimeWarning)   # garbage inputs: NaN, overflow
        bad = 0
        for item in a.main:
            spec, kernels, tiles = item.split(":")
            rec = recc.load_spec(ROOT / "specs" / f"{spec}.rec")
            tiles = {**BASE, **{k: int(v) for k, v in (x.split("=") for x in tiles.split(","))}}
            try:
                rows, launched = main_shape_kernels(rec, tiles, kernels.split(","), {**MAIN, "B": a.main_B})
                for r in rows:
                    print(f"ok       {spec} main shape {r['kernel']} grid={r['grid']} {r['constexprs']} "
                          f"lanes={r['lanes']} accesses={r['accesses']} {r['secs']}s", flush=True)
            except OutOfBounds as e:
                bad += 1
                print(f"OOB      {spec} main shape {kernels} {tiles}\n    {e}", flush=True)
        return 1 if bad else 0
    out = open(a.out, "a") if a.out else None
    bad = 0
    for spec in a.specs.split(","):
        rec = recc.load_spec(ROOT / "specs" / f"{spec}.rec")
        for shape_name in a.shapes.split(","):
            shape = SHAPES[shape_name]
            points = []
            if a.tiles:
                points.append(("given", {**BASE, **{k: int(v) for k, v in (x.split("=") for x in a.tiles.split(","))}}))
            else:
                if "crash" in a.points:
                    points += [("crash", {**BASE, **p}) for p in CRASH.get(spec, [])]
                if "grid" in a.points:
                    points += [("grid", {**BASE, **p}) for p in grid_points(rec, shape, a.thin)]
            for kind, tiles in points:
                row = dict(spec=spec, shape=shape_name, kind=kind, tiles=tiles)
                try:
                    with tf32_dots(a.tf32) if a.tf32 else contextlib.nullcontext():
                        row.update(run_point(rec, tiles, shape, dtype=getattr(torch, a.dtype), compare=not a.no_compare))
                    row["tf32"] = a.tf32
                    row["status"] = "ok" if row.get("err", 0) < (5e-2 if a.dtype == "bfloat16" else 1e-4) else "MISMATCH"
                except OutOfBounds as e:
                    row.update(status="OOB", error=str(e))
                except Exception as e:  # noqa: BLE001
                    row.update(status="ERROR", error=f"{type(e).__name__}: {e}"[:2000],
                               trace=traceback.format_exc()[-1500:])
                bad += row["status"] != "ok"
                short = " ".join(f"{k}={v}" for k, v in tiles.items())
                print(f"{row['status']:8s} {spec:16s} {shape_name:9s} {kind:5s} {short:40s} "
                      f"err={row.get('err', float('nan')):.1e} ({row.get('worst', '')}) "
                      f"launches={row.get('launches')} lanes={row.get('lanes')} {row.get('secs')}s", flush=True)
                if row["status"] not in ("ok", "MISMATCH"):
                    print("   ", row["error"].replace("\n", "\n    "), flush=True)
                if out:
                    out.write(json.dumps(row, default=str) + "\n")
                    out.flush()
    print(f"{bad} runs not ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
