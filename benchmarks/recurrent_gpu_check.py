"""Quick GPU check of the `recurrent` strategy (one fused sequential kernel per direction).

1. correctness on the GPU: outputs, final states and gradients of every input and
   initial state against the float64 reference (on the CPU), fp32 and bf16 inputs,
   fixed-length and varlen, at a small shape, for both register orders of the
   state tile (ORDER "VK": [BV, BK], "KV": [BK, BV]);
2. timings at the main shape (B=4, T=4096, H=16, K=V=128, bf16; median of
   triton.testing.do_bench): forward and forward+backward, cold start too, and
   fla's fused_recurrent_gla on the same inputs when fla is importable;
3. with --sweep, tile choices: the forward's (ORDER, BV, num_warps) by forward time,
   then, with the best forward, the backward's (ORDER_bwd, REG_STEPS, BV_bwd,
   num_warps_bwd, CHUNK) by forward+backward time. Each choice's outputs (forward)
   or gradients (backward) are compared with the default tiles' before it is
   timed; one that differs is reported as WRONG and not ranked.

    python benchmarks/recurrent_gpu_check.py                 # gla and gated_delta_net
    python benchmarks/recurrent_gpu_check.py --sweep         # also try tiles
    python benchmarks/recurrent_gpu_check.py --sweep --quick # orders, BV and warps only (REG_STEPS auto, one CHUNK)
    python benchmarks/recurrent_gpu_check.py --specs gla --T 1024 --skip-check
    python benchmarks/recurrent_gpu_check.py --dry-run --sweep  # the checks and a tiny sweep on the CPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import recc  # noqa: E402
from oracle import (assert_close_to_reference, random_arguments, random_initial_state,  # noqa: E402
                    relative_error)


ORDERS = ("VK", "KV")   # a matrix state's tile held [BV, BK] or [BK, BV]
AGREE = 1e-2            # relative difference allowed between two tile choices (bf16 results)


def load(name: str, **tiles):
    """The op with the given compiled-in tiles (ORDER, ORDER_bwd, REG_STEPS); the
    others are set at run time through `op.module.TILES`."""
    return recc.load(ROOT / "specs" / f"{name}.rec", strategy="recurrent", tiles=tiles or None)


def check(op, name: str, device: str = "cuda", D: int = 64) -> None:
    """Small shapes on the GPU vs the float64 reference on the CPU."""
    rec = op.module._REC
    dims = {d: D for d in rec.free_dims}
    cases = [("fp32", torch.float32, 1e-4, {}), ("fp32 + initial state", torch.float32, 1e-4, "init"),
             ("bf16", torch.bfloat16, 2e-2, {}), ("varlen fp32", torch.float32, 1e-4, "varlen")]
    for label, dtype, tol, extra in cases:
        B, T = (1, 150) if extra == "varlen" else (2, 77)
        if device == "cpu":
            B, T = (1, 45) if extra == "varlen" else (2, 13)
        args = random_arguments(rec, B, T, 3, dims, dtype=torch.float32, seed=3, device=device)
        kwargs = {}
        if extra == "init":
            kwargs["initial_state"] = random_initial_state(rec, args)
        if extra == "varlen":
            kwargs["cu_seqlens"] = torch.tensor([0, 40, 41, T], device=device, dtype=torch.int32)
            kwargs["initial_state"] = random_initial_state(rec, args, N=3)
        args = [a.to(dtype) for a in args]
        t0 = time.perf_counter()
        errors = assert_close_to_reference(op, rec, args, kwargs, tol=tol)
        worst = max(errors, key=errors.get)
        print(f"  {name:20s} {label:22s} ok: worst {worst} {errors[worst]:.1e} ({time.perf_counter() - t0:.1f} s)")


def main_inputs(name: str, B: int, T: int, H: int, D: int, grad: bool, device: str = "cuda"):
    """bf16 inputs at the main shape, fla's conventions (g log-space, k unit for the delta rule)."""
    kw = dict(device=device, dtype=torch.bfloat16)
    q = torch.randn(B, T, H, D, **kw)
    k = torch.randn(B, T, H, D, **kw)
    v = torch.randn(B, T, H, D, **kw)
    if name == "gla":
        g = F.logsigmoid(torch.randn(B, T, H, D, device=device)).to(torch.bfloat16)
        args = [q, k, v, g]
    elif name == "gated_delta_net":
        k = F.normalize(k.float(), dim=-1).to(torch.bfloat16)
        g = F.logsigmoid(torch.randn(B, T, H, device=device)).to(torch.bfloat16)
        beta = torch.rand(B, T, H, **kw)
        args = [q, k, v, g, beta]
    else:
        raise SystemExit(f"no main-shape inputs for {name}")
    return [a.contiguous().requires_grad_(grad) for a in args]


def bench(fn) -> float:
    import triton
    return triton.testing.do_bench(fn, warmup=5, rep=50, quantiles=[0.5])


