#!/usr/bin/env python3
"""How long the tile stage takes: every spec's kernel families, on the H100 and interpreter models.

    python benchmarks/solver_time.py [--runs 50] [--json out.json]

Per (spec, family, model): the median over `--runs` calls of `choose_tiles` with its
problem already built for these constants (`solve`), with the problem built again from the
constraint text's parse tree (`new shape`: what the first call for a new shape pays; the
tree is parsed once per process), and with the text parsed again too (`cold`); search
nodes; the chosen point. The last lines are the per-spec totals of `tiles_for_spec`
(median; new shape, and cold), the figures the < 50 ms budget is about. Runs on the CPU;
no GPU needed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recc.check import load  # noqa: E402
from recc.hardware import H100, INTERPRETER  # noqa: E402
from recc.solver.text import _tree  # noqa: E402
from recc.tiles import TilesInfeasible, _parsed, choose_tiles, families_of, tiles_for_spec  # noqa: E402


def median_ms(fn, runs: int, cold: bool = False, text: bool = False) -> float:
    times = []
    for _ in range(runs):
        if cold:
            _parsed.cache_clear()
        if text:
            _tree.cache_clear()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    args = p.parse_args(argv)
    choose_tiles("scan", {}, H100)  # build the text parser once (lark), as any process does on first use
    rows, totals = [], []
    for path in sorted((ROOT / "specs").glob("*.rec")):
        rec = load(path)
        for hw in (H100, INTERPRETER):
            for family, (dims, shape) in families_of(rec).items():
                call = lambda: choose_tiles(family, dims, hw, **shape)
                try:
                    t = call()
                    point, nodes = ", ".join(f"{k}={v}" for k, v in t.assignment.items()), t.solution.nodes
                except TilesInfeasible as error:
                    point, nodes = "infeasible: " + ", ".join(error.labels), 0
                rows.append({"spec": rec.name, "family": family, "model": hw.name, "nodes": nodes, "point": point,
                             "solve_ms": median_ms(call, args.runs),
                             "new_shape_ms": median_ms(call, args.runs, cold=True),
                             "cold_ms": median_ms(call, args.runs, cold=True, text=True)})
            totals.append({"spec": rec.name, "model": hw.name,
                           "ms": median_ms(lambda: tiles_for_spec(rec, hw), args.runs, cold=True),
                           "cold_ms": median_ms(lambda: tiles_for_spec(rec, hw), args.runs, cold=True, text=True)})
    print(f"{'spec':<16}{'family':<11}{'model':<13}{'solve ms':>9}{'new shape':>11}{'cold':>8}{'nodes':>7}  point")
    for r in rows:
        print(f"{r['spec']:<16}{r['family']:<11}{r['model']:<13}{r['solve_ms']:>9.2f}{r['new_shape_ms']:>11.2f}"
              f"{r['cold_ms']:>8.2f}{r['nodes']:>7}  {r['point']}")
    for key, what in (("ms", "a new shape"), ("cold_ms", "cold: the constraint text parsed too")):
        worst = max(totals, key=lambda t: t[key])
        print(f"per spec (tiles_for_spec, {what}; median of {args.runs}): "
              f"max {worst[key]:.1f} ms ({worst['spec']}, {worst['model']}), "
              f"median {statistics.median(t[key] for t in totals):.1f} ms over {len(totals)} (spec, model) pairs")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "per_spec": totals}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
