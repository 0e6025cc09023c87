#!/usr/bin/env python3
"""Every launch point of chunk_fwd_ho (the forward of a call that needs no gradient), timed on the GPU.

    python benchmarks/ho_sweep.py --configs gated_delta_rule:32,simple_gla:64 --T 8192 --out sweep-ho.json

For each op (bench.py's CASES) and chunk length BT: every (ho_BV, ho_warps, ho_stages) of --bv, --warps,
--stages; per point the GPU time of each kernel of one no-gradient forward (torch.profiler, mean of --n
calls), the whole forward by `do_bench` (median), and its output's relative error against the training
path's forward at the same chunk length (which the checks hold to the float64 reference); a point that
fails to compile or run is recorded with its error. The solver's own choice (no overrides) is timed first.
B=4, H=16, K=V=128, bf16. JSON rows: op, BT, point, kernels_us, fwd_ms, rel_err, feasible (the
solver's constraints hold), model_us (the cost model's ho term).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

if "TRITON_CACHE_DIR" not in os.environ:
    _tmp = tempfile.mkdtemp(prefix="ho_sweep_")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(_tmp, "triton")
    os.environ["RECC_CACHE_DIR"] = os.path.join(_tmp, "recc")

import torch  # noqa: E402

import bench  # noqa: E402
from kernel_times import kernel_table  # noqa: E402


def model(case, T: int, tiles: dict) -> tuple:
    """(constraints hold, the ho term's estimate in us) at this point, on the device's model."""
    import recc
    from recc import tiles as rt
    rec = recc.load_spec(ROOT / "specs" / f"{case.spec}.rec")
    dims, shape = rt.launch_shape(rec, "chunked")
    problem, terms, *_ = rt._setup("chunked", dict(B=4, T=T, H=16, K=128, V=128), rt._device_model("cuda"),
                                   {**shape, "inference": True})
    point = dict(rt.choose_tiles("chunked", dict(B=4, T=T, H=16, K=128, V=128), rt._device_model("cuda"),
                                 **shape, inference=True).assignment)
    point.update(tiles)
    ok = all(c.holds(point) for c in problem.constraints)
    ho = next(t for t in terms if t.name == "ho")
    return ok, ho.cost(point) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="gated_delta_rule:32", help="op:BT,... (ops: bench.py's chunked CASES)")
    p.add_argument("--T", type=int, default=8192)
    p.add_argument("--bv", default="32,64,128")
    p.add_argument("--warps", default="2,4,8")
    p.add_argument("--stages", default="2,3")
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--rep", type=int, default=30)
    p.add_argument("--budget", type=float, default=400, help="seconds: stop starting new points past this")
    p.add_argument("--out", default="ho_sweep.json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("ho_sweep.py: no GPU, nothing to do")
        return 0
    start = time.time()
    cases = {c.op: c for c in bench.CASES if c.strategy == "chunked"}
    rows = []
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "T": a.T,
            "command": "ho_sweep.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    import triton
    meta["triton"] = triton.__version__

    def save():
        Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    for cfg in a.configs.split(","):
        name, bt = cfg.split(":")
        case, BT = cases[name], int(bt)
        sizes = case.sizes(a.T)
        args = bench.recc_args(case, sizes, "cuda")
        op = bench.recc_op(case)
        tiles_of = op.module._TILES
        tiles_of.clear()
        tiles_of.update(BT=BT)
        with torch.enable_grad():   # the training path's forward at this BT: what each point must match
            leaves = [x.detach().clone().requires_grad_() for x in args]
            want = bench.first_output(op(*leaves)).detach().float()
        points = [None] + [dict(BT=BT, ho_BV=bv, ho_warps=w, ho_stages=s) for bv in map(int, a.bv.split(","))
                           for w in map(int, a.warps.split(",")) for s in map(int, a.stages.split(","))]
        for point in points:
            if time.time() - start > a.budget:
                print(f"budget of {a.budget} s spent: stopping", flush=True)
                save()
                return 0
            tiles_of.clear()
            tiles_of.update(point or {})
            row = {"op": name, "BT": BT, "point": point or "solver"}
            try:
                ok, est = model(case, a.T, point or {})
                row.update(feasible=ok, model_us=est)
            except Exception as e:  # noqa: BLE001
                row.update(model_error=f"{type(e).__name__}: {str(e)[:200]}")
            try:
                fwd = lambda: bench.first_output(op(*args))
                with torch.no_grad():
                    got = fwd().float()
                    row["rel_err"] = ((got - want).norm() / want.norm()).item()
                    table = kernel_table(fwd, a.n)
                    row["fwd_ms"] = bench.bench_ms(fwd, 10, a.rep)
                row["kernels_us"] = {k: us for k, (us, _) in table.items()}
                row["tiles"] = dict(op.module._LAUNCHED[next(reversed(op.module._LAUNCHED))])
                ho = next((us for k, us in row["kernels_us"].items() if k.endswith("chunk_fwd_ho_kernel")), None)
                print(f"{name:18s} BT={BT:3d} {str(point or 'solver'):60s} ho {ho or 0:8.1f} us  fwd {row['fwd_ms']:.3f} ms"
                      f"  err {row['rel_err']:.1e}  model {row.get('model_us', 0):8.1f} us", flush=True)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                print(f"{name:18s} BT={BT:3d} {str(point):60s} failed: {row['error'][:120]}", flush=True)
            rows.append(row)
            torch.cuda.empty_cache()
        save()
    save()
    print(f"total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
