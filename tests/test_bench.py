"""benchmarks/bench.py's harness on the CPU (--dry-run: interpreter, tiny shapes; times mean nothing)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_isolated_op_past_its_time_keeps_a_row_with_the_reason(tmp_path):
    out = tmp_path / "b.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--dry-run", "--ops", "simple_gla", "--T", "40",
           "--no-cold", "--isolate", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["op"] == "simple_gla" and rows[0]["shape"]["T"] == 40
    assert rows[0]["recc_error"] == "the op's subprocess ran past --isolate 1 s" and rows[0]["checked"] is False
    assert not list(tmp_path.glob("*.part.*"))
