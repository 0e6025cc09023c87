#!/usr/bin/env python3
"""The tile cost model against a tile sweep: where the solver's pick loses time, and a grid fit.

    python benchmarks/calibrate.py benchmarks/results/2026-12-03-h200-sweep-delta_net.json
    python benchmarks/calibrate.py SWEEP.json [SWEEP.json ...] --fit   # grid over the Code parameters
    python benchmarks/calibrate.py SWEEP.json --fit --fit-choice       # scored by the solver's whole choice

Reads the rows of `tile_sweep.py` (every kernel point timed alone, at each value of the shared
variables). For each kernel and shared point it compares the model's pick among the measured
feasible points (today's constraints) with the measured fastest: the time the pick loses, summed
over kernels, is `excess` (as a share of the fastest kernels' sum). It also prices the solver's
whole choice at the sweep's shape with the measured times (when each of its kernel points was
timed) against the fastest measured combination, and names any of its kernel points the sweep
recorded as failed (a GPU fault, or results off the reference point). `--fit` searches a grid of the `Code` parameters
of each cost model (recc/tiles.py CODE) for the smallest excess over all the sweeps given that use
it (e.g. simple GLA's and mLSTM's together, both `chunked`): a starting point for a
recalibration, to be checked on the GPU (and pinned in tests/test_tiles.py) before it is kept.
No GPU needed.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import recc  # noqa: E402
from recc import tiles as rt  # noqa: E402
from recc.hardware import PRESETS  # noqa: E402

GRID = {"cpi": (0.25, 0.5, 1.0, 2.0), "move_ops": (3.0, 6.0, 12.0), "warp_cycles": (0.0, 100.0, 200.0, 400.0),
        "load_wait": (1.0, 4.0, 8.0), "reg_comfort": (96.0, 160.0)}


def model_of(name: str):
    name = name.lower()
    for key, hw in PRESETS.items():
        if key != "interpreter" and key in name:
            return hw
    raise SystemExit(f"calibrate.py: no hardware preset for {name!r} (presets: {', '.join(PRESETS)})")


class Sweep:
    """One op's measured kernel points, grouped by kernel and shared values."""

    def __init__(self, row: dict):
        self.row, self.op = row, row["op"]
        # the launch shape the op's host code renders (its module's _LAUNCH_SHAPE)
        self.shape = rt.launch_shape(recc.load_spec(ROOT / "specs" / f"{self.op}.rec"), "chunked")[1]
        self.hw = model_of(row["hardware_model"])
        self.dims = {k: v for k, v in row["sizes"].items() if k in ("B", "T", "H", "K", "V")}
        self.dims["T"] = rt._pow2(self.dims["T"])
        self.points = [p for p in row["points"] if p.get("ms") is not None]
        self.code = rt.chunked_code(self.shape["householder"], self.shape["per_key"], self.shape["normaliser"])

    def setup(self):
        problem, terms, _, _, _ = rt._setup("chunked", self.dims, self.hw, self.shape)
        return problem, {t.name: t for t in terms}

    def groups(self, problem, terms) -> dict:
        """{(kernel, shared values): [(ms, point)]} of the points today's constraints allow."""
        out = collections.defaultdict(list)
        for p in self.points:
            t = terms.get(p["kernel"])
            if t is None:
                continue
            pt = {v: p["point"][v] for v in t.variables}
            if not all(c.holds(pt) for c in problem.constraints if all(v.name in pt for v in c.variables())):
                continue
            out[(p["kernel"], tuple((k, v) for k, v in pt.items() if "_" not in k))].append((p["ms"], pt))
        return out

    def excess(self, detail: bool = False) -> float:
        lost, fastest = self.excess_ms(detail)
        return lost / fastest if fastest else 0.0

    def excess_ms(self, detail: bool = False) -> tuple:
        """(ms the model's pick per kernel and shared values loses to the fastest, the fastest's sum)."""
        problem, terms = self.setup()
        lost = fastest = 0.0
        for (kernel, shared), pts in sorted(self.groups(problem, terms).items()):
            best = min(pts, key=lambda x: x[0])
            pick = min(pts, key=lambda x: terms[kernel].cost(x[1]))
            lost += pick[0] - best[0]
            fastest += best[0]
            if detail:
                own = lambda pt: " ".join(f"{k.split('_', 1)[1]}={v}" for k, v in pt.items() if "_" in k)
                flag = "  <-" if pick[0] > 1.1 * best[0] else ""
                print(f"  {kernel:4s} {dict(shared)}: fastest {best[0]:.3f} ms ({own(best[1])}), "
                      f"model's pick {pick[0]:.3f} ({own(pick[1])}) x{pick[0] / best[0]:.2f}{flag}")
        return lost, fastest

    def tiles(self):
        """The solver's choice at the sweep's shape, with today's constraints and CODE."""
        return rt.choose_tiles("chunked", self.dims, self.hw, **self.shape)

    def fastest_sum(self) -> float | None:
        """The fastest measured combination's kernel sum (ms): the best shared point whose kernels
        were all timed; None when none was."""
        return min((g["kernel_sum_ms"] for g in self.row.get("per_shared", []) if g.get("all_timed")), default=None)

    @staticmethod
    def launches(t, record: dict) -> bool:
        """Whether the choice `t` launches a recorded kernel point: it agrees with every value the
        record holds, its kernel's variables and any coupled ones the sweep grouped it by (dqk's
        points of per-key decays carry dv_BV, whose dA blocks they sum)."""
        return all(t.assignment.get(k) == v for k, v in record["point"].items())

    def solver_choice(self, t=None) -> tuple:
        """(the solver's point, its measured kernel sum or None, {kernel: ms or None}); `t`: the
        solver's choice when the caller has it (`tiles()`)."""
        t = t or self.tiles()
        parts = {term.name: next((p["ms"] for p in self.points if p["kernel"] == term.name and self.launches(t, p)),
                                 None)
                 for term in t.terms}
        total = sum(parts.values()) if all(v is not None for v in parts.values()) else None
        return t.assignment, total, parts

    def failed_in_choice(self, t=None) -> list:
        """The sweep's failed kernel points (a fault, or results off the reference point) that the
        solver's choice (`t`, or `tiles()`) would launch: [(kernel, point, why)]."""
        t = t or self.tiles()
        mine = {term.name for term in t.terms}
        return [(f["kernel"], f["point"], f.get("failed", "")) for f in self.row.get("failed", [])
                if f["kernel"] in mine and self.launches(t, f)]


