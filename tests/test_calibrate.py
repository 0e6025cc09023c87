"""benchmarks/calibrate.py on a recorded sweep: the cost model's choice against measured times."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import calibrate  # noqa: E402
import pytest  # noqa: E402

SWEEP = ROOT / "benchmarks" / "results" / "2026-12-03-h200-sweep-delta_net.json"


def rows(name: str) -> dict:
    path = ROOT / "benchmarks" / "results" / f"2026-12-03-h200-{name}.json"
    return {row["op"]: row for row in json.loads(path.read_text())["rows"]}


@pytest.mark.parametrize("sweep_name, op", [("sweep-delta_net", "delta_net"),
                                            ("sweep-gated_delta_net", "gated_delta_net"),
                                            ("sweep-delta_product-mlstm", "delta_product"),
                                            ("sweep-s6-a", "gated_delta_net"),
                                            ("s8-sweep-gated_delta_net", "gated_delta_net")])
def test_solver_within_10_percent_of_the_h200_householder_sweeps(sweep_name, op):
    """Issue #6's bar on the recorded H200 sweeps (every kernel point at BT = 16, 32; the later sweep of
    gated DeltaNet, sweep-s6-a, adds BT = 64, where the UT transform's kernels run 3.5x / 2x slower;
    s8-sweep-gated_delta_net times every feasible point of today's UT transform, bf16 W and U): the
    solver's kernels, priced with the measured times, within 10% of the fastest measured combination
    (DeltaNet +9.2%, gated DeltaNet +3.8% / +2.2% / +1.4%, DeltaProduct +2.7%, with the constants fit
    to all five; the constants fit to DeltaNet's alone: +7.7%, +8.1% / +5.9% / +5.0%, +4.2%), and none
    of its kernel points one that failed there."""
    row = rows(sweep_name)[op]
    sweep = calibrate.Sweep(row)
    point, total, parts = sweep.solver_choice()
    best = sweep.fastest_sum()
    assert point["BT"] == 32 and total is not None and not sweep.failed_in_choice(), parts
    assert total <= 1.10 * best, (total, best, parts)


@pytest.mark.parametrize("sweep_name, op, BT", [("sweep-s6-a", "simple_gla", 64), ("sweep-s6-c", "mlstm", 64),
                                              ("s7-sweep-gla", "gla", 32)])
def test_solver_within_10_percent_of_the_h200_exhaustive_sweeps(sweep_name, op, BT):
    """Issue #6's bar on the exhaustive H200 sweeps of simple GLA (CODE['chunked']), mLSTM
    (CODE['chunked_norm']) and GLA (CODE['chunked_key'], with the split diagonal blocks), every feasible
    kernel point timed, none failed: the solver's kernels, priced with the measured times, within 10% of
    the fastest measured combination (1.051x, 1.089x, 1.083x; the constants before these fits: 1.315x,
    2.096x, 1.47x; for GLA, before dqk's registers and shared memory followed ptxas, no constants of the
    grid did better than 1.157x). Fit on these sweeps (in sample). GLA's dqk points carry the dv_BV they
    were timed with (their dA sums dv's V blocks): the lookup matches it."""
    row = rows(sweep_name)[op]
    sweep = calibrate.Sweep(row)
    assert row["timed"]["failed_kernel_points"] == 0 and not row["cut"]["untimed_points"] and row["exhaustive"]
    point, total, parts = sweep.solver_choice()
    best = sweep.fastest_sum()
    assert point["BT"] == BT and total is not None and not sweep.failed_in_choice(), parts
    assert total <= 1.10 * best, (total, best, parts)


def test_scan_solver_is_the_fastest_point_of_the_h200_sweep():
    """Issue #6's bar for the scan (first_order fp32, B=4 T=4096 H=16 D=128): every feasible point timed on
    the H200 (62 kernel points, none failed; session 8, the first full sweep since its out-of-memory fix).
    The solver, run now with the H200 model, picks the fastest measured forward and backward points."""
    row = rows("s8-sweep-scan")["scan"]
    assert row["exhaustive"] and row["timed"]["failed_kernel_points"] == 0 and row["timed"]["kernel_points"] == 62
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import tile_sweep
    op = tile_sweep.Op("scan", "cpu", tile_sweep.MAIN["scan"], model="h200")
    assert op.solver == row["best_kernel_sum"], (op.solver, row["best_kernel_sum"])


def test_earlier_scalar_constants_lost_a_third(monkeypatch):
    """Why they were refit: the earlier scalar-decay constants priced on the same sweeps lose 31% / 110%
    (8 warps on [128, 32] state tiles, 2 pipeline stages where 3 ran faster)."""
    earlier = calibrate.rt.Code(cpi=2.0, move_ops=12.0, reg_comfort=96.0)
    for name, op, code in (("sweep-s6-a", "simple_gla", "chunked"), ("sweep-s6-c", "mlstm", "chunked_norm")):
        monkeypatch.setitem(calibrate.rt.CODE, code, earlier)
        calibrate.rt._rates.cache_clear()
        row = rows(name)[op]
        sweep = calibrate.Sweep(row)
        _, total, _ = sweep.solver_choice()
        best = sweep.fastest_sum()
        assert total > 1.3 * best, (op, total, best)
    calibrate.rt._rates.cache_clear()


def test_report_and_fit_run(capsys, monkeypatch):
    calibrate.main([str(SWEEP)])
    out = capsys.readouterr().out
    assert "solver's kernels" in out and "fastest measured combination" in out
    monkeypatch.setattr(calibrate, "GRID", {"cpi": (0.25,), "move_ops": (6.0,), "warp_cycles": (200.0,),
                                           "load_wait": (1.0, 8.0)})
    calibrate.main([str(SWEEP), "--fit", "--top", "2"])
    out = capsys.readouterr().out
    assert "grid fit of CODE['chunked_householder'] over delta_net (2 points)" in out


def test_fit_by_the_solvers_choice(capsys, monkeypatch):
    monkeypatch.setattr(calibrate, "GRID", {"cpi": (1.0, 2.0), "move_ops": (12.0,), "warp_cycles": (0.0,),
                                           "load_wait": (4.0,), "reg_comfort": (96.0,)})
    calibrate.main([str(ROOT / "benchmarks" / "results" / "2026-12-03-h200-s7-sweep-gla.json"), "--fit",
                    "--fit-choice", "--top", "2"])
    out = capsys.readouterr().out.splitlines()
    head = out.index("grid fit of CODE['chunked_key'] over gla (2 points), best first:")
    best, second = out[head + 1], out[head + 2]
    assert "cpi=1.0" in best and "lose   8.3%" in best and "cpi=2.0" in second, out[head:]


def test_fit_leaving_each_op_out(capsys, monkeypatch):
    """--leave-out: for each op, the constants fit on the other ops' sweeps alone, scored on its own:
    two grid points, so the line names the one the other sweeps choose and its loss on the op left out."""
    monkeypatch.setattr(calibrate, "GRID", {"cpi": (0.25,), "move_ops": (3.0, 6.0), "warp_cycles": (0.0,),
                                           "load_wait": (4.0,), "reg_comfort": (160.0,)})
    results = ROOT / "benchmarks" / "results"
    calibrate.main([str(SWEEP), str(results / "2026-12-03-h200-s8-sweep-gated_delta_net.json"),
                    "--fit", "--fit-choice", "--leave-out", "--top", "2"])
    out = capsys.readouterr().out.splitlines()
    left = [line for line in out if " left out: fit on the others loses " in line]
    assert [line.split()[0] for line in left] == ["delta_net", "gated_delta_net"], out
    assert all("move_ops=" in line and "% on " in line for line in left)
