"""benchmarks/tile_sweep.py's dry run (CPU interpreter, tiny shapes, 2 points per kernel): the whole
pipeline (plan from the constraint problem, compile task, per-kernel replay timing, the checks against
the solver's point, end-to-end timing, the JSON) on the scan and one chunked spec, with a wrong kernel
point injected: it must be marked failed and never be the best."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import tile_sweep  # noqa: E402


def test_dry_run_marks_a_wrong_point(tmp_path, monkeypatch):
    run = tile_sweep.Op.run

    def wrong_dv(self, assignment):          # dv at 2 stages computes garbage
        got = run(self, assignment)
        if assignment.get("dv_stages") == 2:
            got = [(n, v * 1.5) for n, v in got]
        return got

    monkeypatch.setattr(tile_sweep.Op, "run", wrong_dv)
    out = tmp_path / "sweep.json"
    assert tile_sweep.main(["--dry-run", "--ops", "scan,simple_gla", "--out", str(out)]) == 0
    rows = {r["op"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"scan", "simple_gla"}
    for r in rows.values():
        assert not r["exhaustive"]                        # the dry run times 2 points per kernel
        assert r["feasible"]["kernel_points_total"] > r["timed"]["kernel_points"] > len(r["solver_kernels_ms"])
        assert r["ratio_fwd_bwd"] >= 1.0 and r["ratio_kernel_sum"] > 0
        assert r["best"] is not None and set(r["best"]) == set(r["solver"])
    assert rows["scan"]["failed"] == []
    failed = rows["simple_gla"]["failed"]
    assert [f["kernel"] for f in failed] == ["dv"] and failed[0]["point"]["dv_stages"] == 2
    assert "mismatch" in failed[0]["failed"]
    assert rows["simple_gla"]["best"]["dv_stages"] != 2
    timed = [p for p in rows["simple_gla"]["points"] if p["ms"] is not None]
    assert {p["kernel"] for p in timed} == {"h", "o", "dv", "dh", "dqk"}
    assert all(p["point"].get("dv_stages") != 2 for p in timed)
    # a second part over other shared values, merged into one row per op
    part = tmp_path / "part.json"
    assert tile_sweep.main(["--dry-run", "--ops", "simple_gla", "--shared", "simple_gla:BT=32", "--max-points", "1",
                            "--out", str(part)]) == 0
    merged = tmp_path / "merged.json"
    assert tile_sweep.main(["--merge", str(out), str(part), "--out", str(merged)]) == 0
    rows2 = {r["op"]: r for r in json.loads(merged.read_text())["rows"]}
    other = json.loads(part.read_text())["rows"][0]
    assert rows2["simple_gla"]["shared_selected"] == [{"BT": 16, "BKS": 16}, {"BT": 32, "BKS": 16}]
    assert len(rows2["simple_gla"]["points"]) > len(rows["simple_gla"]["points"]) > 0
    assert len(rows2["simple_gla"]["parts"]) == 2 and not rows2["simple_gla"]["exhaustive"]
    assert rows2["simple_gla"]["ratio_fwd_bwd"] == max(rows["simple_gla"]["ratio_fwd_bwd"], other["ratio_fwd_bwd"])
    assert rows2["scan"]["points"] == rows["scan"]["points"]
