"""benchmarks/crash_repro.py on the CPU interpreter (--smoke): a point runs, a fault is named, memcheck parsed."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import crash_repro  # noqa: E402


def _run(*args, env=None):
    import os
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crash_repro.py"), "--smoke", "--jobs", "1", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_points_cover_the_crashes_and_their_neighbours():
    pts = crash_repro.points()
    assert len({p["id"] for p in pts}) == len(pts)
    sg = [p["tiles"] for p in pts if p["spec"] == "simple_gla" and p["kernel"] == "dv" and p["tiles"]["BT"] == 64]
    assert {"BT": 64, "BKS": 64, "dv_BV": 32, "dv_warps": 4, "dv_stages": 1} in sg
    assert {(t["dv_stages"], t["dv_warps"], t["dv_BV"]) for t in sg} >= {(1, 4, 32), (2, 4, 32), (3, 4, 32),
                                                                         (1, 8, 32), (1, 4, 64), (2, 8, 64)}
    assert {"BT": 64, "BKS": 32, "dv_BV": 32, "dv_warps": 4, "dv_stages": 1} in sg


def test_a_point_runs_and_a_fault_is_named(tmp_path):
    out = _run("--only", "2", "--out", str(tmp_path / "a.json"))
    (r,) = json.loads((tmp_path / "a.json").read_text())
    assert r["status"] == "ok" and r["diff"] < 5e-2 and r["launched"]["dv_BV"] == 32, out
    _run("--only", "2", "--out", str(tmp_path / "b.json"), env={"RECC_CRASH_SIMULATE": "bwd_dv"})
    (r,) = json.loads((tmp_path / "b.json").read_text())
    assert r["status"] == "CRASH" and r["kernel_faulted"] == "simple_gla_chunk_bwd_dv_kernel", r


def test_memcheck_first_error():
    text = """========= COMPUTE-SANITIZER
========= Invalid __global__ read of size 16 bytes
=========     at simple_gla_chunk_bwd_dv_kernel+0x1a30
=========     by thread (64,0,0) in block (1,17,3)
=========     Address 0x7f00 is out of bounds
=========     and is 1,024 bytes after the nearest allocation at 0x7000 of size 256 bytes
=========
========= ERROR SUMMARY: 1 error
"""
    first = crash_repro._memcheck_first(text)
    assert first.startswith("Invalid __global__ read of size 16 bytes | at simple_gla_chunk_bwd_dv_kernel+0x1a30")
    assert "1,024 bytes after" in first
    assert crash_repro._memcheck_first("========= ERROR SUMMARY: 0 errors\n") is None
