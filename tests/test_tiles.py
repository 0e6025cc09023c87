"""Stage 6, tile: the hardware model, each kernel family's constraints and cost model, the
choice for every spec, its explanation, `recc check` output, and the tuning loop."""
import itertools
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import recc
from recc.check import load
from recc.cli import main
from recc.hardware import H100 as H100_PRESET
from recc.hardware import H200
from recc.hardware import INTERPRETER, Hardware, from_properties, hardware
from recc.solver import parse_problem
from recc.solver import sum_of
from recc.tiles import (FAMILIES, TilesInfeasible, TuningNeedsGPU, _parsed, choose_tiles, constraints_text,
                        families_of, family_problem, launch_shape, launch_tiles, spec_key, tiles_for_spec, tune,
                        tuned)

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
    """The fastest of `runs` solves, ms: the solve's own cost, without what other processes on a
    shared machine take from it (benchmarks/solver_time.py gives the distribution)."""
    times = []
    for _ in range(runs):
        _parsed.cache_clear()             # each run builds its problems from the text again (the text's
                                          # parse tree is cached per process, as for any new call shape)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


# ---- every spec ------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [H100, INTERPRETER], ids=["h100", "interpreter"])
@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_solves_in_under_50_ms(path, hw):
    """A call of a new shape solves one plan (its family's; chunked: with or without gradient):
    each under 50 ms; `recc check`, every plan of the spec, under 100 ms."""
    rec = load(path)
    families_of(rec)                      # the analysis is cached: time the tile stage only
    choose_tiles("scan", {}, hw)          # the text parser (lark) is built once per process
    plans = [(family, d, shape) for family, (d, shape) in families_of(rec).items()]
    plans += [(f, d, {**s, "inference": True}) for f, d, s in plans if f == "chunked" and not s["normaliser"]]
    assert plans, "no kernel family for this spec"
    for family, d, shape in plans:
        ms = solve_ms(lambda: choose_tiles(family, d, hw, **shape))
        print(f"{rec.name} on {hw.name}: {ms:.1f} ms for {family}{' (no gradient)' if shape.get('inference') else ''}")
        assert ms < 50, (family, shape)
    ms = solve_ms(lambda: tiles_for_spec(rec, hw))
    print(f"{rec.name} on {hw.name}: {ms:.1f} ms for every plan")
    assert len(tiles_for_spec(rec, hw)) == len(plans) and ms < 100


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
    """The split solve (forward and backward apart, sharing CHUNK) is exact: the best point and
    the order of the next ones are those of enumerating every point of the whole problem."""
    t = choose_tiles("recurrent", GLA, H100)
    domains = [v.domain for v in t.problem.variables]
    names = [v.name for v in t.problem.variables]
    points = [dict(zip(names, p)) for p in itertools.product(*domains)]
    feasible = [p for p in points if t.problem.is_feasible(p)]
    assert t.objective == min(t.problem.cost(p) for p in feasible)
    ranked = t.candidates(5)
    costs = [t.problem.cost(p) for p in ranked]
    assert costs == sorted(costs) and ranked[0] == t.assignment
    assert costs == sorted(t.problem.cost(p) for p in feasible)[:5]


def test_the_objective_is_the_sum_of_the_kernels_terms():
    t = choose_tiles("chunked", GLA, H100, householder=True)
    assert [term.name for term in t.terms] == ["wy", "h", "o", "dv", "dh", "dqk", "wyb"]
    assert sum(t.parts().values()) == pytest.approx(t.objective)
    assert t.problem.cost(t.assignment) == pytest.approx(sum_of(t.terms)(t.assignment))
    plain = choose_tiles("chunked", GLA, H100)              # no householder transitions: no wy, wyb kernels
    assert not any(k.startswith(("wy_", "wyb_")) for k in plain.assignment)
    assert [term.name for term in plain.terms] == ["h", "o", "dv", "dh", "dqk"]


def test_choices_are_deterministic():
    for family in FAMILIES:
        a, b = choose_tiles(family, {}, H100), choose_tiles(family, {}, H100)
        assert a.assignment == b.assignment and a.objective == b.objective and a.binding == b.binding


# ---- the interpreter model: smallest legal tiles ---------------------------------------------

