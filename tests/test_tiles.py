"""Stage 6, tile: the hardware model, each kernel family's constraints and cost model, the
choice for every spec, its explanation, `recc check` output, and the tuning loop."""
import itertools
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from recc.check import load
from recc.cli import main
from recc.hardware import H100 as H100_PRESET
from recc.hardware import INTERPRETER, Hardware, from_properties, hardware
from recc.solver import parse_problem
from recc.tiles import (FAMILIES, TilesInfeasible, TuningNeedsGPU, _parsed, choose_tiles, constraints_text,
                        families_of, family_problem, launch_tiles, tiles_for_spec, tune, tuned)

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.rec"))
KIB, MIB = 1024, 1024 * 1024

# The H100 by hand: the numbers of the issue (limits) and of recc.hardware.RATES (rates).
H100 = Hardware(name="H100", arch="sm_90", sms=132, warp_size=32, max_threads_per_sm=2048, max_threads_per_block=1024,
                regs_per_sm=65536, regs_per_block=65536, max_regs_per_thread=255, smem_per_block=227 * KIB,
                smem_per_sm=228 * KIB, l2_bytes=50 * MIB, bandwidth=3.0e12, l2_bandwidth=10e12, tensor_flops=700e12,
                vector_flops=60e12, clock_hz=1.75e9, step_latency=400 / 1.75e9, memory_latency=1000 / 1.75e9)
GLA = {"K": 128, "V": 128}


def solve_ms(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        _parsed.cache_clear()             # each run parses its constraint text again
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---- every spec ------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [H100, INTERPRETER], ids=["h100", "interpreter"])
@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_solves_in_under_50_ms(path, hw):
    rec = load(path)
    families_of(rec)                      # the analysis is cached: time the tile stage only
    choose_tiles("scan", {}, hw)          # the text parser (lark) is built once per process
    ms = solve_ms(lambda: tiles_for_spec(rec, hw))
    tiles = tiles_for_spec(rec, hw)
    print(f"{rec.name} on {hw.name}: {ms:.1f} ms for {', '.join(tiles)}")
    assert tiles, "no kernel family for this spec"
    assert ms < 50


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_the_chosen_point_satisfies_every_constraint(path):
    rec = load(path)
    for hw in (H100, INTERPRETER):
        for family, t in tiles_for_spec(rec, hw).items():
            assert not isinstance(t, TilesInfeasible), str(t)
            assert t.problem.is_feasible(t.assignment)
            assert set(t.assignment) == {v.name for v in t.problem.variables}
            assert t.candidates(1) == [t.assignment]


def test_the_choice_is_the_brute_force_optimum():
    t = choose_tiles("recurrent", GLA, H100)
    domains = [v.domain for v in t.problem.variables]
    names = [v.name for v in t.problem.variables]
    points = [dict(zip(names, p)) for p in itertools.product(*domains)]
    feasible = [p for p in points if t.problem.is_feasible(p)]
    assert t.objective == min(t.problem.cost(p) for p in feasible)
    ranked = t.candidates(5)
    costs = [t.problem.cost(p) for p in ranked]
    assert costs == sorted(costs) and ranked[0] == t.assignment


def test_choices_are_deterministic():
    for family in FAMILIES:
        a, b = choose_tiles(family, {}, H100), choose_tiles(family, {}, H100)
        assert a.assignment == b.assignment and a.objective == b.objective and a.binding == b.binding


# ---- the interpreter model: smallest legal tiles ---------------------------------------------

def test_the_interpreter_model_picks_the_smallest_legal_tiles():
    assert choose_tiles("recurrent", GLA, INTERPRETER).assignment == {"BV": 16, "num_warps": 1, "num_warps_bwd": 2}
    chunked = choose_tiles("chunked", GLA, INTERPRETER).assignment
    assert (chunked["BT"], chunked["BK"], chunked["BV"], chunked["num_warps"]) == (16, 128, 16, 1)
    assert choose_tiles("chunked", GLA, INTERPRETER, substeps=2).assignment["BT"] == 32   # 16 substeps per dot side
    assert choose_tiles("scan", {"D": 64}, INTERPRETER).assignment == {"BT": 16, "BD": 16, "num_warps": 1}
    assert choose_tiles("cell", {"D": 32}, INTERPRETER).assignment["BB"] == 16
    # a CPU test's shape: the tiles cover the small dims, nothing larger
    small = choose_tiles("recurrent", {"K": 8, "V": 12, "T": 20, "B": 2, "H": 2}, INTERPRETER).assignment
    assert small["BV"] == 16 and small["num_warps"] == 1


