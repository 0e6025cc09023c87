#!/usr/bin/env python3
"""recc against its anchors on one GPU: same process, same inputs, forward and forward+backward.

    python benchmarks/bench.py --ops scan,gla_recurrent,lstm --T 1024,4096 \
        --out benchmarks/results/<name>.json
    python benchmarks/bench.py --quick                      # a smoke run: one T, short timings
    python benchmarks/bench.py --ops scan --sweep --T 4096  # scan tiles: variant x BT x BD x warps

Per row (an op, an anchor, a T): median time of `triton.testing.do_bench` for recc and
the anchor, forward and forward+backward; cold start (first call, compile included) of
each, measured in a fresh subprocess with empty Triton and recc caches; and `checked`:
recc's outputs and gradients matched the float64 CPU reference on a small shape and the
anchor on the main shape (where the anchor computes the same function) in this run.
Prints a table of ms and ratios (anchor / recc: above 1, recc is faster), writes the
rows as JSON and a plot of time against T next to it (PNG; needs matplotlib).

Rows are `Case`s in CASES. A row whose recc strategy or anchor is missing prints n/a
and the run goes on. Without a GPU the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

DEVICE = "cuda"
DRY_RUN = False          # --dry-run: CPU, Triton interpreter, tiny shapes, wall-clock timer (tests the harness)
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}
ANCHOR_TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 2e-2}


# ---- cases ------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnchorRun:
    """An anchor ready to time: `fn()` returns its output; `leaves` get gradients;
    `to_recc(x)` maps its output (and `grad_to_recc[i](g)` the gradient of leaf i) to
    recc's layout, for comparison. Layout changes happen before timing."""
    fn: Callable
    leaves: list
    to_recc: Callable | None = None
    grad_to_recc: list | None = None     # per leaf: a map, or None where recc has no twin


@dataclass(frozen=True)
class Case:
    op: str                                  # row name, selected by --ops
    spec: str                                # specs/<name>.rec
    strategy: str                            # the recc strategy the row times
    anchor: str                              # the anchor's name in the table
    sizes: Callable                          # T -> {"B", "T", "H", and the spec's dims}
    dtype: torch.dtype
    make_anchor: Callable | None             # (recc args, sizes) -> AnchorRun; raises if unavailable
    small: dict = field(default_factory=dict)   # sizes for the float64 check
    compare: bool = True                     # the anchor computes recc's function: compare outputs
    compare_grads: bool = True               # ... and gradients


def _fla(name):
    import importlib
    module, _, fn = name.rpartition(".")
    return getattr(importlib.import_module(module), fn)


def _fla_gated_backward_on_hopper():
    """fla 0.6.0 refuses its gated chunk backward on Hopper with Triton < 3.7.1 (fla issue 640);
    allow it for timing only (its gradients are not compared: compare_grads=False)."""
    try:
        import fla.ops.common.chunk_o as chunk_o
        chunk_o.TRITON_ABOVE_3_7_1 = True
    except Exception:  # noqa: BLE001
        pass


def anchor_accelerated_scan(args, sizes):
    from accelerated_scan.scalar import scan
    a, b = args
    B, T, H, D = sizes["B"], sizes["T"], sizes["H"], sizes["D"]
    to_bct = lambda x: x.detach().permute(0, 2, 3, 1).reshape(B, H * D, T).contiguous().requires_grad_()
    back = lambda x: x.reshape(B, H, D, T).permute(0, 3, 1, 2)
    a2, b2 = to_bct(a), to_bct(b)
    return AnchorRun(lambda: scan(a2, b2), [a2, b2], back, [back, back])


def _same_layout(fn, n_leaves=None):
    """An anchor that takes recc's tensors as they are ([B, T, H, ...])."""
    def make(args, sizes):
        leaves = [x.detach().clone().requires_grad_() for x in args]
        ident = lambda x: x
        return AnchorRun(lambda: fn(*leaves), leaves, ident, [ident] * len(leaves))
    return make


def anchor_fused_recurrent_gla(args, sizes):
    f = _fla("fla.ops.fused_recurrent_gla")
    return _same_layout(lambda q, k, v, g: f(q, k, v, gk=g)[0])(args, sizes)


def anchor_chunk_simple_gla(args, sizes):
    f = _fla("fla.ops.chunk_simple_gla")
    _fla_gated_backward_on_hopper()
    return _same_layout(lambda q, k, v, g: f(q, k, v, g=g)[0])(args, sizes)


def anchor_chunk_gla(args, sizes):
    f = _fla("fla.ops.chunk_gla")
    _fla_gated_backward_on_hopper()
    return _same_layout(lambda q, k, v, g: f(q, k, v, g=g)[0])(args, sizes)


def anchor_chunk_delta_rule(args, sizes):
    f = _fla("fla.ops.chunk_delta_rule")
    return _same_layout(lambda q, k, v, beta: f(q, k, v, beta)[0])(args, sizes)