def test_the_interpreter_model_picks_the_smallest_legal_tiles():
    assert choose_tiles("recurrent", GLA, INTERPRETER).assignment == {
        "BV": 16, "BV_bwd": 16, "CHUNK": 8, "num_warps": 1, "num_warps_bwd": 2}
    chunked = choose_tiles("chunked", GLA, INTERPRETER).assignment
    assert (chunked["BT"], chunked["BKS"], chunked["h_BV"], chunked["o_warps"], chunked["dqk_stages"]) == (16, 16, 16, 1, 1)
    assert choose_tiles("chunked", GLA, INTERPRETER, substeps=2).assignment["BT"] == 32   # 16 substeps per dot side
    assert choose_tiles("scan", {"D": 64}, INTERPRETER).assignment == {"BT": 16, "BD": 16, "num_warps": 1,
                                                                       "BT_bwd": 16, "BD_bwd": 16, "num_warps_bwd": 1}
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


# ---- the H100 model: the tiles measured fastest on an H100 ---------------------------------
# The cost models were calibrated on these (benchmarks/results/): a change that moves one of them
# must come with a GPU measurement that says the new point is faster.

def main_shape(spec: str, family: str, **dims) -> tuple:
    d, shape = families_of(load(ROOT / "specs" / f"{spec}.rec"))[family]
    return {**d, **dims}, shape


def test_h100_scan_first_order():
    """bench.py --ops scan --sweep (B=4 T=4096 H=16 D=128 fp32): the tile kernel, 64 x 32, 4 warps
    forward and backward (*-scan-tile-sweep.json: within 1% of the fastest of 31 points forward,
    3.5% backward)."""
    dims, shape = main_shape("first_order", "scan")
    assert choose_tiles("scan", dims, H100_PRESET, **shape).assignment == {
        "BT": 64, "BD": 32, "num_warps": 4, "BT_bwd": 64, "BD_bwd": 32, "num_warps_bwd": 4}


def test_h200_scan_first_order():
    """bench.py --sweep --T 4096 on an H200 (2026-12-03-h200-scan-tile-sweep.json): the fastest
    forward is 128 x 32, 4 warps (0.107 ms), the fastest backward 64 x 32, 4 warps (0.175 ms)."""
    dims, shape = main_shape("first_order", "scan")
    assert choose_tiles("scan", dims, H200, **shape).assignment == {
        "BT": 128, "BD": 32, "num_warps": 4, "BT_bwd": 64, "BD_bwd": 32, "num_warps_bwd": 4}


def test_h100_recurrent_gla():
    """recurrent_gpu_check.py --sweep, GLA bf16 B=4 T=4096 H=16 K=V=128, [BK, BV] state tiles
    (*-gla_recurrent-order-sweep.log): forward BV=16 4 warps, backward BV_bwd=32 4 warps."""
    dims, shape = main_shape("gla", "recurrent")
    t = choose_tiles("recurrent", dims, H100_PRESET, **shape)
    assert t.assignment == {"BV": 16, "BV_bwd": 32, "CHUNK": 32, "num_warps": 4, "num_warps_bwd": 4}
    assert 1e-3 < t.objective < 1e-1                      # seconds: latency-bound, milliseconds


def test_h100_cell_lstm():
    """cell_gpu_check.py (*-cell_gpu_check.json), LSTM bf16 B=16 T=1024 H=16 D=64: 16 sequences per
    program (all of them), 8 warps, R in shared memory."""
    dims, shape = main_shape("lstm", "cell", B=16, T=1024, D=64)
    assert choose_tiles("cell", dims, H100_PRESET, **shape).assignment == {"BB": 16, "num_warps": 8, "RESIDENT": 1}


SCALAR_H200 = {"BT": 64, "BKS": 64, "h_BV": 64, "h_warps": 8, "h_stages": 3, "o_BV": 128, "o_warps": 4,
               "o_stages": 3, "dv_BV": 64, "dv_warps": 8, "dv_stages": 3, "dh_BV": 64, "dh_warps": 8,
               "dh_stages": 3, "dqk_BV": 64, "dqk_warps": 4, "dqk_stages": 3}
MLSTM_H200 = {"BT": 64, "BKS": 64, "h_BV": 128, "h_warps": 8, "h_stages": 3, "o_BV": 128, "o_warps": 4,
              "o_stages": 3, "dv_BV": 128, "dv_warps": 8, "dv_stages": 3, "dh_BV": 128, "dh_warps": 8,
              "dh_stages": 3, "dqk_BV": 64, "dqk_warps": 4, "dqk_stages": 3}