def report(sweep: Sweep) -> None:
    code = sweep.code
    print(f"== {sweep.op}: {len(sweep.points)} timed kernel points, model {sweep.hw.name}, CODE[{code!r}] = "
          f"{rt.CODE[code]}")
    share = sweep.excess(detail=True)
    print(f"  the model's picks lose {100 * share:.1f}% of the fastest kernels' sum")
    t = sweep.tiles()
    point, total, parts = sweep.solver_choice(t)
    best = sweep.fastest_sum()
    print("  solver: " + " ".join(f"{k}={v}" for k, v in point.items()))
    print("  measured: " + " ".join(f"{k}={'-' if v is None else f'{v:.3f}'}" for k, v in parts.items()))
    if total is not None and best is not None:
        print(f"  solver's kernels {total:.3f} ms, fastest measured combination {best:.3f} ms: x{total / best:.3f}")
    else:
        print("  solver's point not all timed in this sweep (a point of a shared value the sweep left out?)")
    for kernel, pt, why in sweep.failed_in_choice(t):
        print(f"  FAILED in the sweep, and in the solver's choice: {kernel} {pt}: {why}")


def choice_ms(sweep: Sweep) -> tuple:
    """(the solver's whole choice priced with the measured times, the fastest measured combination):
    a choice with a kernel point the sweep did not time costs infinity."""
    _, total, _ = sweep.solver_choice()
    return (total if total is not None else float("inf")), sweep.fastest_sum()