def anchor_chunk_gated_delta_rule(args, sizes):
    f = _fla("fla.ops.chunk_gated_delta_rule")
    _fla_gated_backward_on_hopper()
    return _same_layout(lambda q, k, v, g, beta: f(q, k, v, g, beta)[0])(args, sizes)


def anchor_chunk_gated_delta_product(args, sizes):
    f = _fla("fla.ops.gated_delta_product.chunk_gated_delta_product")
    _fla_gated_backward_on_hopper()
    q, k, v, g, beta = args                       # k [B, T, H, n, K], v [B, T, H, n, V], beta [B, T, H, n]
    B, T, H, n = sizes["B"], sizes["T"], sizes["H"], sizes["n"]
    inter = lambda x: x.detach().transpose(2, 3).reshape(B, T * n, H, *x.shape[4:]).contiguous().requires_grad_()
    back = lambda x: x.reshape(B, T, n, H, *x.shape[3:]).transpose(2, 3)
    leaves = [q.detach().clone().requires_grad_(), inter(k), inter(v), g.detach().clone().requires_grad_(),
              inter(beta)]
    ident = lambda x: x
    return AnchorRun(lambda: f(*leaves, num_householder=n)[0], leaves, ident, [ident, back, back, ident, back])


# mlstm_kernels' xl_chunk at its default 4 warps for the intra-chunk kernels does not compile on Triton 3.6:
# its forward Hintra kernel trips an LLVM assertion (SLPVectorizer: "trying to erase instruction with
# users") that aborts the process (results/2026-12-03-h200-s5-mlstm_kernels-xl_chunk-crash.log; reproduced
# without a GPU, Triton 3.6.0 compiling for sm_90, at chunk sizes 64 and 128 and 1 or 2 stages). With
# 8 warps, the anchor's own parameter, every forward and backward kernel compiles.
MLSTM_XL_CHUNK_OPTIONS = dict(num_warps_intra=8)


def anchor_mlstm_xl_chunk(args, sizes):
    from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk as xl_chunk
    f = lambda *a: xl_chunk(*a, **MLSTM_XL_CHUNK_OPTIONS)
    q, k, v, i, f_gate = args                     # [B, T, H, ...] -> [B, H, T, ...]
    bht = lambda x: x.detach().transpose(1, 2).contiguous().requires_grad_()
    leaves = [bht(q), bht(k), bht(v), bht(i), bht(f_gate)]
    back = lambda x: x.transpose(1, 2)
    return AnchorRun(lambda: f(*leaves), leaves, back, [back] * 5)


def anchor_lstm_torch_loop(args, sizes):
    """The spec's head-wise LSTM as a plain PyTorch loop over time (autograd through it)."""
    x, R = [a.detach().clone().requires_grad_() for a in args]    # x [B, T, H, 4, D], R [H, 4, D, D]

    def run():
        B, T, H, _, D = x.shape
        h = x.new_zeros(B, H, D)
        c = x.new_zeros(B, H, D)
        ys = []
        for t in range(T):
            z = x[:, t] + torch.einsum("hgij,bhj->bhgi", R, h)
            c = torch.sigmoid(z[:, :, 1]) * c + torch.sigmoid(z[:, :, 0]) * torch.tanh(z[:, :, 2])
            h = torch.sigmoid(z[:, :, 3]) * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys, 1)
    ident = lambda y: y
    return AnchorRun(run, [x, R], ident, [ident, ident])


def anchor_lstm_cudnn(args, sizes):
    """cuDNN's full LSTM with hidden size H * D (not head-wise: a speed anchor, not compared)."""
    x = args[0]
    B, T, H, D = sizes["B"], sizes["T"], sizes["H"], sizes["D"]
    lstm = torch.nn.LSTM(H * D, H * D, batch_first=True).to(device=x.device, dtype=x.dtype)
    xc = torch.randn(B, T, H * D, device=x.device, dtype=x.dtype, requires_grad=True)
    return AnchorRun(lambda: lstm(xc)[0], [xc] + list(lstm.parameters()))