@pytest.mark.parametrize("spec", ["simple_gla", "retnet", "mamba2"])
def test_h200_chunked_scalar_decays(spec):
    """tile_sweep.py --ops simple_gla on an H200 (results/2026-12-03-h200-sweep-s6-a.json, all 300 kernel
    points): these kernels, priced with the measured times, 0.718 ms against the fastest combination's
    0.683 (tests/test_calibrate.py); the same tiles for every family with scalar decays."""
    dims, shape = main_shape(spec, "chunked", K=128, V=128)
    assert choose_tiles("chunked", dims, H200, **shape).assignment == SCALAR_H200


def test_h200_chunked_mlstm():
    """tile_sweep.py --ops mlstm on an H200 (results/2026-12-03-h200-sweep-s6-c.json, all 200 kernel points):
    1.162 ms against the fastest combination's 1.067."""
    dims, shape = main_shape("mlstm", "chunked", K=128, V=128)
    assert choose_tiles("chunked", dims, H200, **shape).assignment == MLSTM_H200


@pytest.mark.parametrize("spec", ["simple_gla", "retnet", "mamba2", "mlstm"])
def test_chunked_scalar_decays_on_gpus(spec):
    """Measured, as constraints (templates/chunked.constraints): chunks of 64 or more without householder
    transitions (plain_chunk: chunks of 32 ran simple GLA 0.81 / 2.03 ms against 0.26 / 1.19 at 64 on an
    H200), and on sm_90 at least 2 pipeline stages and V blocks of at least 64 in o and dv there (wgmma_*:
    Triton 3.6 faults or computes wrong values otherwise, benchmarks/crash_repro.py)."""
    for hw in (H100_PRESET, H200):
        dims, shape = main_shape(spec, "chunked", K=128, V=128)
        t = choose_tiles("chunked", dims, hw, **shape)
        assert t["BT"] >= 64 and t["o_BV"] >= 64 and t["dv_BV"] >= 64
        assert min(t[k] for k in t.assignment if k.endswith("_stages")) >= 2


HOUSEHOLDER_H200 = {"BT": 32, "BI": 8, "BKS": 64, "wy_BV": 128, "wy_warps": 4, "wy_stages": 3, "h_BV": 64,
                    "h_warps": 8, "h_stages": 3, "o_BV": 128, "o_warps": 2, "o_stages": 2, "dv_BV": 64,
                    "dv_warps": 2, "dv_stages": 2, "dh_BV": 64, "dh_warps": 8, "dh_stages": 3, "dqk_BV": 32,
                    "dqk_warps": 2, "dqk_stages": 3, "wyb_BV": 32, "wyb_warps": 2, "wyb_stages": 3}


def test_h200_chunked_householder_against_the_sweep():
    """tile_sweep.py --ops delta_net on an H200 (results/2026-12-03-h200-sweep-delta_net.json): every
    point of all seven kernels at BT = 16, 32 timed; the fastest kernels sum to 1.447 ms, these (the
    solver's, CODE['chunked_householder'] fit to the family's five sweeps) to 1.580 (+9.2%; fit to this
    sweep alone +7.7%, but 4 warps in o at BT 32, 195 us where 2 take 150 in gated DeltaNet's sweeps),
    the solver's choice before the first calibration to 3.116. The gated DeltaNet
    sweep with BT = 64 feasible (sweep-s6-a) found 32 fastest too: the UT transform's kernels (wy, wyb)
    run 3.5x / 2x slower at 64, more than the state passes gain."""
    dims, shape = main_shape("delta_net", "chunked", K=128, V=128)
    assert choose_tiles("chunked", dims, H200, **shape).assignment == HOUSEHOLDER_H200
    for spec in ("gated_delta_net", "delta_product"):
        dims, shape = main_shape(spec, "chunked", K=128, V=128)
        for T in (512, 4096, 32768):
            t = choose_tiles("chunked", dict(dims, T=T), H200, **shape)
            assert t["BT"] == 32 and max(t[k] for k in t.assignment if k.endswith("_warps")) <= 8