def test_without_a_gpu_the_default_model_is_the_interpreter():
    assert hardware() is INTERPRETER       # tests run under TRITON_INTERPRET=1 (conftest)
    assert hardware("cpu") is INTERPRETER and hardware("h100") is H100_PRESET and hardware(H100) is H100


def test_a_device_model_reads_the_properties_and_the_arch_rates():
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132, warp_size=32,
                            max_threads_per_multi_processor=2048, regs_per_multiprocessor=65536,
                            shared_memory_per_block=48 * KIB, shared_memory_per_block_optin=227 * KIB,
                            shared_memory_per_multiprocessor=228 * KIB, L2_cache_size=50 * MIB)
    hw = from_properties(props)
    assert (hw.sms, hw.smem_per_block, hw.smem_per_sm, hw.l2_bytes, hw.arch) == (132, 227 * KIB, 228 * KIB, 50 * MIB, "sm_90")
    assert hw.bandwidth == 3.0e12 and hw.tensor_flops == 700e12 and not hw.interpreter
    h200 = from_properties(SimpleNamespace(**{**vars(props), "name": "NVIDIA H200"}))
    assert h200.bandwidth > hw.bandwidth
    old = from_properties(SimpleNamespace(name="Tesla V100", major=7, minor=0, multi_processor_count=80))
    assert old.smem_per_block == 48 * KIB and old.bandwidth == 1.0e12     # unknown arch: conservative rates


# ---- the H100 model: sensible choices --------------------------------------------------------

def test_h100_recurrent_gla():
    t = choose_tiles("recurrent", GLA, H100, row_inputs=3)
    assert t["BV"] in {16, 32, 64} and t["num_warps"] in {2, 4, 8}
    assert t["num_warps_bwd"] >= t["num_warps"]          # the backward holds twice the tiles
    assert 1e-4 < t.objective < 1e-1                      # seconds: latency-bound, milliseconds


def test_h100_recurrent_vector_state_without_tiling():
    t = choose_tiles("recurrent", {"K": 1, "V": 256}, H100, split=False, states=2, row_inputs=0, col_inputs=4)
    assert t["BV"] == 256                                 # a step sums over V: one tile


def test_h100_chunked():
    gla = choose_tiles("chunked", GLA, H100)
    assert gla["BT"] in {32, 64} and gla["BK"] == 128 and gla["BV"] in {32, 64, 128}
    assert gla["num_warps"] in {4, 8} and gla["num_stages"] >= 2
    assert any(b.startswith("regs_o") for b in gla.binding)   # what keeps a gated chunk from 128
    ungated = choose_tiles("chunked", GLA, H100, gated=False)
    assert ungated["BT"] >= gla["BT"]
    wy = choose_tiles("chunked", GLA, H100, householder=True, substeps=2)
    assert wy["BT"] in {32, 64}


def test_h100_scan_rows_are_at_least_64_bytes():
    t = choose_tiles("scan", {"D": 128}, H100)
    assert t["BD"] >= 32 and 32 <= t["BT"] <= 256 and t["num_warps"] in {2, 4, 8}


def test_h100_cell_keeps_R_in_shared_memory_when_it_fits():
    small = choose_tiles("cell", {"D": 128, "B": 4}, H100)
    assert small["BB"] == 16 and small["RESIDENT"] == 1 and small["num_warps"] >= 2
    big = choose_tiles("cell", {"D": 256, "B": 4}, H100)           # 4 * 256 * 256 * 2 bytes = 512 KiB
    assert big["RESIDENT"] == 0
    many = choose_tiles("cell", {"D": 64, "B": 256, "H": 8}, H100)
    assert many["BB"] >= 16