MAIN = dict(B=4, H=16, K=128, V=128)
CASES = [
    Case("scan", "first_order", "scan", "accelerated_scan.scalar.scan",
         lambda T: dict(B=4, T=T, H=16, D=128), torch.float32, anchor_accelerated_scan,
         small=dict(B=2, T=100, H=2, D=40)),
    Case("gla_recurrent", "gla", "recurrent", "fla.fused_recurrent_gla",
         lambda T: dict(MAIN, T=T), torch.bfloat16, anchor_fused_recurrent_gla,
         small=dict(B=1, T=40, H=2, K=32, V=32)),
    # Not compared with the loop at the main shape: with these inputs the cell is sensitive to
    # rounding over T=1024 steps (on the CPU, B=2 H=4: a float32 loop is 16% off the float64 one,
    # a bf16 loop 41%), so any two implementations differ there. recc is checked against the
    # float64 reference at the small shape (outputs and every gradient), on the GPU, in the run.
    Case("lstm", "lstm", "cell", "torch loop",
         lambda T: dict(B=16, T=T, H=16, D=64), torch.bfloat16, anchor_lstm_torch_loop,
         small=dict(B=2, T=20, H=2, D=16), compare=False),
    Case("lstm", "lstm", "cell", "cudnn nn.LSTM(1024, 1024)",
         lambda T: dict(B=16, T=T, H=16, D=64), torch.bfloat16, anchor_lstm_cudnn,
         small=dict(B=2, T=20, H=2, D=16), compare=False),
    # chunked strategies (main shape B=4, H=16, K=V=128, bf16)
    Case("simple_gla", "simple_gla", "chunked", "fla.chunk_simple_gla",
         lambda T: dict(MAIN, T=T), torch.bfloat16, anchor_chunk_simple_gla,
         small=dict(B=1, T=70, H=2, K=32, V=32), compare_grads=False),
    Case("gla", "gla", "chunked", "fla.chunk_gla",
         lambda T: dict(MAIN, T=T), torch.bfloat16, anchor_chunk_gla,
         small=dict(B=1, T=70, H=2, K=32, V=32), compare_grads=False),
    Case("delta_rule", "delta_net", "chunked", "fla.chunk_delta_rule",
         lambda T: dict(MAIN, T=T), torch.bfloat16, anchor_chunk_delta_rule,
         small=dict(B=1, T=70, H=2, K=32, V=32)),
    Case("gated_delta_rule", "gated_delta_net", "chunked", "fla.chunk_gated_delta_rule",
         lambda T: dict(MAIN, T=T), torch.bfloat16, anchor_chunk_gated_delta_rule,
         small=dict(B=1, T=70, H=2, K=32, V=32), compare_grads=False),
    Case("gated_delta_product", "delta_product", "chunked", "fla.chunk_gated_delta_product(n=2)",
         lambda T: dict(MAIN, T=T, n=2), torch.bfloat16, anchor_chunk_gated_delta_product,
         small=dict(B=1, T=70, H=2, K=32, V=32, n=2), compare_grads=False),
    Case("mlstm", "mlstm", "chunked", "mlstm_kernels xl_chunk (8 warps intra)",
         lambda T: dict(MAIN, T=T), torch.bfloat16, anchor_mlstm_xl_chunk,
         small=dict(B=1, T=70, H=2, K=32, V=32), compare=False),
]


# ---- recc's side ------------------------------------------------------------------------

def recc_op(case: Case):
    """recc's op for a case: the spec compiled by `recc.load` under the case's strategy (the
    module wraps the lowered kernels in autograd and a custom op). The one place to change
    how rows obtain recc ops. Raises when that strategy cannot lower the spec here."""
    import recc
    op = recc.load(ROOT / "specs" / f"{case.spec}.rec", strategy=case.strategy)
    if getattr(op.module, "STRATEGY", None) != case.strategy:
        raise RuntimeError(f"recc.load gave strategy {getattr(op.module, 'STRATEGY', None)!r}")
    return op


def spec_of(spec: str):
    """The checked recurrence of specs/<spec>.rec."""
    import recc
    return recc.load_spec(ROOT / "specs" / f"{spec}.rec")


def recc_args(case: Case, sizes: dict, device, seed: int = 0) -> list:
    """Inputs [B, T, H, ...] and params [H, ...] of the case's spec, drawn as their annotations say."""
    from recc.primitives import sample_input
    rec = spec_of(case.spec)
    dims = {**rec.fixed_dims, **{k: v for k, v in sizes.items() if k not in ("B", "T", "H")}}
    gen = torch.Generator().manual_seed(seed)
    shape = lambda lead, d: lead + tuple(dims[x] if isinstance(x, str) else x for x in d.shape)
    args = [sample_input(shape((sizes["B"], sizes["T"], sizes["H"]), d), d.annotations, gen, torch.float32)
            for d in rec.inputs]
    args += [0.5 * sample_input(shape((sizes["H"],), d), d.annotations, gen, torch.float32) for d in rec.params]
    return [a.to(device=device, dtype=case.dtype).contiguous() for a in args]


def first_output(result):
    out = result[0] if isinstance(result, tuple) else result
    return out[0] if isinstance(out, tuple) else out


# ---- timing -----------------------------------------------------------------------------

def bench_ms(fn, warmup, rep, grad_to_none=None) -> float:
    if DRY_RUN:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    import triton.testing
    try:
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                                             return_mode="median"))
    except TypeError:  # an older Triton: quantiles instead of return_mode
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none,
                                             quantiles=[0.5])[0])


def time_pair(fwd, leaves, warmup, rep) -> tuple:
    """(forward ms, forward+backward ms) of `fwd()` -> a tensor, with a fixed random cotangent."""
    with torch.no_grad():
        t_fwd = bench_ms(fwd, warmup, rep)
    out = fwd()
    dy = torch.randn_like(out)

    def step():
        fwd().backward(dy)
    t_all = bench_ms(step, warmup, rep, grad_to_none=leaves)
    return t_fwd, t_all