def test_h100_chunked_per_key_and_householder_choices_are_sane():
    """Not measured yet on a GPU: the model's properties, not its numbers. Per-key decays compute a
    chunk's scores in every V block of o: one V block; the UT transform's [BT, BT] inverse stays in
    registers: BT <= 64."""
    dims, shape = main_shape("gla", "chunked")
    gla = choose_tiles("chunked", dims, H100_PRESET, **shape)
    assert gla["o_BV"] == 128 and gla["BT"] in (32, 64)
    for spec in ("delta_net", "gated_delta_net", "delta_product"):
        dims, shape = main_shape(spec, "chunked")
        t = choose_tiles("chunked", dims, H100_PRESET, **shape)
        assert t["BT"] in (32, 64) and t["BT"] >= 16 * shape["substeps"] and {"wy_BV", "wyb_BV"} <= set(t.assignment)


def test_h100_recurrent_vector_state_without_tiling():
    t = choose_tiles("recurrent", {"K": 1, "V": 256}, H100, split=False, states=2, row_inputs=0, col_inputs=4)
    assert t["BV"] == 256 and t["BV_bwd"] == 256         # a step sums over V: one tile


def test_h100_cell_keeps_R_in_shared_memory_when_it_fits():
    small = choose_tiles("cell", {"D": 128, "B": 4}, H100)
    assert small["BB"] == 16 and small["RESIDENT"] == 1 and small["num_warps"] >= 2
    big = choose_tiles("cell", {"D": 256, "B": 4}, H100)           # 4 * 256 * 256 * 2 bytes = 512 KiB
    assert big["RESIDENT"] == 0
    fp32 = choose_tiles("cell", {"D": 128, "B": 4, "RB": 8}, H100)  # tf32x3 halves: 4 * 128 * 128 * 8 = 512 KiB
    assert fp32["RESIDENT"] == 0
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
    assert labels & {"v_cover", "v_cover_bwd"} and labels & {"regs", "regs_bwd", "regs_block", "regs_block_bwd"}
    message = str(info.value)
    assert message.startswith("recurrent: no tiles for B=4 T=4096 H=16 K=512 V=512")
    assert "v_cover_bwd: BV_bwd == VP or SPLIT == 1 and V % BV_bwd == 0" in message
    # with tiling allowed the same state fits
    assert choose_tiles("recurrent", {"K": 512, "V": 512}, H100)["BV"] <= 64


def test_a_chunked_state_beyond_one_tile_of_K_names_the_constraint():
    with pytest.raises(TilesInfeasible) as info:
        choose_tiles("chunked", {"K": 512, "V": 128}, H100)
    assert info.value.labels == ["k_whole"]


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
    assert text.startswith("chunked: (estimated") and "ms forward + backward" in text
    assert f"  shared: BT={t['BT']}, BI={t['BI']}, BKS={t['BKS']}" in text
    assert f"  wy:     wy_BV={t['wy_BV']}, wy_warps={t['wy_warps']}, wy_stages={t['wy_stages']}" in text
    rec = choose_tiles("recurrent", GLA, INTERPRETER).explain()
    assert "interpreter model: smallest legal tiles" in rec and "8 >= 16 fails" in rec
    scan = choose_tiles("scan", {"D": 128}, H100).explain()
    assert scan.startswith("scan: BT=64, BD=32, num_warps=4, BT_bwd=64, BD_bwd=32, num_warps_bwd=4   (estimated")


def test_bad_arguments_are_errors():
    with pytest.raises(Exception, match="unknown kernel family 'dag'"):
        choose_tiles("dag", {}, H100)
    with pytest.raises(Exception, match="unknown dims or shape keywords \\['D'\\]"):
        choose_tiles("chunked", {"D": 4}, H100)
    with pytest.raises(Exception, match="unknown dims or shape keywords \\['split_k'\\]"):
        choose_tiles("chunked", {}, H100, split_k=True)
    with pytest.raises(Exception, match="dims must be positive, got K=0"):
        choose_tiles("chunked", {"K": 0}, H100)