def test_the_estimate_grows_with_T():
    short = choose_tiles("recurrent", {**GLA, "T": 1024}, H100).objective
    assert choose_tiles("recurrent", {**GLA, "T": 4096}, H100).objective > 3 * short


# ---- infeasible shapes and explanations -------------------------------------------------------

def test_a_state_too_large_for_registers_without_tiling_names_the_conflict():
    with pytest.raises(TilesInfeasible) as info:
        choose_tiles("recurrent", {"K": 512, "V": 512}, H100, split=False)
    labels = set(info.value.labels)
    assert "v_cover" in labels and labels & {"regs", "regs_bwd", "regs_block", "regs_block_bwd"}
    message = str(info.value)
    assert message.startswith("recurrent: no tiles for B=4 T=4096 H=16 K=512 V=512")
    assert "v_cover: BV == VP or SPLIT == 1 and V % BV == 0" in message
    # with tiling allowed the same state fits
    assert choose_tiles("recurrent", {"K": 512, "V": 512}, H100)["BV"] <= 64


def test_an_infeasible_family_is_reported_per_spec():
    rec = load(ROOT / "specs" / "first_order.rec")
    out = tiles_for_spec(rec, H100, dims={"D": 1 << 20, "T": 64})
    assert all(not isinstance(t, TilesInfeasible) for t in out.values())   # tiled: D splits into BD tiles
    # 16 heads of R[4, 4096, 4096] in bf16: neither in shared memory nor in L2
    huge = tiles_for_spec(load(ROOT / "specs" / "lstm.rec"), H100, dims={"D": 4096})
    assert isinstance(huge["cell"], TilesInfeasible) and huge["cell"].labels == ["smem", "r_in_l2"]


def test_explain_names_the_point_the_estimate_and_the_binding_constraints():
    t = choose_tiles("chunked", GLA, H100, householder=True, substeps=2)
    text = t.explain()
    assert text.startswith(f"chunked: BT={t['BT']}, BK=128") and "estimated" in text and "ms forward" in text
    assert "binding wy_chunk: HH == 1 -> BT <= 64" in text and "blocks BT 64 -> 128" in text
    rec = choose_tiles("recurrent", GLA, INTERPRETER).explain()
    assert "interpreter model: smallest legal tiles" in rec and "8 >= 16 fails" in rec


def test_bad_arguments_are_errors():
    with pytest.raises(Exception, match="unknown kernel family 'dag'"):
        choose_tiles("dag", {}, H100)
    with pytest.raises(Exception, match="unknown dims or shape keywords \\['D'\\]"):
        choose_tiles("chunked", {"D": 4}, H100)
    with pytest.raises(Exception, match="dims must be positive, got K=0"):
        choose_tiles("chunked", {"K": 0}, H100)


# ---- the constraint files --------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_constraint_files_are_readable_and_round_trip(family):
    text = constraints_text(family)
    assert text.startswith(f"# {family}:")
    problem = family_problem(family, {}, H100)
    plain = parse_problem(text, {c: v for c, v in FAMILIES[family].consts(
        {"B": 4, "T": 4096, "H": 16, "K": 128, "V": 128, "D": 128}, FAMILIES[family].shape, H100).items()})
    assert plain.constraints == problem.constraints
    filled = choose_tiles(family, {}, H100).constraints()     # constants declared with their values
    assert "const WARP = 32" in filled and parse_problem(filled).constraints == plain.constraints


def test_families_of_the_specs():
    fam = {p.stem: families_of(load(p)) for p in SPECS}
    assert list(fam["lstm"]) == ["cell"] and fam["lstm"]["cell"][1] == {"gates": 4, "states": 2}
    assert fam["gru"]["cell"][1]["gates"] == 3
    assert list(fam["gla"]) == ["chunked", "recurrent"]
    assert fam["delta_product"]["chunked"][1] == {"substeps": 2, "householder": True, "gated": True}
    assert fam["delta_net"]["chunked"][1]["gated"] is False
    assert fam["mamba2"]["chunked"][0]["K"] == 128                        # N, P default to 128
    assert list(fam["softmax_scan"]) == ["scan", "recurrent"] and fam["softmax_scan"]["scan"][1]["elements"] == 2
    assert fam["first_order"]["recurrent"][1]["split"] is True
    assert fam["mlstm"]["recurrent"][1]["states"] == 1                  # n[K] lies on the row axis
    assert families_of(load(ROOT / "specs" / "gla.rec"), {"K": 64, "T": 100})["chunked"][0]["K"] == 64


