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
                                            ("sweep-delta_product-mlstm", "delta_product")])
def test_solver_within_10_percent_of_the_h200_householder_sweeps(sweep_name, op):
    """Issue #6's bar on the recorded H200 sweeps (every kernel point at BT = 16, 32; BT = 64 is
    infeasible on a GPU, constraint hh_chunk_gpu): the solver's kernels, priced with the measured
    times, within 10% of the fastest measured combination (DeltaNet +5.9%, gated DeltaNet +5.9%,
    DeltaProduct +4.2%)."""
    row = rows(sweep_name)[op]
    sweep = calibrate.Sweep(row)
    point, total, parts = sweep.solver_choice()
    best = min(g["kernel_sum_ms"] for g in row["per_shared"] if g["all_timed"])
    assert point["BT"] == 32 and total is not None
    assert total <= 1.10 * best, (total, best, parts)


def test_scalar_decay_candidate_against_the_h200_sweeps(monkeypatch):
    """The scalar-decay kernels' constants against the partial H200 sweeps of simple GLA and mLSTM
    (both cut short by GPU crashes): per kernel and shared point, the model's pick loses 44% / 65% of
    the fastest measured time with CODE['chunked'], at most 16% with SCALAR_CANDIDATE (kept out of use
    until a full sweep confirms its points: its o point mismatched once on the H200)."""
    sweeps = [calibrate.Sweep(rows("sweep-simple_gla-crashed")["simple_gla"]),
              calibrate.Sweep(rows("sweep-delta_product-mlstm")["mlstm"])]
    current = [s.excess_ms() for s in sweeps]
    assert all(x > 0.4 * f for x, f in current), current
    assert not any(s.failed_in_choice() for s in sweeps)
    monkeypatch.setitem(calibrate.rt.CODE, "chunked", calibrate.rt.SCALAR_CANDIDATE)
    calibrate.rt._rates.cache_clear()
    lost = [s.excess_ms() for s in sweeps]
    assert all(x <= 0.16 * f for x, f in lost), lost
    # why it is not in use: mLSTM's sweep recorded the candidate's o point as computing a wrong di
    failed = sweeps[1].failed_in_choice()
    assert [(k, pt["o_BV"], pt["o_warps"], pt["o_stages"]) for k, pt, _ in failed] == [("o", 128, 4, 2)], failed
    assert "mismatch" in failed[0][2]


def test_report_and_fit_run(capsys, monkeypatch):
    calibrate.main([str(SWEEP)])
    out = capsys.readouterr().out
    assert "solver's kernels" in out and "fastest measured combination" in out
    monkeypatch.setattr(calibrate, "GRID", {"cpi": (0.25,), "move_ops": (6.0,), "warp_cycles": (200.0,),
                                           "load_wait": (1.0, 8.0)})
    calibrate.main([str(SWEEP), "--fit", "--top", "2"])
    out = capsys.readouterr().out
    assert "grid fit of CODE['chunked_householder'] over delta_net (2 points)" in out
