#!/usr/bin/env python3
"""Per-kernel GPU time of recc's chunked ops and their anchors, in one process, on the same inputs.

    python benchmarks/kernel_times.py --ops delta_rule,gla --T 4096 [--tiles "delta_rule:BT=64"]

For each op of `bench.py`'s CASES (and each tile override set given for it): the first
forward+backward call of recc and of the anchor (wall seconds, compile and autotune included;
the process starts with empty Triton and recc caches, so the first op pays for its kernels'
compilation, later ops for theirs), then the GPU time of every kernel in one forward and in one
forward+backward (torch.profiler, mean of --n steps), side by side with the anchor's kernels,
and the whole step timed by `do_bench` (median). Times are us per call unless marked ms.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

if "TRITON_CACHE_DIR" not in os.environ and "--keep-cache" not in sys.argv:
    _tmp = tempfile.mkdtemp(prefix="kernel_times_")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(_tmp, "triton")
    os.environ["RECC_CACHE_DIR"] = os.path.join(_tmp, "recc")

import torch  # noqa: E402

import bench  # noqa: E402


def parse_tiles(text: str) -> dict:
    """"delta_rule:BT=64,h_BV=32;gla:BT=64" -> {"delta_rule": [{"BT": 64, "h_BV": 32}], ...}."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        op, _, kvs = part.partition(":")
        out.setdefault(op, []).append({k: int(v) for k, v in (kv.split("=") for kv in kvs.split(","))})
    return out


def _device_us(e) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(e, name):
            return float(getattr(e, name))
    return 0.0


def kernel_table(step, n: int) -> dict:
    """{kernel name: (us per step, launches per step)} of `step()` over n profiled steps."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    table = {}
    for e in prof.key_averages():
        us = _device_us(e)
        if us > 0 and not e.key.startswith(("aten::", "autograd::", "Activity Buffer")):
            table[e.key] = (us / n, e.count / n)
    return table


def print_tables(title: str, tables: dict) -> None:
    """tables: {side: {kernel: (us, count)}}: each side's kernels, longest first, and totals."""
    print(f"\n--- {title}")
    for side, table in tables.items():
        total = sum(us for us, _ in table.values())
        print(f"  {side}: kernels total {total:9.1f} us")
        for name, (us, count) in sorted(table.items(), key=lambda kv: -kv[1][0]):
            print(f"    {us:9.1f} us  x{count:4.1f}  {name[:110]}")


def first_call_s(fn, leaves) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    for x in leaves:
        x.grad = None
    return time.perf_counter() - start


def run(case, T: int, tiles: dict | None, n: int, warmup: int, rep: int, with_anchor: bool) -> None:
    sizes = case.sizes(T)
    args = bench.recc_args(case, sizes, "cuda")
    op = bench.recc_op(case)
    op.module._TILES.clear()           # the module's tile overrides (what `recc check --tune` sets)
    op.module._TILES.update(tiles or {})
    leaves = [a.detach().clone().requires_grad_() for a in args]
    label = f"recc {case.spec}" + (f" {tiles}" if tiles else " (solver tiles)")
    fwd = lambda: bench.first_output(op(*leaves))
    sides = {label: (fwd, leaves)}
    first = {label: first_call_s(fwd, leaves)}
    if with_anchor:
        anchor = case.make_anchor(args, sizes)
        sides[case.anchor] = (anchor.fn, anchor.leaves)
        first[case.anchor] = first_call_s(anchor.fn, anchor.leaves)
    print(f"\n===== {case.op} T={T} " + ", ".join(f"{k}: first fwd+bwd {v:.2f} s" for k, v in first.items()),
          flush=True)
    fwd_tables, all_tables = {}, {}
    for side, (fn, ls) in sides.items():
        with torch.no_grad():
            fwd_tables[side] = kernel_table(fn, n)
        out = fn()
        dy = torch.randn_like(out)

        def step(fn=fn, ls=ls, dy=dy):
            for x in ls:
                x.grad = None
            fn().backward(dy)
        all_tables[side] = kernel_table(step, n)
        t_fwd, t_all = bench.time_pair(fn, ls, warmup, rep)
        print(f"  {side}: do_bench fwd {t_fwd:.3f} ms, fwd+bwd {t_all:.3f} ms", flush=True)
    print_tables(f"{case.op} T={T} forward", fwd_tables)
    print_tables(f"{case.op} T={T} forward+backward", all_tables)
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", default="delta_rule")
    p.add_argument("--T", default="4096")
    p.add_argument("--tiles", default="", help='extra recc runs with tile overrides: "op:BT=64,h_BV=32;op:..."')
    p.add_argument("--no-solver", action="store_true", help="only the --tiles runs, not the solver's tiles")
    p.add_argument("--no-anchor", action="store_true")
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--warmup", type=int, default=25)
    p.add_argument("--rep", type=int, default=100)
    p.add_argument("--keep-cache", action="store_true", help="use the environment's Triton cache")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("kernel_times.py: no GPU, nothing to do")
        return 0
    torch.ones(1024, 1024, device="cuda") @ torch.ones(1024, 1024, device="cuda")   # context up
    extra = parse_tiles(a.tiles)
    cases = {c.op: c for c in bench.CASES if c.strategy == "chunked"}
    for T in (int(t) for t in a.T.split(",")):
        for name in a.ops.split(","):
            case = cases[name]
            runs = ([] if a.no_solver else [None]) + extra.get(name, [])
            for i, tiles in enumerate(runs):
                try:
                    run(case, T, tiles, a.n, a.warmup, a.rep, with_anchor=not a.no_anchor and i == 0)
                except Exception as e:  # noqa: BLE001
                    print(f"  {name} {tiles}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