def rel_err(x, ref) -> float:
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    if x.shape != ref.shape or not torch.isfinite(x).all():
        return math.inf
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_small(case: Case, device) -> tuple:
    """(ok, worst error, what): recc on the GPU vs the float64 CPU reference, small shape,
    outputs (with and without gradient) and gradients of every input and param."""
    op = recc_op(case)
    rec = spec_of(case.spec)
    args = recc_args(case, case.small, device, seed=1)
    leaves = [a.detach().clone().requires_grad_() for a in args]
    ref_leaves = [a.detach().cpu().double().requires_grad_() for a in args]
    out = first_output(op(*leaves))
    ref = first_output(rec_reference(rec, ref_leaves))
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out.backward(dy.to(device=out.device, dtype=out.dtype))
    ref.backward(dy)
    errors = {"out": rel_err(out, ref)}
    with torch.no_grad():   # a call without gradient: its own plan (chunked: the fused state pass)
        errors["out_nograd"] = rel_err(first_output(op(*args)), ref)
    for d, x, r in zip(rec.inputs + rec.params, leaves, ref_leaves):
        errors["d" + d.name] = rel_err(x.grad if x.grad is not None else torch.zeros_like(x),
                                       r.grad if r.grad is not None else torch.zeros_like(r))
    worst = max(errors, key=errors.get)
    return errors[worst] < TOL[case.dtype], errors[worst], worst


def rec_reference(rec, args):
    from recc.reference import reference
    return reference(rec, *args)


def check_against_anchor(case: Case, op, args, anchor: AnchorRun) -> tuple:
    """(ok, worst error, what) on the main shape: recc vs the anchor, same inputs."""
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out = first_output(op(*leaves))
    ref = anchor.to_recc(anchor.fn())
    errors = {"out": rel_err(out, ref)}
    with torch.no_grad():
        errors["out_nograd"] = rel_err(first_output(op(*args)), ref)
    if case.compare_grads:
        dy = torch.randn_like(out)
        out.backward(dy)
        for x in anchor.leaves:
            x.grad = None
        ref_out = anchor.fn()
        ref_out.backward(anchor_cotangent(anchor, dy, ref_out))
        for i, (x, back) in enumerate(zip(anchor.leaves, anchor.grad_to_recc or [])):
            if back is not None and i < len(leaves) and x.grad is not None:
                errors[f"d{i}"] = rel_err(leaves[i].grad, back(x.grad))
    worst = max(errors, key=errors.get)
    return errors[worst] < ANCHOR_TOL[case.dtype], errors[worst], worst


def anchor_cotangent(anchor: AnchorRun, dy, ref_out):
    """recc's cotangent in the anchor's output layout (the inverse of to_recc, found numerically
    by pulling dy back through to_recc with autograd)."""
    probe = torch.zeros_like(ref_out, requires_grad=True)
    (anchor.to_recc(probe) * dy).sum().backward()
    return probe.grad


# ---- cold start ---------------------------------------------------------------------------

