"""benchmarks/tile_sweep.py's dry run (CPU interpreter, tiny shapes, 2 points per kernel): the whole
pipeline (plan from the constraint problem, compile task, per-kernel replay timing, the checks against
the solver's point, end-to-end timing, the JSON) on the scan and one chunked spec, with a wrong kernel
point injected: it must be marked failed and never be the best."""
import json
import sys
from pathlib import Path

import pytest

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


# ---- a point that breaks the CUDA context (sticky: every later CUDA call of the process fails) ----
# RECC_SWEEP_CRASH (tile_sweep's hook for tests) makes a run holding the given values raise CUDA's
# illegal-address error, and every later run, replay and end-to-end call of that process too.

def test_dry_run_crash_caught_in_a_worker(tmp_path, monkeypatch):
    """The crash is met in a compile worker (--jobs 2: spawned processes, as on a GPU, the timing in a
    spawned process too): the run is retried point by point in fresh processes, the guilty point is
    named under `crashed` and never run by the timing process (which RECC_SWEEP_CRASH, inherited,
    would have crashed: no crash of it is listed, no restart), the other points are timed."""
    monkeypatch.setenv("RECC_SWEEP_CRASH", "o_stages=2")
    monkeypatch.setattr(tile_sweep, "_SIMULATED", {})
    out = tmp_path / "sweep.json"
    assert tile_sweep.main(["--dry-run", "--ops", "simple_gla", "--jobs", "2", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert [(c["kernel"], c["point"]["o_stages"], c["where"]) for c in row["crashed"]] == [("o", 2, "precompile")]
    assert "illegal memory access" in row["crashed"][0]["error"]
    assert [(f["kernel"], f["point"]["o_stages"]) for f in row["failed"]] == [("o", 2)]
    assert row["failed"][0]["failed"].startswith("crashed the GPU context in precompile: ")
    timed = {p["kernel"] for p in row["points"] if p["ms"] is not None and any(v == 2 for v in p["point"].values())}
    assert timed == {"h", "dv", "dh", "dqk"}                 # the run's other new points, each alone
    assert not row["cut"]["gpu_context"] and row["best_fwd_bwd_ms"] is not None
    assert row["restarts"] == 0 and row["timing_processes"] == 1   # the timing process never ran it


def _no_precompile(monkeypatch):
    """The compile pass left out: a crash is first met by the timing process."""
    monkeypatch.setattr(tile_sweep, "precompile", lambda *a, **k: {"seconds": 0.0, "runs": 0, "failed": 0, "crashed": None})


def _sweep_crashing(tmp_path, monkeypatch, crash: str, *args) -> list:
    """The dry run of simple_gla then scan (3 points per kernel) with runs holding `crash` faulting and
    no compile pass, so the timing process meets the fault; returns the JSON's rows, both ops there."""
    monkeypatch.setenv("RECC_SWEEP_CRASH", crash)
    monkeypatch.setattr(tile_sweep, "_SIMULATED", {})
    _no_precompile(monkeypatch)
    out = tmp_path / "sweep.json"
    assert tile_sweep.main(["--dry-run", "--ops", "simple_gla,scan", "--max-points", "3", *args, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["errors"] == [] and [r["op"] for r in data["rows"]] == ["simple_gla", "scan"]
    return data["rows"]


def test_dry_run_crash_in_the_timing_process(tmp_path, monkeypatch):
    """A crash the compile pass did not meet breaks the timing process mid-op (here in this process, --jobs 1:
    a fresh process's healthy context is simulated): the run is listed under `crashed`, its new points are run
    alone in fresh compile processes (`isolate`) to name the guilty one, and a fresh timing process goes on
    where the last stopped with the points timed so far: the crashed run and the guilty point are never run
    again, the run's other points are timed alone, the op's later run and the next op in --ops are timed."""
    ran, run = [], tile_sweep.Op.run

    def record(self, assignment):
        ran.append(dict(assignment))
        return run(self, assignment)

    monkeypatch.setattr(tile_sweep.Op, "run", record)
    row, scan = _sweep_crashing(tmp_path, monkeypatch, "dv_stages=2")
    assert row["restarts"] == 1 and row["timing_processes"] == 2 and scan["restarts"] == 0
    assert [(c["kernel"], c["where"]) for c in row["crashed"]] == [
        (None, "timing process, run"), ("dv", "isolation, alone in a fresh process after the timing process crashed")]
    crashed_run = row["crashed"][0]
    assert crashed_run["point"]["dv_stages"] == 2 and crashed_run["new"] == ["h", "o", "dv", "dh", "dqk"]
    assert "illegal memory access" in crashed_run["error"] and row["crashed"][1]["point"]["dv_stages"] == 2
    assert [(f["kernel"], f["point"]["dv_stages"]) for f in row["failed"]] == [("dv", 2)]
    timed = sorted((p["kernel"], max(v for k, v in p["point"].items() if k.endswith("_stages")))
                   for p in row["points"] if p["ms"] is not None)
    assert timed == sorted([(k, 1) for k in ("h", "o", "dv", "dh", "dqk")]              # the solver's
                           + [(k, 2) for k in ("h", "o", "dh", "dqk")]                 # run 0's, each alone
                           + [(k, 3) for k in ("h", "o", "dv", "dh", "dqk")])          # run 1, after the crash
    assert not row["cut"]["gpu_context"] and not row["cut"]["untimed_points"]
    assert row["solver_fwd_bwd_ms"] is not None and row["best_fwd_bwd_ms"] is not None
    assert len(row["solver_fwd_bwd_ms_each"]) == 2 and row["solver_fwd_bwd_ms"] == min(row["solver_fwd_bwd_ms_each"])
    # the crashed run ran once; dv at 2 stages twice: in that run, then alone in the isolation's fresh process
    with_dv2 = [a for a in ran if a.get("dv_stages") == 2]
    assert len(with_dv2) == 2 and with_dv2[0] == crashed_run["assignment"] and with_dv2[1] != with_dv2[0]
    assert scan["solver_fwd_bwd_ms"] is not None and scan["crashed"] == []


def test_dry_run_crash_restarts_bounded(tmp_path, monkeypatch):
    """More crashes than --max-restarts: the runs left are not done (`cut.gpu_context`), one more fresh
    process times end to end what was timed, and the next op runs."""
    row, scan = _sweep_crashing(tmp_path, monkeypatch, "dv_stages=2;h_stages=3", "--max-restarts", "1")
    assert row["restarts"] == 2 and row["timing_processes"] == 3
    assert "--max-restarts 1" in row["cut"]["gpu_context"] and row["cut"]["untimed_points"] and not row["exhaustive"]
    assert [(c["kernel"], c["where"]) for c in row["crashed"]] == [
        (None, "timing process, run"), ("dv", "isolation, alone in a fresh process after the timing process crashed"),
        (None, "timing process, run")]
    assert row["crashed"][2]["point"]["h_stages"] == 3
    assert not any(p["ms"] is not None and p["point"].get("h_stages") == 3 for p in row["points"])
    assert row["solver_fwd_bwd_ms"] is not None and scan["solver_fwd_bwd_ms"] is not None


def test_dry_run_crash_in_a_spawned_timing_process(tmp_path, monkeypatch):
    """As on a GPU (--jobs 2): the timing process is a spawned one; after the crash a fresh one resumes
    from the resume file and the next op runs in a healthy process."""
    row, scan = _sweep_crashing(tmp_path, monkeypatch, "dv_stages=2", "--jobs", "2")
    assert row["restarts"] == 1 and [c["kernel"] for c in row["crashed"]] == [None, "dv"]
    assert [(f["kernel"], f["point"]["dv_stages"]) for f in row["failed"]] == [("dv", 2)]
    assert row["timed"]["kernel_points"] == 14 and not row["cut"]["untimed_points"]
    assert row["solver_fwd_bwd_ms"] is not None and scan["solver_fwd_bwd_ms"] is not None


class _Die(BaseException):
    """Stands for the timing process's death (e.g. a segmentation fault): no Python handler sees it."""


def test_dry_run_timing_process_dies(tmp_path, monkeypatch):
    """The timing process dies mid-op (FreshProcesses reports "WorkerDied"): the run it was at, from the
    resume file it left, is listed and isolated, and a fresh process goes on; the run's points alone
    (here none faults again) and the rest are timed."""
    _no_precompile(monkeypatch)
    died, run = [], tile_sweep.Op.run

    def die_once(self, assignment):
        if assignment.get("dv_stages") == 2 and not died:
            died.append(dict(assignment))
            raise _Die()
        return run(self, assignment)

    class Dying(tile_sweep.InProcess):
        def submit(self, fn, *args):
            try:
                return super().submit(fn, *args)
            except _Die:
                future = tile_sweep.concurrent.futures.Future()
                future.set_exception(RuntimeError("WorkerDied: the worker process ended (exit code -11)"))
                return future

    monkeypatch.setattr(tile_sweep.Op, "run", die_once)
    monkeypatch.setattr(tile_sweep, "InProcess", Dying)
    out = tmp_path / "sweep.json"
    assert tile_sweep.main(["--dry-run", "--ops", "simple_gla", "--max-points", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    row, = data["rows"]
    assert data["errors"] == [] and row["restarts"] == 1
    assert [(c["kernel"], c["where"]) for c in row["crashed"]] == [(None, "timing process, its process ended")]
    assert row["crashed"][0]["point"] == died[0] and "WorkerDied" in row["crashed"][0]["error"]
    assert row["failed"] == [] and row["timed"]["kernel_points"] == 15 and not row["cut"]["untimed_points"]
    assert row["solver_fwd_bwd_ms"] is not None


@pytest.mark.parametrize("name, family", [("simple_gla", "chunked"), ("scan", "scan")])
def test_end_to_end_timing_records_nothing(name, family):
    """End to end (`Op.plain`), the kernels run unwrapped: no launch is recorded (a Recorder kept every
    iteration's tensors alive: it slowed the first end-to-end timing of a process, and the scan, whose
    module caches the kernels it resolved per shape, ran the H200 out of memory), the Recorders are back
    after it, and a recorded run records again."""
    op = tile_sweep.Op(name, "cpu", tile_sweep.DRY[family])
    op.run(op.solver)
    counts = {t: len(r.calls) for t, r in op.recorders.items()}
    fn = op.fwd_bwd(op.solver)
    with op.plain():
        assert all(getattr(op.module, op.attrs[t]) is r.kernel for t, r in op.recorders.items())
        fn()
        fn()
    assert {t: len(r.calls) for t, r in op.recorders.items()} == counts
    assert all(getattr(op.module, op.attrs[t]) is r for t, r in op.recorders.items())
    op.run(op.solver)
    assert {t: len(r.calls) for t, r in op.recorders.items()} == counts


def test_precompile_isolates_crashes():
    """precompile's bookkeeping (with a stand-in compile task, in process): a task stops at the run that
    crashed, the runs after it are tried in a fresh task, and a crashed run is retried point by point:
    one whose crash a single point reproduces names it; one that crashes only as a combination names none;
    a task whose worker died is split into one task a run, to name the run that killed it."""
    from types import SimpleNamespace
    terms = [SimpleNamespace(name="ka", variables=("S", "a")), SimpleNamespace(name="kb", variables=("S", "b"))]
    op = SimpleNamespace(name="fake", device="cpu", sizes={}, solver={"S": 0, "a": 0, "b": 0}, terms=terms)
    base = {"S": 0, "a": 0, "b": 0}
    runs = [{"assignment": {"S": 0, "a": j, "b": j}, "new": ["ka", "kb"], "base": base} for j in range(1, 12)]
    ran = []

    def task(name, device, sizes, assignments):
        for i, x in enumerate(assignments):
            ran.append(x)
            if x["a"] == 3 or x["a"] == x["b"] == 7:          # a=3 alone crashes; a=7 only with b=7
                return {"done": i, "failed": 0, "crashed": [i, "AcceleratorError: CUDA error: an illegal memory access"]}
            if x["a"] == x["b"] == 9:                          # kills its worker (as FreshProcesses reports it)
                raise RuntimeError("WorkerDied: the worker process ended (exit code -11)")
        return {"done": len(assignments), "failed": 0, "crashed": None}

    orig = tile_sweep._compile_task
    tile_sweep._compile_task = task
    try:
        c = tile_sweep.precompile(op, runs, ["S"], 1, float("inf"), in_process=True)["crashed"]
    finally:
        tile_sweep._compile_task = orig
    assert set(c["runs"]) == {2, 6, 8} and not c["bases"] and c["runs"][8].startswith("WorkerDied")
    assert set(c["alone"]) == {(2, "ka")}
    assert c["alone_ok"] == {(2, "kb"), (6, "ka"), (6, "kb"), (8, "ka"), (8, "kb")}
    assert all(r["assignment"] in ran for r in runs)         # the untried ones too
    assert sum(x == runs[2]["assignment"] for x in ran) == 1  # a crashed run is not run again


def _sticky_task(x):
    """For test_fresh_processes (in a worker): a sticky fault, as CUDA's."""
    import os
    broken = os.environ.get("_STICKY_BROKEN")
    if broken:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (sticky)")
    if x == "bad":
        os.environ["_STICKY_BROKEN"] = "1"
        return {"crashed": [0, "CUDA error: an illegal memory access was encountered"], "pid": os.getpid()}
    return {"crashed": None, "pid": os.getpid()}


def test_fresh_processes():
    """FreshProcesses: a worker is reused while healthy and replaced after a task that broke its context."""
    pool = tile_sweep.FreshProcesses(1)
    try:
        first = pool.submit(_sticky_task, "ok").result()
        again = pool.submit(_sticky_task, "ok").result()
        bad = pool.submit(_sticky_task, "bad").result()
        after = pool.submit(_sticky_task, "ok").result()
    finally:
        pool.shutdown()
    assert first["pid"] == again["pid"] == bad["pid"] and bad["crashed"]
    assert after["crashed"] is None and after["pid"] != bad["pid"]
