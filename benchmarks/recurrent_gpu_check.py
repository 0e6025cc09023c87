"""Quick GPU check of the `recurrent` strategy (one fused sequential kernel per direction).

1. correctness on the GPU: outputs, final states and gradients of every input and
   initial state against the float64 reference (on the CPU), fp32 and bf16 inputs,
   fixed-length and varlen, at a small shape;
2. timings at the main shape (B=4, T=4096, H=16, K=V=128, bf16; median of
   triton.testing.do_bench): forward and forward+backward, cold start too, and
   fla's fused_recurrent_gla on the same inputs when fla is importable.

    python benchmarks/recurrent_gpu_check.py                 # gla and gated_delta_net
    python benchmarks/recurrent_gpu_check.py --sweep         # also try tiles (BV, warps, CHUNK, REG_STEPS)
    python benchmarks/recurrent_gpu_check.py --specs gla --T 1024 --skip-check
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


def load(name: str):
    return recc.load(ROOT / "specs" / f"{name}.rec", strategy="recurrent")


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
        print(f"  {name:16s} {label:22s} ok: worst {worst} {errors[worst]:.1e} ({time.perf_counter() - t0:.1f} s)")


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


def timings(op, name: str, B: int, T: int, H: int, D: int, sweep: bool) -> None:
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
    print(f"  recc recurrent {tiles}: fwd {fwd:.3f} ms, fwd+bwd {fwd_bwd:.3f} ms (peak memory {peak:.2f} GiB)")
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
        sweep_tiles(op, args, do, tiles, name)


def sweep_tiles(op, args, do, default: dict, name: str) -> None:
    """The forward's tiles (BV, num_warps) by forward time, then the backward's
    (REG_STEPS, BV_bwd, num_warps_bwd, CHUNK) by forward + backward time."""
    tiles = op.module.TILES
    best = None
    for bv in (16, 32, 64):
        for warps in (2, 4, 8):
            tiles.update(default, BV=bv, num_warps=warps)
            with torch.no_grad():
                ms = bench(lambda: op(*args))
            print(f"    fwd BV={bv:3d} num_warps={warps}: {ms:.3f} ms")
            best = min(best or (ms, bv, warps), (ms, bv, warps))
    print(f"    best forward: BV={best[1]} num_warps={best[2]} ({best[0]:.3f} ms)")
    tiles.update(default)
    best_bwd = None
    for steps in (1, 2, 4):
        variant = recc.load(ROOT / "specs" / f"{name}.rec", strategy="recurrent", tiles={"REG_STEPS": steps})
        for bv in (32, 64):
            for warps in (4, 8):
                for chunk in (16, 32, 64):
                    variant.module.TILES.update(default, BV=best[1], num_warps=best[2], BV_bwd=bv,
                                                num_warps_bwd=warps, CHUNK=chunk)

                    def fwd_bwd():
                        o, _ = variant(*args)
                        o.backward(do)
                    try:
                        ms = bench(fwd_bwd)
                    except Exception as e:  # noqa: BLE001 - e.g. out of resources: report and go on
                        print(f"    REG_STEPS={steps} BV_bwd={bv} num_warps_bwd={warps} CHUNK={chunk}: "
                              f"{type(e).__name__}: {str(e)[:80]}")
                        continue
                    print(f"    fwd+bwd REG_STEPS={steps} BV_bwd={bv:3d} num_warps_bwd={warps} CHUNK={chunk:3d}: "
                          f"{ms:.3f} ms")
                    best_bwd = min(best_bwd or (ms, steps, bv, warps, chunk), (ms, steps, bv, warps, chunk))
    if best_bwd:
        ms, steps, bv, warps, chunk = best_bwd
        print(f"    best fwd+bwd ({ms:.3f} ms): RECURRENT_TILES = {{'BV': {best[1]}, 'BV_bwd': {bv}, 'CHUNK': {chunk}, "
              f"'REG_STEPS': {steps}, 'num_warps': {best[2]}, 'num_warps_bwd': {warps}}}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", nargs="+", default=["gla", "gated_delta_net"])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--D", type=int, default=128, help="K = V")
    p.add_argument("--sweep", action="store_true", help="time a few tile choices too")
    p.add_argument("--skip-check", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="the checks only, on the CPU (under TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    if args.dry_run:
        for name in args.specs:
            check(load(name), name, device="cpu", D=8)
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("needs a GPU")
    print(f"torch {torch.__version__}, triton {__import__('triton').__version__}, {torch.cuda.get_device_name()}")
    for name in args.specs:
        op = load(name)
        print(f"{name}: strategy {op.module.STRATEGY}, tiles {op.module.TILES}")
        if not args.skip_check:
            check(op, name)
        timings(op, name, args.B, args.T, args.H, args.D, args.sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