def cold_start(case_index: int, T: int, side: str, timeout: int) -> float | None:
    """Seconds of the first forward+backward call, compile and autotune included, in a fresh
    subprocess with empty Triton and recc caches (imports and input creation not counted)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(tmp, "triton"),
                   RECC_CACHE_DIR=os.path.join(tmp, "recc"))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--cold-probe", f"{case_index}:{T}:{side}"]
        cmd += ["--dry-run"] if DRY_RUN else []
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for line in reversed(done.stdout.splitlines()):
            if line.startswith("COLD "):
                return float(line.split()[1])
        sys.stderr.write(f"  cold probe failed ({side}): {done.stderr.strip().splitlines()[-1:]}\n")
        return None


def cold_probe(spec: str) -> None:
    index, T, side = spec.split(":")
    case = CASES[int(index)]
    sizes = case.sizes(int(T))
    args = recc_args(case, sizes, DEVICE)
    anchor = case.make_anchor(args, sizes) if side == "anchor" else None   # imports not counted
    leaves = [a.detach().clone().requires_grad_() for a in args]
    sync()
    start = time.perf_counter()
    if side == "recc":
        out = first_output(recc_op(case)(*leaves))    # recc.load renders and imports; kernels compile at launch
    else:
        out = anchor.fn()
    out.backward(torch.ones_like(out))
    sync()
    print(f"COLD {time.perf_counter() - start:.3f}")


# ---- the scan tile sweep ------------------------------------------------------------------

def sweep_scan(T: int, warmup: int, rep: int, out_path: Path | None, which: str = "tile",
               repeats: int = 3) -> list:
    """Time the first-order scan (fp32, main shape) over kernel variants and tiles: forward alone,
    backward alone, forward+backward (the output saved as the state, as a wrapper that saves
    outputs does). Prints the best. The first row is what the generated op launches: the solver's
    choice for this shape on this GPU (`recc.tiles`, family scan); its cost model was calibrated
    on these sweeps (tests/test_tiles.py pins the winner).

    `which`: "tile" (the tile kernel's grid, its loop variants and `chunks`) or "lookback" (the
    time-split `lookback` kernels against the best tiles). Every config is checked against the
    first before it is timed: the output, the final state and both gradients, on `repeats` fresh
    random inputs (a carry hand-off that races shows as a mismatch on some of them)."""
    import importlib.util
    import itertools
    from recc.lower.scan import lower_scan
    from recc.signature import bind
    case = CASES[0]
    rec = spec_of("first_order")
    sizes = case.sizes(T)
    tmp = Path(tempfile.mkdtemp())
    modules = {}
    for name, opts in {"default": {}, "stages3": dict(loop_stages=3), "tile-plain": dict(prefetch=False)}.items():
        path = tmp / f"first_order_{name.replace('-', '_')}.py"
        path.write_text(lower_scan(rec, **opts).source)
        spec = importlib.util.spec_from_file_location(f"sweep_{name.replace('-', '_')}", path)
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
        modules[name]._WRAPPER_SAVES_OUTPUTS = True
    # the solver's choice first (the reference output), then the tile kernel's grid, then the other variants
    configs = [("default", {})]
    if which == "lookback":
        configs += [("default", dict(variant="tile", BT=BT, BD=BD, num_warps=nw)) for BT, BD, nw in ((64, 32, 4), (64, 64, 4))]
        configs += lookback_configs()
    else:
        configs += [("default", dict(variant="tile", BT=BT, BD=BD, num_warps=nw))
                    for BT, BD, nw in itertools.product((32, 64, 128), (16, 32, 64), (2, 4, 8))
                    if 4 <= BT * BD // (32 * nw) <= 64 and (BT, BD, nw) != (64, 32, 4)]
        configs += [("tile-plain", dict(variant="tile", BT=64, BD=32, num_warps=4))]
        configs += [("stages3", dict(variant="tile", BT=BT, BD=BD, num_warps=4)) for BT, BD in ((64, 32), (64, 64), (32, 64))]
        configs += [("default", dict(variant="chunks", R=R, W=W, BD=BD, num_warps=nw, fill=False))
                    for R, W, BD, nw in ((16, 16, 32, 4), (8, 32, 32, 8))]
    print(f"scan sweep ({which}), first_order fp32 {sizes}: ms (median)")
    inputs = [recc_args(case, sizes, DEVICE, seed=10 + i) for i in range(max(1, repeats))]
    dys = [torch.randn(sizes["B"], T, sizes["H"], sizes["D"], generator=torch.Generator().manual_seed(20 + i)).to(DEVICE)
           for i in range(len(inputs))]

    def run_once(module, a, b, dy):
        call = bind(rec, (a, b), {})
        call.requires_grad = True
        outs, finals, saved = module._forward(call)
        d_in, _, _ = module._backward(call, (outs["y"],) + saved, {"y": dy}, {"x": None})
        return call, outs, saved, [outs["y"], finals["x"], d_in["a"], d_in["b"]]

    rows, refs = [], None
    for name, tiles in configs:
        module = modules[name]
        module._SCAN_TILES.clear()
        module._SCAN_TILES.update(tiles)
        label = f"{name:10s} " + (" ".join(f"{k}={v}" for k, v in tiles.items() if k not in ("fill",)) or "solver")
        try:
            got = [run_once(module, a, b, dy)[3] for (a, b), dy in zip(inputs, dys)]
            if refs is None:
                refs = [[x.clone() for x in g] for g in got]
            err = max(((x - r).norm() / r.norm().clamp_min(1e-30)).item()
                      for g, ref in zip(got, refs) for x, r in zip(g, ref))
            if not err < 1e-5:      # the first config is the reference; a wrong carry hop shows here
                print(f"  {label}: MISMATCH against the first config: relative error {err:.2e}")
                rows.append(dict(loop=name, **tiles, mismatch=err))
                continue
            a, b = inputs[0]
            call, outs, saved, _ = run_once(module, a, b, dys[0])
            saved_all = (outs["y"],) + saved
            bwd = lambda: module._backward(call, saved_all, {"y": dys[0]}, {"x": None})
            infer = bind(rec, (a, b), {})
            infer.requires_grad = False
            t_fwd = bench_ms(lambda: module._forward(infer), warmup, rep)
            t_bwd = bench_ms(bwd, warmup, rep)
            t_fb = bench_ms(lambda: (module._forward(call), bwd()), warmup, rep)
        except Exception as e:  # noqa: BLE001
            print(f"  {label}: failed: {type(e).__name__}: {str(e)[:160]}")
            continue
        rows.append(dict(loop=name, **tiles, fwd_ms=t_fwd, bwd_ms=t_bwd, fwdbwd_ms=t_fb, checked_inputs=len(inputs),
                         max_rel_err=err))
        print(f"  {label}: fwd {t_fwd:.4f}  bwd {t_bwd:.4f}  fwd+bwd {t_fb:.4f}  (err {err:.1e})", flush=True)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(rows, indent=1))
        print(f"wrote {out_path}")
    timed = [r for r in rows if "fwd_ms" in r]
    if timed:
        for what in ("bwd_ms", "fwd_ms", "fwdbwd_ms"):       # best forward and forward+backward last
            print(f"best {what}: {min(timed, key=lambda r: r[what])}")
    return rows


def lookback_configs() -> list:
    """The `lookback` variant's tiles: one [BT, BD] tile per program, long enough (128-512 steps)
    that the chain of T / BT carry hops stays shorter than the loads; at most 32 fp32 of a tile per
    thread (the backward holds ~6 such tiles)."""
    return [("default", dict(variant="lookback", BT=BT, BD=BD, num_warps=nw))
            for BT, BD, nw in ((128, 32, 4), (256, 16, 4), (256, 32, 8), (128, 64, 8), (512, 16, 8),
                               (512, 32, 16), (256, 64, 16))]


# ---- the run --------------------------------------------------------------------------------

def empty_row(case: Case, T: int, meta: dict) -> dict:
    return dict(op=case.op, anchor=case.anchor, spec=case.spec, strategy=case.strategy, shape=dict(case.sizes(T)),
                dtype=str(case.dtype).replace("torch.", ""), recc_fwd_ms=None, recc_fwdbwd_ms=None,
                anchor_fwd_ms=None, anchor_fwdbwd_ms=None, recc_cold_s=None, anchor_cold_s=None,
                checked=False, check=None, recc_error=None, anchor_error=None, **meta)


def run_case(index: int, case: Case, T: int, args_ns, meta: dict) -> dict:
    sizes = case.sizes(T)
    row = empty_row(case, T, meta)
    args = recc_args(case, sizes, DEVICE)
    op = None
    try:
        op = recc_op(case)
        leaves = [a.detach().clone().requires_grad_() for a in args]
        row["recc_fwd_ms"], row["recc_fwdbwd_ms"] = time_pair(lambda: first_output(op(*leaves)), leaves,
                                                              args_ns.warmup, args_ns.rep)
    except Exception as e:  # noqa: BLE001
        row["recc_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        print(f"  recc failed: {row['recc_error']}", flush=True)
        op = None
    anchor = None
    try:
        anchor = case.make_anchor(args, sizes)
        row["anchor_fwd_ms"], row["anchor_fwdbwd_ms"] = time_pair(anchor.fn, anchor.leaves,
                                                                  args_ns.warmup, args_ns.rep)
    except Exception as e:  # noqa: BLE001
        row["anchor_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        print(f"  anchor failed: {row['anchor_error']}", flush=True)
        anchor = None
    if op is not None:
        notes = []
        try:
            ok, err, what = check_small(case, DEVICE)
            notes.append(f"small vs float64 reference: worst {what} {err:.1e}")
            if ok and anchor is not None and case.compare:
                ok, err, what = check_against_anchor(case, op, args, anchor)
                notes.append(f"main vs anchor: worst {what} {err:.1e}")
            row["checked"] = bool(ok)
        except Exception as e:  # noqa: BLE001
            notes.append(f"check failed: {type(e).__name__}: {str(e)[:200]}")
            if args_ns.verbose:
                traceback.print_exc()
        row["check"] = "; ".join(notes)
    if args_ns.cold:
        if op is not None:
            row["recc_cold_s"] = cold_start(index, T, "recc", args_ns.cold_timeout)
        if anchor is not None:
            row["anchor_cold_s"] = cold_start(index, T, "anchor", args_ns.cold_timeout)
    del anchor, op
    if not DRY_RUN:
        torch.cuda.empty_cache()
    return row


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _ms(x):
    return "n/a" if x is None else f"{x:.3f}"


def _ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def print_table(rows: list) -> None:
    head = (f"{'op':20s} {'anchor':34s} {'T':>6s} {'dtype':>8s} | {'recc fwd':>9s} {'anchor':>9s} {'ratio':>7s}"
            f" | {'recc f+b':>9s} {'anchor':>9s} {'ratio':>7s} | {'cold recc':>9s} {'anchor':>8s} | checked")
    print(head)
    print("-" * len(head))
    for r in rows:
        cold = lambda x: "n/a" if x is None else f"{x:.1f}s"
        print(f"{r['op']:20s} {r['anchor'][:34]:34s} {r['shape']['T']:6d} {r['dtype']:>8s} | "
              f"{_ms(r['recc_fwd_ms']):>9s} {_ms(r['anchor_fwd_ms']):>9s} "
              f"{_ratio(r['anchor_fwd_ms'], r['recc_fwd_ms']):>7s} | "
              f"{_ms(r['recc_fwdbwd_ms']):>9s} {_ms(r['anchor_fwdbwd_ms']):>9s} "
              f"{_ratio(r['anchor_fwdbwd_ms'], r['recc_fwdbwd_ms']):>7s} | "
              f"{cold(r['recc_cold_s']):>9s} {cold(r['anchor_cold_s']):>8s} | {r['checked']}")
    for r in rows:
        for key in ("recc_error", "anchor_error"):
            if r.get(key):
                print(f"  {r['op']} T={r['shape']['T']} {key.split('_')[0]}: n/a ({r[key]})")
        if r.get("check"):
            print(f"  {r['op']} T={r['shape']['T']} check: {r['check']}")
    print("ratio = anchor / recc (above 1: recc is faster)")


def plot(rows: list, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    keys = sorted({(r["op"], r["anchor"]) for r in rows})
    if not keys:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, what in zip(axes, ("fwd", "fwdbwd")):
        for op, anchor in keys:
            sel = sorted((r for r in rows if (r["op"], r["anchor"]) == (op, anchor)), key=lambda r: r["shape"]["T"])
            Ts = [r["shape"]["T"] for r in sel]
            for side, style in (("recc", "-o"), ("anchor", "--x")):
                ys = [r[f"{side}_{what}_ms"] for r in sel]
                pts = [(t, y) for t, y in zip(Ts, ys) if y is not None]
                if pts:
                    label = f"{op} recc" if side == "recc" else f"{op}: {anchor}"
                    ax.plot(*zip(*pts), style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_ylabel("ms (median)")
        ax.set_title("forward" if what == "fwd" else "forward + backward")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ---- autotuning results carried between machines -----------------------------------------

def triton_cache_dir() -> Path:
    try:
        import triton
        return Path(triton.knobs.cache.dir)
    except Exception:  # noqa: BLE001 - an older Triton: its default place
        return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")


def load_autotune(archive: Path, cache: Path) -> int:
    """Unpack `<key>/<kernel>.autotune.json` files (Triton's own autotuning results, written with
    TRITON_CACHE_AUTOTUNING=1) into the Triton cache; returns how many. Members with any other
    shape are skipped."""
    import tarfile
    if not archive.exists():
        return 0
    n = 0
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if not (m.isfile() and len(parts) == 2 and parts[1].endswith(".autotune.json")
                    and all(p not in ("", ".", "..") and "/" not in p for p in parts)):
                continue
            target = cache / parts[0] / parts[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
            n += 1
    return n


def save_autotune(archive: Path, cache: Path) -> int:
    """Pack every autotuning result of the Triton cache into `archive` (one file: what a device
    call returns and the next one carries); returns how many."""
    import tarfile
    files = sorted(cache.glob("*/*.autotune.json"))
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        for f in files:
            tar.add(f, arcname=f"{f.parent.name}/{f.name}")
    return len(files)


def run_isolated(a, Ts: list, wanted, meta: dict, out: Path, argv) -> int:
    """--isolate: each op (all its T) in a subprocess of this script, killed after a.isolate
    seconds; a compiler crash or an anchor's long autotuning costs that op's rows only, which
    stay in the JSON with the reason as their error."""
    ops = [op for op in dict.fromkeys(c.op for c in CASES) if wanted is None or op in wanted]
    passed = []                    # this command's options, less the ones the parent sets per op
    skip = {"--ops", "--out", "--isolate", "--T"}
    args = list(sys.argv[1:] if argv is None else argv)
    i = 0
    while i < len(args):
        name = args[i].split("=", 1)[0]
        if name in skip:
            i += 1 if "=" in args[i] else 2
            continue
        passed.append(args[i])
        i += 1
    rows = []
    for op in ops:
        part = out.with_name(f"{out.stem}.{op}.part.json")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--ops", op, "--T", a.T, "--out", str(part)] + passed
        try:
            code = subprocess.run(cmd, timeout=a.isolate).returncode
            reason = None if code == 0 else f"the op's subprocess exited with status {code}"
        except subprocess.TimeoutExpired:
            reason = f"the op's subprocess ran past --isolate {a.isolate} s"
        got = json.loads(part.read_text()) if part.exists() else []
        for extra in (part, part.with_suffix(".png")):
            extra.unlink(missing_ok=True)
        for case in (c for c in CASES if c.op == op):
            for T in Ts:
                if not any(r["anchor"] == case.anchor and r["shape"]["T"] == T for r in got):
                    row = empty_row(case, T, meta)
                    row["recc_error"] = row["anchor_error"] = reason or "no row written"
                    got.append(row)
        if reason:
            print(f"  {op}: {reason}", flush=True)
        rows += got
        write_rows(rows, out)
    return finish(rows, out)


def write_rows(rows: list, out: Path) -> None:
    """The JSON of the rows so far: a run cut short (a timeout, a crash of a compiler) keeps them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