def once(fn) -> float:
    """A stand-in for `bench` on the CPU (--dry-run): one call, in ms."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_op(op, args, do) -> tuple:
    def fwd():
        with torch.no_grad():
            op(*args)

    def fwd_bwd():
        o, _ = op(*args)
        o.backward(do)
    return bench(fwd), bench(fwd_bwd)


def fla_ops(name: str):
    try:
        if name == "gla":
            from fla.ops.gla import fused_recurrent_gla
            return "fla.ops.fused_recurrent_gla(q, k, v, gk=g)", lambda q, k, v, g: fused_recurrent_gla(q, k, v, gk=g)
        if name == "gated_delta_net":
            from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
            return ("fla fused_recurrent_gated_delta_rule(q, k, v, g, beta)",
                    lambda q, k, v, g, beta: fused_recurrent_gated_delta_rule(q, k, v, g, beta))
    except ImportError as e:
        print(f"  fla not importable ({e}); no anchor")
    return None, None


def timings(op, name: str, B: int, T: int, H: int, D: int, sweep: bool, quick: bool = False) -> None:
    args = main_inputs(name, B, T, H, D, grad=True)
    do = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
    t0 = time.perf_counter()
    o, _ = op(*args)
    o.backward(do)
    torch.cuda.synchronize()
    print(f"  {name}: cold start (first fwd+bwd, compile included) {time.perf_counter() - t0:.1f} s")
    torch.cuda.reset_peak_memory_stats()
    fwd, fwd_bwd = time_op(op, args, do)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    tiles = dict(op.module.TILES)
    print(f"  recc recurrent {tiles}, ORDER={op.module.ORDER}, ORDER_bwd={op.module.ORDER_bwd}: "
          f"fwd {fwd:.3f} ms, fwd+bwd {fwd_bwd:.3f} ms (peak memory {peak:.2f} GiB)")
    label, fla = fla_ops(name)
    if fla is not None:
        with torch.no_grad():
            ours = op(*args)[0].float()
            theirs = fla(*args)[0].float()
        print(f"  output vs fla: relative difference {relative_error(ours, theirs):.1e}")
        try:
            fla_fwd, fla_fwd_bwd = time_op(fla, args, do)
        except Exception as e:  # noqa: BLE001 - fla may have no backward for this op
            fla_fwd, fla_fwd_bwd = bench(lambda: fla(*[a.detach() for a in args])), float("nan")
            print(f"  ({label}: no backward: {type(e).__name__})")
        print(f"  {label}: fwd {fla_fwd:.3f} ms, fwd+bwd {fla_fwd_bwd:.3f} ms")
        print(f"  ratio fla / recc: fwd {fla_fwd / fwd:.2f}x, fwd+bwd {fla_fwd_bwd / fwd_bwd:.2f}x  (>= 1 means recc is faster)")
    if sweep:
        sweep_tiles(op, name, args, do, quick)


class Wrong(Exception):
    """A tile choice computed something else than the default tiles."""


def results(op, args, do) -> list:
    """The output, and with `do` the gradient of every input (fresh: the args' .grad is reset)."""
    if do is None:
        with torch.no_grad():
            return [op(*args)[0]]
    for a in args:
        a.grad = None
    o, _ = op(*args)
    o.backward(do)
    out = [o.detach()] + [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    return out


def difference(value: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative difference (norm of the difference over the norm of ref), on the device."""
    value, ref = value.float(), ref.float()
    if value.shape != ref.shape or not torch.isfinite(value).all():
        return float("inf")
    return ((value - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def agree(got: list, expected: list) -> float:
    """The worst relative difference; raises `Wrong` past AGREE."""
    worst = max(difference(g, e) for g, e in zip(got, expected))
    if not worst <= AGREE:
        raise Wrong(f"WRONG: differs from the default tiles by {worst:.1e} (allowed {AGREE:.0e}); not ranked")
    return worst


def try_tiles(label: str, op, args, do, expected: list, timer, fwd_ms: float | None = None) -> float | None:
    """Check one tile choice against `expected`, then time it (forward only when `do`
    is None; else forward+backward, and the backward alone as that minus `fwd_ms`);
    prints one line; None when it failed or computed something else."""
    def run():
        if do is None:
            with torch.no_grad():
                op(*args)
        else:
            o, _ = op(*args)
            o.backward(do)
    try:
        worst = agree(results(op, args, do), expected)
        ms = timer(run)
    except Wrong as e:
        print(f"    {label}: {e}")
        return None
    except Exception as e:  # noqa: BLE001 - e.g. out of resources: report and go on
        print(f"    {label}: {type(e).__name__}: {str(e)[:80]}")
        return None
    timed = f"fwd {ms:.3f} ms" if do is None else f"f+b {ms:.3f} ms, bwd ~ {ms - fwd_ms:.3f} ms"
    print(f"    {label}: {timed} (vs default {worst:.0e})")
    return ms


def sweep_tiles(op, name: str, args, do, quick: bool = False, timer=bench) -> None:
    """The forward's tiles (ORDER, BV, num_warps) by forward time, then, with the best
    forward, the backward's (ORDER_bwd, REG_STEPS, BV_bwd, num_warps_bwd, CHUNK) by
    forward+backward time (bwd ~ f+b - fwd: CHUNK changes the forward's checkpoints a
    little). `op` has the default tiles: what every choice must agree with."""
    default = dict(op.module.TILES)
    expected_fwd, expected = results(op, args, None), results(op, args, do)
    fwd = {}   # (ORDER, BV, num_warps) -> ms
    for order in ORDERS:
        variant = load(name, ORDER=order)
        for bv in (16, 32, 64):
            for warps in (2, 4, 8):
                variant.module.TILES.update(default, BV=bv, num_warps=warps)
                ms = try_tiles(f"fwd ORDER={order} BV={bv:3d} num_warps={warps}", variant, args, None,
                               expected_fwd, timer)
                if ms is not None:
                    fwd[order, bv, warps] = ms
        variant.module.TILES.update(default)
    if not fwd:
        print("    no forward tile choice ran")
        return
    for order in ORDERS:
        ranked = sorted((ms, key) for key, ms in fwd.items() if key[0] == order)
        if ranked:
            ms, (_, bv, warps) = ranked[0]
            print(f"    best forward with ORDER={order}: BV={bv} num_warps={warps} ({ms:.3f} ms)")
    fwd_ms, (order, bv, warps) = min((ms, key) for key, ms in fwd.items())
    print(f"    best forward: ORDER={order} BV={bv} num_warps={warps} ({fwd_ms:.3f} ms)")
    both = {}  # (ORDER_bwd, REG_STEPS, BV_bwd, num_warps_bwd, CHUNK) -> ms
    for order_bwd in ORDERS:
        for steps in ("auto",) if quick else (1, 2, 4):
            variant = load(name, ORDER=order, ORDER_bwd=order_bwd, REG_STEPS=steps)
            steps = variant.module.REG_STEPS
            for bv_bwd in (32, 64):
                for warps_bwd in (4, 8):
                    for chunk in (default["CHUNK"],) if quick else (16, 32, 64):
                        variant.module.TILES.update(default, BV=bv, num_warps=warps, BV_bwd=bv_bwd,
                                                    num_warps_bwd=warps_bwd, CHUNK=chunk)
                        label = (f"f+b ORDER_bwd={order_bwd} REG_STEPS={steps} BV_bwd={bv_bwd:3d} "
                                 f"num_warps_bwd={warps_bwd} CHUNK={chunk:3d}")
                        ms = try_tiles(label, variant, args, do, expected, timer, fwd_ms)
                        if ms is not None:
                            both[order_bwd, steps, bv_bwd, warps_bwd, chunk] = ms
            variant.module.TILES.update(default)
    if not both:
        print("    no backward tile choice ran")
        return
    for order_bwd in ORDERS:
        ranked = sorted((ms, key) for key, ms in both.items() if key[0] == order_bwd)
        if ranked:
            ms, (_, steps, bv_bwd, warps_bwd, chunk) = ranked[0]
            print(f"    best fwd+bwd with ORDER_bwd={order_bwd}: REG_STEPS={steps} BV_bwd={bv_bwd} "
                  f"num_warps_bwd={warps_bwd} CHUNK={chunk} ({ms:.3f} ms, bwd ~ {ms - fwd_ms:.3f} ms)")
    ms, (order_bwd, steps, bv_bwd, warps_bwd, chunk) = min((ms, key) for key, ms in both.items())
    best = {"BV": bv, "BV_bwd": bv_bwd, "CHUNK": chunk, "REG_STEPS": steps, "num_warps": warps,
            "num_warps_bwd": warps_bwd, "ORDER": order, "ORDER_bwd": order_bwd}
    print(f"    best fwd+bwd ({ms:.3f} ms; fwd {fwd_ms:.3f} ms): RECURRENT_TILES = {best}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", nargs="+", default=["gla", "gated_delta_net"])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--D", type=int, default=128, help="K = V")
    p.add_argument("--sweep", action="store_true", help="time a few tile choices too")
    p.add_argument("--quick", action="store_true", help="sweep the orders, BV and warps only")
    p.add_argument("--skip-check", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="the checks only, on the CPU (under TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    if args.dry_run:
        for name in args.specs:
            for order in ORDERS:
                check(load(name, ORDER=order, ORDER_bwd=order), f"{name} {order}", device="cpu", D=8)
            if args.sweep:
                inputs = main_inputs(name, 1, 9, 2, 8, grad=True, device="cpu")
                do = torch.randn_like(inputs[2])
                sweep_tiles(load(name), name, inputs, do, quick=True, timer=once)
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("needs a GPU")
    print(f"torch {torch.__version__}, triton {__import__('triton').__version__}, {torch.cuda.get_device_name()}")
    for name in args.specs:
        op = load(name)
        print(f"{name}: strategy {op.module.STRATEGY}, tiles {op.module.TILES}")
        if not args.skip_check:
            for order in ORDERS:
                check(load(name, ORDER=order, ORDER_bwd=order), f"{name} {order}")
        timings(op, name, args.B, args.T, args.H, args.D, args.sweep, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