# ---- the constraint files --------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_constraint_files_are_readable_and_round_trip(family):
    text = constraints_text(family)
    assert text.startswith(f"# {family}:")
    problem = family_problem(family, {}, H100)
    consts = FAMILIES[family].consts({"B": 4, "T": 4096, "H": 16, "K": 128, "V": 128, "D": 128, "RB": 2},
                                      FAMILIES[family].shape, H100)
    plain = parse_problem(text, consts)
    used = {v.name for v in problem.variables}                  # the kernels this shape launches
    assert problem.constraints == tuple(c for c in plain.constraints if {v.name for v in c.variables()} <= used)
    filled = choose_tiles(family, {}, H100).constraints()     # constants declared with their values
    assert "const WARP = 32" in filled and parse_problem(filled).constraints == problem.constraints


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_variables_are_the_launch_parameters_of_the_host_code(family):
    """Every variable a kernel of the family takes, under the host code's name."""
    names = {v.name for v in parse_problem(constraints_text(family), FAMILIES[family].consts(
        {"B": 4, "T": 4096, "H": 16, "K": 128, "V": 128, "D": 128, "RB": 2}, FAMILIES[family].shape, H100)).variables}
    expected = {"recurrent": {"BV", "BV_bwd", "CHUNK", "num_warps", "num_warps_bwd"},
                "cell": {"BB", "num_warps", "RESIDENT"},
                "scan": {"BT", "BD", "num_warps", "BT_bwd", "BD_bwd", "num_warps_bwd"},
                "chunked": {"BT", "BC", "BI", "BKS", "FUSE", "a_warps", "a_stages"}   # a (per-key scores): no V block
                | {f"{k}_{p}" for k in ("wy", "h", "o", "ho", "dv", "dh", "dqk", "wyb") for p in ("BV", "warps", "stages")}}
    assert names == expected[family]


def test_families_of_the_specs():
    fam = {p.stem: families_of(load(p)) for p in SPECS}
    assert list(fam["lstm"]) == ["cell"] and fam["lstm"]["cell"][1] == {"gates": 4, "states": 2, "save_dots": True}
    assert fam["gru"]["cell"][1]["gates"] == 3
    assert list(fam["gla"]) == ["chunked", "recurrent"]
    assert fam["gla"]["chunked"][1]["per_key"] is True and fam["mlstm"]["chunked"][1]["normaliser"] is True
    assert fam["delta_product"]["chunked"][1] == {"substeps": 2, "householder": True, "gated": True,
                                                   "per_key": False, "normaliser": False}
    assert fam["delta_net"]["chunked"][1]["gated"] is False
    assert fam["mamba2"]["chunked"][0]["K"] == 128                        # N, P default to 128
    assert launch_shape(load(ROOT / "specs" / "mamba2.rec"), "chunked")[0] == {"K": "N", "V": "P"}
    assert list(fam["softmax_scan"]) == ["scan", "recurrent"] and fam["softmax_scan"]["scan"][1]["elements"] == 2
    assert fam["first_order"]["recurrent"][1]["split"] is True
    assert fam["mlstm"]["recurrent"][1]["states"] == 1                  # n[K] lies on the row axis
    assert families_of(load(ROOT / "specs" / "gla.rec"), {"K": 64, "T": 100})["chunked"][0]["K"] == 64


@pytest.mark.parametrize("spec", ["simple_gla", "retnet", "mamba2", "gla", "mlstm", "delta_net", "gated_delta_net",
                                  "delta_product"])
def test_the_chunked_shape_keywords_agree_with_the_kernels(spec):
    """`recc check` (families_of) and the host code (the lowering's form) solve the same problem."""
    from recc.lower.chunked import _launch_shape, chunked_form
    rec = load(ROOT / "specs" / f"{spec}.rec")
    assert _launch_shape(rec, chunked_form(rec)) == families_of(rec)["chunked"][1]


# ---- recc check -----------------------------------------------------------------------------

def test_recc_check_prints_the_tiles(capsys):
    assert main(["check", "--hardware", "h100", str(ROOT / "specs" / "gated_delta_net.rec")]) == 0
    out = capsys.readouterr().out
    assert "tiles    for B=4 T=4096 H=16 K=128 V=128 on the H100 model" in out
    assert "chunked: (estimated" in out and "      shared: BT=" in out and "      dqk:    dqk_BV=" in out
    assert "recurrent: BV=" in out and "estimated" in out
    assert main(["check", str(ROOT / "specs" / "gla.rec")]) == 0
    assert "on the interpreter model (smallest legal tiles" in capsys.readouterr().out