# ---- recc check -----------------------------------------------------------------------------

def test_recc_check_prints_the_tiles(capsys):
    assert main(["check", "--hardware", "h100", str(ROOT / "specs" / "gated_delta_net.rec")]) == 0
    out = capsys.readouterr().out
    assert "tiles    for B=4 T=4096 H=16 K=128 V=128 on the H100 model" in out
    assert "chunked: BT=" in out and "recurrent: BV=" in out and "binding" in out and "estimated" in out
    assert main(["check", str(ROOT / "specs" / "gla.rec")]) == 0
    assert "on the interpreter model (smallest legal tiles" in capsys.readouterr().out


def test_recc_check_json_includes_tiles(capsys):
    assert main(["check", "--json", "--hardware", "h100", str(ROOT / "specs" / "gla.rec")]) == 0
    data = json.loads(capsys.readouterr().out)
    tiles = data["tiles"]
    assert tiles["hardware"]["name"] == "H100" and tiles["hardware"]["sms"] == 132
    chunked = tiles["kernels"]["chunked"]
    assert set(chunked["assignment"]) == {"BT", "BK", "BV", "num_warps", "num_stages"}
    assert chunked["objective_unit"] == "seconds" and chunked["objective"] > 0 and isinstance(chunked["binding"], list)
    assert set(tiles["kernels"]) == {"chunked", "recurrent"}


# ---- tuning ---------------------------------------------------------------------------------

def test_tune_times_the_best_points_and_caches_the_winner(tmp_path, monkeypatch):
    monkeypatch.setenv("RECC_CACHE_DIR", str(tmp_path))
    t = choose_tiles("recurrent", GLA, H100)
    points = t.candidates(4)
    fake = {json.dumps(p, sort_keys=True): 1.0 + i for i, p in enumerate(points)}
    fake[json.dumps(points[2], sort_keys=True)] = 0.5               # the third is fastest on "the GPU"
    ran = []

    def run(point):
        ran.append(point)
        if point == points[1]:
            raise RuntimeError("out of resources")                  # skipped, recorded

    timer = lambda fn: (fn(), fake[json.dumps(ran[-1], sort_keys=True)])[1]
    assert tune(t, run, 4, spec_key="gla", timer=timer) == points[2]
    assert ran == points
    assert tuned(t, "gla") == points[2] and tuned(t, "other") == t.assignment
    record = json.loads(next((tmp_path / "tiles").glob("*.json")).read_text())
    assert record["failed"][0]["error"] == "RuntimeError: out of resources" and len(record["timings"]) == 3


def test_launch_tiles_is_the_cached_choice_for_the_call_device(tmp_path, monkeypatch):
    import torch
    dims = {"K": 64, "V": 64, "B": 2, "T": 100, "H": 4}
    cpu = launch_tiles("recurrent", dims, torch.device("cpu"), split=True)
    assert cpu == choose_tiles("recurrent", dims, INTERPRETER).assignment
    assert launch_tiles("recurrent", dims, "h100") == choose_tiles("recurrent", dims, H100_PRESET).assignment
    monkeypatch.setenv("RECC_CACHE_DIR", str(tmp_path))
    t = choose_tiles("scan", {"D": 64}, H100_PRESET)
    slow_first = t.candidates(2)
    times = iter([2.0, 1.0])                                     # the model's second choice runs faster
    tune(t, lambda point: None, 2, spec_key="s", timer=lambda fn: next(times))
    assert launch_tiles("scan", {"D": 64}, "h100", spec_key="s") == slow_first[1]


def test_tune_needs_a_gpu():
    with pytest.raises(TuningNeedsGPU, match="tuning times kernels on a GPU"):
        tune(choose_tiles("scan", {}, H100), lambda point: None, 2)
