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


def test_autotune_results_round_trip_through_one_file(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import tarfile
    import bench
    cache, other = tmp_path / "cache", tmp_path / "other"
    (cache / "abc123").mkdir(parents=True)
    (cache / "abc123" / "chunk_fwd_kernel_o.autotune.json").write_text('{"configs_timings": []}')
    (cache / "abc123" / "chunk_fwd_kernel_o.cubin").write_bytes(b"\0")            # not an autotune result
    archive = tmp_path / "out" / "autotune.tar"
    assert bench.save_autotune(archive, cache) == 1
    with tarfile.open(archive, "a") as tar:                                       # a member that must not land
        evil = tmp_path / "src" / "evil.autotune.json"
        evil.parent.mkdir()
        evil.write_text("{}")
        tar.add(evil, arcname="../evil.autotune.json")
    assert bench.load_autotune(archive, other) == 1
    assert (other / "abc123" / "chunk_fwd_kernel_o.autotune.json").read_text() == '{"configs_timings": []}'
    assert not (other.parent / "evil.autotune.json").exists()
    assert sorted(p.name for p in other.rglob("*")) == ["abc123", "chunk_fwd_kernel_o.autotune.json"]
    assert bench.load_autotune(tmp_path / "missing.tar", other) == 0


def test_chunked_gpu_check_smoke_on_fp32_inputs():
    """chunked_gpu_check.py --smoke --dtype fp32 (the interpreter, tiny shapes): its checks run on fp32
    inputs and pass at fp32's tolerance (1e-3)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "chunked_gpu_check.py"), "--smoke",
           "--families", "gated_delta_net", "--dtype", "fp32"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("check gated_delta_net")]
    assert len(lines) == 2 and all(" float32 " in line and " PASS " in line for line in lines), done.stdout


def test_decode_harness_checks_every_variant_and_records_what_auto_took(tmp_path):
    """benchmarks/decode.py --dry-run: the chunked, recurrent and auto ops of a spec against float64
    at T = 1 and 3 with an initial state, then a row per T with each variant's time and the strategy
    the auto op took (recurrent at one step, chunked at 64: the model's choice on the CPU)."""
    out = tmp_path / "d.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--dry-run", "--specs", "gated_delta_net",
           "--T", "1,64", "--warmup", "1", "--rep", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["T"], r["auto_took"]) for r in rows] == [(1, "recurrent"), (64, "chunked")]
    assert set(rows[0]["small_check"]) == {"chunked", "recurrent", "auto"}
    assert all(err < 1e-4 for err in rows[0]["small_check"].values())
    assert all(r[f"{v}_ms"] > 0 for r in rows for v in ("chunked", "recurrent", "auto"))