def _share(parts: list) -> float:
    """Time lost over the fastest, summed over (lost, fastest) pairs."""
    fastest = sum(p[1] for p in parts)
    return sum(p[0] for p in parts) / fastest if fastest else 0.0


def fit(sweeps: list, top: int, choice: bool = False, leave_out: bool = False) -> None:
    """Grid search of one Code entry against every sweep that uses it: the score is the time the
    model's picks lose summed over the sweeps, over their fastest kernels' sum; with `choice`, the
    time the solver's whole choice (shared values included) loses to the fastest combination.
    `leave_out`: for each op, the constants fit on the other ops' sweeps alone, scored on its own
    (how the fit does on an op it has not seen)."""
    code = sweeps[0].code
    base = rt.CODE[code]
    results = []
    try:
        for values in itertools.product(*GRID.values()):
            rt.CODE[code] = dataclasses.replace(base, **dict(zip(GRID, values)))
            rt._rates.cache_clear()
            if choice:   # sweeps with no fully timed combination have nothing to score against
                parts = [(t - f, f) if f is not None else None for t, f in map(choice_ms, sweeps)]
            else:
                parts = [s.excess_ms() for s in sweeps]
            results.append((parts, dict(zip(GRID, values))))
    finally:
        rt.CODE[code] = base
        rt._rates.cache_clear()
    score = lambda r, keep=lambda i: True: _share([p for i, p in enumerate(r[0]) if p is not None and keep(i)])
    each = lambda r: " ".join(f"{100 * p[0] / p[1]:.1f}%" if p else "-" for p in r[0])
    results.sort(key=score)
    ops = ", ".join(s.op for s in sweeps)
    print(f"grid fit of CODE[{code!r}] over {ops} ({len(results)} points), best first:")
    for r in results[:top]:
        print(f"  lose {100 * score(r):5.1f}% ({each(r)})  " + " ".join(f"{k}={v}" for k, v in r[1].items()))
    for op in dict.fromkeys(s.op for s in sweeps) if leave_out else ():
        mine = {i for i, s in enumerate(sweeps) if s.op == op}
        if len(mine) == len(sweeps):
            continue
        r = min(results, key=lambda r: score(r, lambda i: i not in mine))
        print(f"  {op} left out: fit on the others loses {100 * score(r, lambda i: i not in mine):.1f}% there, "
              f"{100 * score(r, lambda i: i in mine):.1f}% on {op} ({each(r)})  "
              + " ".join(f"{k}={v}" for k, v in r[1].items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweeps", nargs="+", help="tile_sweep.py JSON files")
    p.add_argument("--fit", action="store_true", help="grid search of the op's Code parameters")
    p.add_argument("--fit-choice", action="store_true",
                   help="with --fit: score the solver's whole choice (shared values too) priced with the "
                        "measured times, not each kernel's pick at each shared point")
    p.add_argument("--leave-out", action="store_true",
                   help="with --fit: also fit without each op's sweeps and score the fit on them")
    p.add_argument("--top", type=int, default=5)
    a = p.parse_args(argv)
    by_code = collections.defaultdict(list)       # the sweeps of each Code entry, fit together
    for path in a.sweeps:
        for row in json.loads(Path(path).read_text())["rows"]:
            if row.get("family") != "chunked":
                print(f"== {row.get('op')}: family {row.get('family')}: only chunked rows are read")
                continue
            if not any(p.get("ms") is not None for p in row.get("points", [])):
                print(f"== {row.get('op')}: no timed kernel point")
                continue
            sweep = Sweep(row)
            report(sweep)
            by_code[sweep.code].append(sweep)
    if a.fit:
        for sweeps in by_code.values():
            fit(sweeps, a.top, a.fit_choice, a.leave_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