def finish(rows: list, out: Path) -> int:
    print()
    print_table(rows)
    print(f"wrote {out}")
    plot(rows, out.with_suffix(".png"))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", default="scan,gla_recurrent,lstm",
                   help=f"comma-separated ops, or 'all' ({', '.join(dict.fromkeys(c.op for c in CASES))})")
    p.add_argument("--T", default="1024,4096", help="comma-separated sequence lengths")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench-<date>.json)")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    p.add_argument("--quick", action="store_true", help="smoke run: T=1024, short timings, no cold start")
    p.add_argument("--cold", dest="cold", action="store_true", default=None, help="time cold starts")
    p.add_argument("--no-cold", dest="cold", action="store_false", help="skip cold starts")
    p.add_argument("--cold-timeout", type=int, default=300, help="seconds per cold-start subprocess")
    p.add_argument("--sweep", action="store_true", help="sweep the scan's tiles instead (first T)")
    p.add_argument("--sweep-set", default="tile", choices=("tile", "lookback"),
                   help="--sweep: the tile kernel's grid, or the time-split lookback kernels")
    p.add_argument("--sweep-repeats", type=int, default=3, help="--sweep: fresh inputs each config is checked on")
    p.add_argument("--isolate", type=int, default=None, metavar="SECONDS",
                   help="run each op (all its T) in its own subprocess, killed after SECONDS: a compiler crash "
                        "or a slow autotune costs that op's rows only")
    p.add_argument("--autotune-cache", default=None, metavar="FILE.tar",
                   help="anchors' autotuning results (Triton's TRITON_CACHE_AUTOTUNING files): loaded from FILE "
                        "before the run when it exists, written back after it; the timed kernels are the same, "
                        "only the search is skipped (cold starts still start from empty caches)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--cold-probe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    global DEVICE, DRY_RUN
    if a.dry_run:   # the harness itself on the CPU: interpreter, tiny shapes, no meaning in the times
        DEVICE, DRY_RUN = "cpu", True
        os.environ["TRITON_INTERPRET"] = "1"
        for i, c in enumerate(CASES):
            CASES[i] = Case(**{**c.__dict__, "sizes": (lambda small: lambda T: dict(small, T=T))(c.small)})
    if a.cold_probe:
        cold_probe(a.cold_probe)
        return 0
    if not DRY_RUN and not torch.cuda.is_available():
        print("bench.py: no CUDA GPU here; nothing timed. Run it on the GPU machine (see benchmarks/README.md).")
        return 0
    if not DRY_RUN:
        os.environ.pop("TRITON_INTERPRET", None)
    if a.quick:
        a.T, a.warmup, a.rep = "1024", 5, 20
        if a.cold is None:
            a.cold = False
    if a.cold is None:
        a.cold = True
    Ts = [int(t) for t in a.T.split(",") if t]
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"bench-{date}.json"

    if a.sweep:
        sweep_scan(Ts[0], a.warmup, a.rep, out.with_suffix(".sweep.json"), a.sweep_set, a.sweep_repeats)
        return 0

    import triton
    meta = dict(device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)", triton=triton.__version__, torch=torch.__version__,
                date=datetime.datetime.now().isoformat(timespec="seconds"),
                command=" ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]))
    wanted = None if a.ops == "all" else set(a.ops.split(","))
    unknown = (wanted or set()) - {c.op for c in CASES}
    if unknown:
        print(f"unknown ops: {', '.join(sorted(unknown))}")
        return 2
    if a.autotune_cache:
        os.environ["TRITON_CACHE_AUTOTUNING"] = "1"       # the subprocesses (--isolate) inherit it
        if not os.environ.get("RECC_BENCH_AUTOTUNE_LOADED"):
            n = load_autotune(Path(a.autotune_cache), triton_cache_dir())
            os.environ["RECC_BENCH_AUTOTUNE_LOADED"] = "1"
            print(f"autotuning results loaded: {n} from {a.autotune_cache}", flush=True)
    if a.isolate:
        code = run_isolated(a, Ts, wanted, meta, out, argv)
    else:
        code = run_rows(a, Ts, wanted, meta, out)
    if a.autotune_cache:
        n = save_autotune(Path(a.autotune_cache), triton_cache_dir())
        print(f"autotuning results saved: {n} to {a.autotune_cache}", flush=True)
    return code


def run_rows(a, Ts: list, wanted, meta: dict, out: Path) -> int:
    rows = []
    for T in Ts:
        for i, case in enumerate(CASES):
            if wanted is not None and case.op not in wanted:
                continue
            print(f"== {case.op} vs {case.anchor}, T={T}", flush=True)
            rows.append(run_case(i, case, T, a, meta))
            print_table(rows[-1:])           # each row as it completes
            write_rows(rows, out)
            sys.stdout.flush()
    return finish(rows, out)


if __name__ == "__main__":
    sys.exit(main())