def test_recc_check_json_includes_tiles(capsys):
    assert main(["check", "--json", "--hardware", "h100", str(ROOT / "specs" / "gla.rec")]) == 0
    data = json.loads(capsys.readouterr().out)
    tiles = data["tiles"]
    assert tiles["hardware"]["name"] == "H100" and tiles["hardware"]["sms"] == 132
    chunked = tiles["kernels"]["chunked"]
    assert {"BT", "BC", "BKS", "o_BV", "o_warps", "o_stages", "dqk_BV"} <= set(chunked["assignment"])
    assert set(chunked["terms"]) == {"a", "h", "o", "dv", "dh", "dqk"}    # per-key decays: the scores kernel a
    assert chunked["objective_unit"] == "seconds" and chunked["objective"] > 0 and isinstance(chunked["binding"], list)
    assert set(tiles["kernels"]) == {"chunked", "chunked, no gradient", "recurrent"}
    forward = tiles["kernels"]["chunked, no gradient"]   # the plan of a call without gradient: the forward's
    assert forward["shape"]["inference"] and set(forward["terms"]) == {"a", "h", "o", "ho"}
    assert forward["assignment"]["FUSE"] == 0 and forward["terms"]["ho"] == 0   # GLA: h and o, apart


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


def test_recc_check_tune_without_a_gpu_says_so(capsys):
    assert main(["check", "--tune", "4", str(ROOT / "specs" / "first_order.rec")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("recc: tuning times kernels on a GPU") and "Traceback" not in err
    assert main(["check", "--tune", "0", str(ROOT / "specs" / "first_order.rec")]) == 1
    assert "--tune takes the number of tile points" in capsys.readouterr().err


# ---- the generated host code launches what the solver chose ------------------------------------

class Spy:
    """Stands in for a generated module's `_launch_tiles`: records each call, returns the real choice
    with `changes` on top."""

    def __init__(self, changes=None):
        self.calls, self.changes = [], dict(changes or {})

    def __call__(self, family, dims, device, key, **shape):
        self.calls.append((family, dict(dims), str(device), key, shape))
        return {**launch_tiles(family, dims, device, key, **shape), **self.changes}


def test_the_scan_host_code_launches_the_solvers_tiles(tmp_path, monkeypatch):
    import torch
    import recc
    from oracle import assert_close_to_reference, random_arguments
    monkeypatch.setenv("RECC_CACHE_DIR", str(tmp_path))
    op = recc.load(ROOT / "specs" / "first_order.rec", strategy="scan")
    module, rec = op.module, load(ROOT / "specs" / "first_order.rec")
    module._SCAN_TILES.clear()
    module._LAUNCHED.clear()                              # the module is shared with other tests
    spy = Spy()
    monkeypatch.setattr(module, "_launch_tiles", spy)
    args = random_arguments(rec, 2, 40, 2, {"D": 20})
    assert_close_to_reference(op, rec, args, {})
    family, dims, device, key, shape = spy.calls[0]
    assert (family, dims, device, key) == ("scan", {"B": 2, "T": 64, "H": 2, "D": 20}, "cpu", spec_key(rec))
    assert shape == launch_shape(rec, "scan")[1] == families_of(rec)["scan"][1]
    bind = __import__("recc.signature", fromlist=["bind"]).bind
    call = lambda: bind(rec, tuple(args), {})             # a call's tiles stay in its memo: a fresh one each time
    _, _, block, bd, nw = module._scan_tiles(call())[:5]
    chosen = choose_tiles("scan", dims, INTERPRETER, **shape).assignment
    assert (block, bd, nw) == ({"BT": chosen["BT"], "BD": chosen["BD"]}, chosen["BD"], chosen["num_warps"])
    # another choice reaches the kernels (two channel tiles, blocks of 32), and an override wins over it
    module._LAUNCHED.clear()
    monkeypatch.setattr(module, "_launch_tiles", Spy({"BT": 32, "BD": 16}))
    assert module._scan_tiles(call())[2:4] == ({"BT": 32, "BD": 16}, 16)
    assert_close_to_reference(op, rec, args, {})
    module._SCAN_TILES.update(BD=32)
    assert module._scan_tiles(call())[2:4] == ({"BT": 32, "BD": 32}, 32)
    module._SCAN_TILES.clear()
    assert len(spy.calls) == 1                            # cached per shape


def test_the_chunked_host_code_launches_the_solvers_tiles(tmp_path, monkeypatch):
    import importlib.util
    import torch
    from recc.lower.chunked import lower_chunked
    from recc.signature import bind
    from oracle import random_arguments
    rec = load(ROOT / "specs" / "gated_delta_net.rec")
    path = tmp_path / "gdn_chunked.py"
    path.write_text(lower_chunked(rec).source)
    module_spec = importlib.util.spec_from_file_location("gdn_chunked_solver", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    spy = Spy()
    monkeypatch.setattr(module, "_launch_tiles", spy)
    args = random_arguments(rec, 1, 20, 2, {"K": 16, "V": 16})
    call = bind(rec, tuple(args), {})
    call.requires_grad = True
    outputs, finals, saved = module._forward(call)
    family, dims, device, key, shape = spy.calls[0]
    assert (family, dims, device, key) == ("chunked", {"B": 1, "T": 32, "H": 2, "K": 16, "V": 16}, "cpu", spec_key(rec))
    # fp32 inputs: 4-byte tiles; a backward follows: the training plan
    assert shape == dict(families_of(rec)["chunked"][1], elem_bytes=4, inference=False)
    chosen = choose_tiles("chunked", dims, INTERPRETER, **shape).assignment
    assert module._launch(call) == chosen and {"wy_BV", "wyb_BV", "BI"} <= set(chosen)
    module._TILES.update(BT=32, dqk_warps=2)                  # reaches the next call (a call keeps its tiles)
    again = bind(rec, tuple(args), {})
    again.requires_grad = True
    assert module._launch(again) == {**chosen, "BT": 32, "dqk_warps": 2}
    module._TILES.clear()
    module._launch(bind(rec, tuple(a.to(torch.bfloat16) for a in args), {}))   # no gradient: the forward's plan
    assert spy.calls[-1][4] == dict(families_of(rec)["chunked"][1], elem_bytes=2, inference=True)   # bf16: 2 bytes


def test_fp32_inputs_get_tiles_that_fit_shared_memory():
    """The chunked kernels stage their tl.dot operands in the kernels' type: fp32 inputs take twice
    bf16's shared memory for the same tiles (chunked_registers.py --dtype fp32 at the H200's bf16
    tiles: up to 231,432 B of the 232,448 a block may have, mLSTM's fwd_h). The solver counts the
    element size (EB in templates/chunked.constraints): with it, the fp32 tiles' shared memory as the
    constraints count it fits; at bf16's tiles it would not, for some spec."""
    over = []
    for spec in ("simple_gla", "gla", "delta_net", "gated_delta_net", "delta_product", "mlstm"):
        for hw in (H200, H100_PRESET):
            dims, shape = main_shape(spec, "chunked", K=128, V=128)
            fp32 = choose_tiles("chunked", dims, hw, **shape, elem_bytes=4)
            problem = fp32.problem
            assert all(c.holds(fp32.assignment) for c in problem.constraints if c.label.endswith("_smem"))
            bf16 = choose_tiles("chunked", dims, hw, **shape).assignment
            over += [(spec, c.label) for c in problem.constraints if c.label.endswith("_smem") and not c.holds(bf16)]
    assert over, "bf16's tiles fit every fp32 shared-memory bound: the test shows nothing"


def test_the_cell_host_code_launches_the_solvers_tiles(monkeypatch):
    import torch
    import triton
    import triton.language as tl
    from recc.lower.cell import lower_cell
    from recc.signature import bind
    from oracle import random_arguments
    rec = load(ROOT / "specs" / "lstm.rec")
    ns = {"torch": torch, "triton": triton, "tl": tl}
    exec(compile(lower_cell(rec).source, "<cell lstm>", "exec"), ns)
    spy = Spy()
    ns["_launch_tiles"] = spy
    args = random_arguments(rec, 3, 5, 2, {"D": 8})
    call = bind(rec, tuple(args), {})
    grid, meta, _ = ns["_cell_launch"](call, backward=False, save_dots=True)
    family, dims, device, key, shape = spy.calls[0]
    assert (family, dims, device, key) == ("cell", {"B": 3, "T": 8, "H": 2, "D": 8, "RB": 4}, "cpu", spec_key(rec))
    assert shape == families_of(rec)["cell"][1]
    chosen = choose_tiles("cell", dims, INTERPRETER, **shape).assignment
    assert (meta["BB"], meta["num_warps"], meta["W_RESIDENT"]) == (chosen["BB"], chosen["num_warps"],
                                                                    bool(chosen["RESIDENT"]))
    assert grid == (2, 1)
    ns["_cell_tuning"]["num_warps"] = 2
    assert ns["_cell_launch"](call, backward=True, save_dots=True)[1]["num_warps"] == 2


def test_the_recurrent_host_code_launches_the_solvers_tiles(tmp_path, monkeypatch):
    import recc
    from recc.signature import bind
    from oracle import assert_close_to_reference, random_arguments
    monkeypatch.setenv("RECC_CACHE_DIR", str(tmp_path))
    rec = load(ROOT / "specs" / "gla.rec")
    op = recc.load(ROOT / "specs" / "gla.rec", strategy="recurrent")
    module = op.module
    module.TILES.clear()
    module._LAUNCHED.clear()                              # the module is shared with other tests
    spy = Spy({"BV": 16, "BV_bwd": 16, "CHUNK": 8})       # the interpreter's own choice, whatever it becomes
    monkeypatch.setattr(module, "_launch_tiles", spy)
    args = random_arguments(rec, 2, 13, 2, {"K": 8, "V": 24})
    assert_close_to_reference(op, rec, args, {})
    family, dims, device, key, shape = spy.calls[0]
    assert (family, dims, device, key) == ("recurrent", {"B": 2, "T": 16, "H": 2, "K": 8, "V": 24}, "cpu",
                                           spec_key(rec))
    assert shape == families_of(rec)["recurrent"][1]
    call = bind(rec, tuple(args), {})
    chosen = module._launch(call)
    assert chosen == {**choose_tiles("recurrent", dims, INTERPRETER, **shape).assignment, "BV": 16, "BV_bwd": 16,
                      "CHUNK": 8}
    assert module._tiles(call.dims, chosen) == (8, 16, 2)               # V = 24 in two column tiles of 16
    module.TILES.update(BV=8)
    call = bind(rec, tuple(args), {})                                   # the next call (a call keeps its tiles)
    assert module._tiles(call.dims, module._launch(call)) == (8, 8, 3)  # an override wins
    module.TILES.clear()


def test_tune_spec_times_the_best_points_through_the_op_and_the_host_code_then_launches_the_winner(
        tmp_path, monkeypatch):
    """`recc check --tune N` on the CPU interpreter with a fake clock: every point runs through the
    generated op (its overrides set), the fastest is cached, and the host code launches it."""
    from recc.runtime import tune_spec
    monkeypatch.setenv("RECC_CACHE_DIR", str(tmp_path))
    path = ROOT / "specs" / "first_order.rec"
    rec = load(path)
    sizes = {"B": 1, "T": 16, "H": 1, "D": 16}
    dims, shape = families_of(rec, sizes)["scan"]
    points = choose_tiles("scan", dims, INTERPRETER, **shape).candidates(2)
    clock = iter([2.0, 1.0])                                 # the model's second choice runs faster
    timed = []
    best = tune_spec(path, 2, "scan", report=timed.append, device="cpu", dims=sizes,
                     timer=lambda fn: (fn(), next(clock))[1])
    assert best == points[1] != points[0] and len(timed) == 2
    assert launch_tiles("scan", dims, "cpu", spec_key(rec), **shape) == points[1]


@pytest.mark.parametrize("hw", ["h100", "h200", "a100", "interpreter"])
def test_every_chunked_spec_has_tiles_at_small_and_large_dims(hw):
    """The measured constraints must not leave a shape without tiles: on the H200 model, chunks of 64 for
    scalar decays (plain_chunk) and V blocks of 64 at chunks of 64 (wgmma_o, wgmma_dv) left K = V = 32
    with none (the bench's reference check at B=1 T=128 H=2 K=V=32 raised TilesInfeasible)."""
    from recc.tiles import hardware, launch_shape
    for spec in ("simple_gla", "retnet", "mamba2", "mlstm", "gla", "delta_net", "gated_delta_net", "delta_product"):
        rec = recc.load_spec(ROOT / "specs" / f"{spec}.rec")
        family_dims, shape = launch_shape(rec, "chunked")
        for KV in (16, 32, 64, 128, 256):
            for T in (16, 128, 300, 4096):
                dims = {"B": 1, "T": T, "H": 2} | {k: KV for k, v in family_dims.items() if isinstance(v, str)}
                t = choose_tiles("chunked", dims, hardware(hw), **shape)
                if hw in ("h100", "h200") and t["BT"] >= 64:
                    assert t["o_BV"] >= 64 and t["dv_BV"] >= 64, (spec, KV, T, t.assignment)
