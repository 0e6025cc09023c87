"""Stage 6, tile: the launch parameters of each kernel family, from an integer constraint problem.

    choose_tiles(family, dims, hw, **shape) -> Tiles      one kernel family, one call shape
    launch_tiles(family, dims, device, **shape) -> dict    the same, cached, for host code at call time
    tiles_for_spec(rec, hw=None, dims=None) -> {family: Tiles | TilesInfeasible}
    tune(tiles, run, n=8) -> dict                          time the n best points on the GPU, cache the winner

A family's variables and constraints are text, `templates/<family>.constraints` (the
solver's text form, `recc.solver.parse_problem`), whose constants are filled in from
the dims and the hardware model (`recc.hardware`); users can read and edit them. The
objective is the family's cost model below, in seconds:

    max(bytes / bandwidth, FLOPs / rate) / (share of the SMs' time with work)
      + waves * sequential steps * latency per step      (recurrent, cell, scan, the h loop)

with waves = ceil(programs / (SMs * programs per SM)), programs per SM from registers,
threads and shared memory, and a step's latency = a floor (barrier, reduction, loop) +
its arithmetic, per thread or at the SM's issue rate shared by co-resident programs.
On the interpreter model the objective is the sum of the variables: the smallest legal
tiles (fast CPU tests that run the multi-tile code paths).

Dims use each family's own names (`FAMILIES[f].dims`) plus B (sequences), T (steps per
sequence), H (heads); missing ones take the main benchmark shape (`MAIN`). Results are
deterministic: ties go to the smallest values in declaration order.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Callable

from . import ir
from .errors import ReccError
from .hardware import Hardware, hardware
from .resources import templates_dir
from .solver import Compare, Infeasible, Problem, Solution, feasible_points, format_problem, parse_problem

MAIN = {"B": 4, "T": 4096, "H": 16, "K": 128, "V": 128, "D": 128}  # benchmark main shape (DESIGN.md section 5)

# Cost-model constants (cycles unless noted). Rough, documented, meant to rank tiles, not to predict.
REG_BASE = 40            # registers per thread besides the tiles: addresses, loop state, inputs
SYNC_CYCLES = 100        # a barrier and a cross-warp exchange through shared memory
LEVEL_CYCLES = 30        # one level of a scan tree (a shuffle or a shared-memory round)
SUBSTITUTION_CYCLES = 60 # one row of the WY forward substitution
SCHEDULERS = 4           # warp schedulers (and tensor cores) per SM
ACCESS = 64              # bytes: HBM access granularity; a narrower row segment costs as much
MAX_PROGRAMS_PER_SM = 32
OPS = {"recurrent": 6, "recurrent_bwd": 12, "cell": 10, "scan": 4}  # fp32 ops per state element per step


class TilesInfeasible(ReccError):
    """No tile satisfies a family's constraints; `core` is a minimal conflicting subset."""

    def __init__(self, family: str, dims: dict, shape: dict, hw: Hardware, error: Infeasible):
        self.family, self.dims, self.shape, self.hardware = family, dims, shape, hw
        self.core = error.core
        self.labels = error.labels
        lines = [f"{family}: no tiles for {_dims_text(dims, shape)} on the {hw.name} model; these constraints conflict:"]
        lines += [f"  {c.label}: {c}" for c in self.core]
        super().__init__("\n".join(lines))

    def to_json(self) -> dict:
        return {"family": self.family, "infeasible": [f"{c.label}: {c}" for c in self.core]}


@dataclass(frozen=True)
class Tiles:
    """The chosen launch parameters of one kernel family for one call shape."""
    family: str
    assignment: dict          # variable -> value, in declaration order
    objective: float          # estimated seconds (GPU model) or the sum of the variables (interpreter)
    binding: list             # "label: constraint" of the constraints that keep the objective from going lower
    hardware: Hardware
    dims: dict
    shape: dict
    problem: Problem = field(repr=False, compare=False)
    solution: Solution = field(repr=False, compare=False)

    def __getitem__(self, name: str) -> int:
        return self.assignment[name]

    def candidates(self, n: int) -> list:
        """The n best feasible assignments, best first (the first is `assignment`): what `tune` times."""
        return [s.assignment for s in feasible_points(self.problem, n)]

    @property
    def estimate(self) -> str:
        if self.hardware.interpreter:
            return f"interpreter model: smallest legal tiles (sum {self.objective:g})"
        return f"estimated {_seconds(self.objective)} {FAMILIES[self.family].measures}"

    def explain(self) -> str:
        point = ", ".join(f"{k}={v}" for k, v in self.assignment.items())
        lines = [f"{self.family}: {point}   ({self.estimate})"]
        if not self.binding:
            lines.append("  no binding constraints")
        for entry in self.binding:
            lines.append(f"  binding {entry}")
            label = entry.split(":", 1)[0]
            for m in self.solution.moves:
                if label in m.violated:
                    at = _violation(self.problem, label, {**self.assignment, m.var: m.new})
                    better = (f"sum {m.objective:g}" if self.hardware.interpreter else _seconds(m.objective))
                    lines.append(f"    blocks {m.var} {m.old} -> {m.new} ({better}){at}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"family": self.family, "assignment": dict(self.assignment), "objective": self.objective,
                "objective_unit": "sum" if self.hardware.interpreter else "seconds", "binding": list(self.binding),
                "dims": dict(self.dims), "shape": dict(self.shape)}

    def constraints(self) -> str:
        """The family's constraint text with this call's constants filled in (editable, re-parsable)."""
        return format_problem(Problem(self.problem.variables, self.problem.constraints))

    def cache_key(self, spec_key: str = "") -> str:
        """Names one tuning result: spec, family, dims, shape, hardware."""
        text = json.dumps([spec_key, self.family, self.dims, self.shape, self.hardware.name, self.hardware.arch],
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _seconds(s: float) -> str:
    return f"{s * 1e3:.4g} ms" if s >= 1e-3 else f"{s * 1e6:.4g} us"


def _violation(problem: Problem, label: str, point: dict) -> str:
    c = next(c for c in problem.constraints if c.label == label)
    if isinstance(c, Compare):
        return f": {c.lhs.evaluate(point)} {c.op} {c.rhs.evaluate(point)} fails"
    return ""


def _dims_text(dims: dict, shape: dict) -> str:
    text = " ".join(f"{k}={v}" for k, v in dims.items())
    return text + "".join(f" {k}={v}" for k, v in shape.items())


# ---- cost-model pieces ----------------------------------------------------------------------

def _row_bytes(elems: int, size: int = 2) -> int:
    """Bytes moved to read a row segment of `elems` values (bf16 by default)."""
    return -(-elems * size // ACCESS) * ACCESS


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _per_sm(threads: int, regs: float, smem: int, hw: Hardware) -> int:
    """Programs resident on one SM at once (registers allocated in units of 8 per thread)."""
    regs = -(-math.ceil(regs) // 8) * 8
    fit = min(hw.regs_per_sm // (regs * threads), hw.max_threads_per_sm // threads, MAX_PROGRAMS_PER_SM)
    if smem:
        fit = min(fit, hw.smem_per_sm // smem)
    return max(fit, 1)


def _waves(programs: int, per_sm: int, hw: Hardware) -> int:
    return -(-programs // (hw.sms * per_sm))


def _sharing(programs: int, per_sm: int, hw: Hardware) -> int:
    """Programs sharing one SM's issue slots while they run."""
    return min(per_sm, -(-programs // hw.sms))


def _throughput(bytes_: float, flops: float, programs: int, hw: Hardware, rate: float) -> float:
    """max(bytes / bandwidth, FLOPs / rate), over the share of the SMs' time that has work
    (programs spread evenly: ceil(programs / SMs) rounds on the busiest SM)."""
    busy = programs / (hw.sms * -(-programs // hw.sms))
    return max(bytes_ / hw.bandwidth, flops / rate) / busy


def _step(ops: float, threads: int, sharing: int, num_warps: int, hw: Hardware) -> float:
    """Seconds of one dependent step: the latency floor, a barrier when the step's reductions
    cross warps, and its arithmetic: per thread, or at the SM's issue rate (SCHEDULERS warp
    instructions per cycle) shared by `sharing` programs."""
    sync = 0 if num_warps == 1 else SYNC_CYCLES + 20 * math.log2(num_warps)
    compute = max(ops / threads, sharing * ops / (hw.warp_size * SCHEDULERS))
    return hw.step_latency + (sync + compute) / hw.clock_hz


# ---- families -------------------------------------------------------------------------------

def _limits(hw: Hardware) -> dict:
    return {"WARP": hw.warp_size, "MAX_REGS": hw.max_regs_per_thread, "REGS_BLOCK": hw.regs_per_block,
            "SMEM_BLOCK": hw.smem_per_block, "L2": hw.l2_bytes, "REG_BASE": REG_BASE}


def recurrent_consts(d: dict, s: dict, hw: Hardware) -> dict:
    return {"K": d["K"], "V": d["V"], "KP": _pow2(d["K"]), "VP": _pow2(d["V"]), "STATES": s["states"],
            "SPLIT": int(s["split"]), **_limits(hw)}


def recurrent_time(a: dict, c: dict, d: dict, s: dict, hw: Hardware) -> float:
    """Forward + backward (replay and reverse walk: two passes over T). A program holds
    STATES [KP, BV] tiles; per step it reads `row_inputs` [K] and `col_inputs` [BV] vectors
    and writes `outputs` [BV] (bf16), the backward also writes fp32 partial row gradients."""
    BV, KP = a["BV"], c["KP"]
    tiles = -(-d["V"] // BV)
    programs = d["B"] * d["H"] * tiles
    elems = c["STATES"] * KP * BV
    total = 0.0
    for warps, temps, ops, passes in ((a["num_warps"], c["STATES"] + 1, OPS["recurrent"], 1),
                                      (a["num_warps_bwd"], 2 * c["STATES"] + 2, OPS["recurrent_bwd"], 2)):
        threads = hw.warp_size * warps
        per_sm = _per_sm(threads, temps * KP * BV / threads + REG_BASE, 0, hw)
        step = _step(elems * ops, threads, _sharing(programs, per_sm, hw), warps, hw)
        total += passes * _waves(programs, per_sm, hw) * d["T"] * step
    row = s["row_inputs"] * _row_bytes(d["K"]) * tiles
    col = (s["col_inputs"] + s["outputs"]) * _row_bytes(min(BV, d["V"])) * tiles
    steps = d["T"] * d["B"] * d["H"]
    fwd_bytes = steps * (row + col)
    bwd_bytes = 2 * fwd_bytes + steps * s["row_inputs"] * _row_bytes(d["K"], 4) * tiles
    return total + _throughput(fwd_bytes + bwd_bytes, 0, programs, hw, hw.vector_flops)


def cell_consts(d: dict, s: dict, hw: Hardware) -> dict:
    DP = max(16, _pow2(d["D"]))
    return {"D": d["D"], "DP": DP, "NP": max(16, _pow2(d["B"])), "G": s["gates"], "STATES": s["states"],
            "R_BYTES": s["gates"] * DP * DP * 2, "H": d["H"], **_limits(hw)}


def cell_time(a: dict, c: dict, d: dict, s: dict, hw: Hardware) -> float:
    """Forward. Per step and program: G tl.dot's [BB, DP] x [DP, DP] (R from shared memory,
    or from L2 when not resident), then ~OPS['cell'] ops per gate and state element."""
    BB, warps, DP = a["BB"], a["num_warps"], c["DP"]
    threads = hw.warp_size * warps
    programs = d["H"] * -(-d["B"] // BB)
    elems = (c["STATES"] + c["G"]) * BB * DP
    smem = a["RESIDENT"] * c["R_BYTES"] + BB * DP * 2
    per_sm = _per_sm(threads, elems / threads + REG_BASE, smem, hw)
    sharing = _sharing(programs, per_sm, hw)
    tensor_eff = min(1.0, warps * sharing / SCHEDULERS)
    dots = sharing * 2 * BB * DP * DP * c["G"] / (hw.tensor_flops / hw.sms) / tensor_eff
    weights = 0 if a["RESIDENT"] else sharing * c["R_BYTES"] / (hw.l2_bandwidth / hw.sms)
    step = _step(elems * OPS["cell"], threads, sharing, warps, hw) + dots + weights
    bytes_ = d["B"] * d["T"] * d["H"] * d["D"] * (c["G"] * 2 + c["STATES"] * 4 + 2)
    return _waves(programs, per_sm, hw) * d["T"] * step + _throughput(bytes_, 0, programs, hw, hw.vector_flops)


def scan_consts(d: dict, s: dict, hw: Hardware) -> dict:
    return {"D": d["D"], "DP": max(16, _pow2(d["D"])), "TP": max(16, _pow2(d["T"])), "ELEMS": s["elements"],
            "LOADS": s["loads"], **_limits(hw)}


def scan_time(a: dict, c: dict, d: dict, s: dict, hw: Hardware) -> float:
    """Forward. Per block: a log2(BT)-level scan tree over ELEMS [BT, BD] tiles, then the
    carry; blocks are sequential within a program (the next block's loads prefetched)."""
    BT, BD, warps = a["BT"], a["BD"], a["num_warps"]
    threads = hw.warp_size * warps
    programs = d["B"] * d["H"] * -(-d["D"] // BD)
    levels = max(1, int(math.log2(BT)))
    regs = (2 * c["LOADS"] + 2 * c["ELEMS"]) * BT * BD / threads + REG_BASE
    per_sm = _per_sm(threads, regs, c["ELEMS"] * BT * BD * 4, hw)
    ops = c["ELEMS"] * BT * BD * OPS["scan"] * levels
    block = _step(ops, threads, _sharing(programs, per_sm, hw), warps, hw) + levels * LEVEL_CYCLES / hw.clock_hz
    blocks = -(-d["T"] // BT)
    bytes_ = d["B"] * d["T"] * d["H"] * -(-d["D"] // BD) * _row_bytes(min(BD, d["D"])) * (c["LOADS"] + s["outputs"])
    return _waves(programs, per_sm, hw) * blocks * block + _throughput(bytes_, 0, programs, hw, hw.vector_flops)


def chunked_consts(d: dict, s: dict, hw: Hardware) -> dict:
    return {"K": d["K"], "V": d["V"], "KP": _pow2(d["K"]), "VP": _pow2(d["V"]), "NS": s["substeps"],
            "HH": int(s["householder"]), "GATED": int(s["gated"]), "SPLIT_K": int(s["split_k"]), **_limits(hw)}


def chunked_time(a: dict, c: dict, d: dict, s: dict, hw: Hardware) -> float:
    """Forward: the h kernel (sequential over the chunks of a sequence, one program per
    (sequence, head, V tile)), the o kernel (one program per (chunk, head, V tile)) and,
    with Householder transitions, the WY kernel (a BT-row forward substitution per chunk)."""
    BT, BK, BV, warps, stages = a["BT"], a["BK"], a["BV"], a["num_warps"], a["num_stages"]
    threads = hw.warp_size * warps
    hh = 2 if c["HH"] else 1
    chunks = -(-d["T"] * c["NS"] // BT)            # per sequence
    vt, kt = -(-d["V"] // BV), -(-d["K"] // BK)
    per_tc = hw.tensor_flops / hw.sms             # one SM's tensor cores

    # h: the state [BK, BV] carried over chunks
    programs = d["B"] * d["H"] * vt * kt
    per_sm = _per_sm(threads, BK * BV / threads + REG_BASE, stages * (BT * BK + BT * BV) * 2 + BK * BV * 2, hw)
    sharing = _sharing(programs, per_sm, hw)
    eff = min(1.0, warps * sharing / SCHEDULERS)
    flops = hh * 2 * BT * BK * BV
    moved = (BT * (BK + BV) + BK * BV) * 2
    chunk = (hw.step_latency + (0 if warps == 1 else SYNC_CYCLES / hw.clock_hz)
             + sharing * (flops / per_tc / eff + moved / (hw.bandwidth / hw.sms))
             + (hw.memory_latency if stages == 1 else 0))
    h = _waves(programs, per_sm, hw) * chunks * chunk

    # o: per chunk, q h + (q k^T masked) v
    programs = d["B"] * d["H"] * chunks * vt
    flops = programs * (2 * BT * BK * BV * kt + 2 * BT * BT * BK * kt + 2 * BT * BT * BV)
    moved = programs * ((2 * BT * BK + BK * BV) * kt + 2 * BT * BV) * 2
    per_sm = _per_sm(threads, (BT * BV + (1 + c["GATED"]) * BT * BT + BT * BK) / threads + REG_BASE, (2 * BT * BK + BT * BV + BK * BV + BT * BT) * 2, hw)
    eff = min(1.0, warps * _sharing(programs, per_sm, hw) / SCHEDULERS)
    o = (_throughput(moved, flops, programs, hw, hw.tensor_flops * eff)
         + _waves(programs, per_sm, hw) * (hw.step_latency + hw.memory_latency))

    wy = 0.0
    if c["HH"]:
        programs = d["B"] * d["H"] * chunks
        flops = programs * (2 * BT * BT * d["K"] + 2 * BT * BT * (d["K"] + d["V"]))
        moved = programs * BT * (2 * d["K"] + 2 * d["V"]) * 2
        wy = (_throughput(moved, flops, programs, hw, hw.tensor_flops * eff)
              + _waves(programs, 1, hw) * BT * SUBSTITUTION_CYCLES / hw.clock_hz)
    return h + o + wy


@dataclass(frozen=True)
class Family:
    name: str
    dims: tuple               # dim names of this family, besides B, T, H
    shape: dict               # shape keywords and their defaults
    consts: Callable          # (dims, shape, hw) -> constants of the .constraints text
    time: Callable            # (assignment, consts, dims, shape, hw) -> seconds
    measures: str             # what the estimate covers


FAMILIES = {
    "recurrent": Family("recurrent", ("K", "V"),
                        {"split": True, "states": 1, "row_inputs": 2, "col_inputs": 1, "outputs": 1},
                        recurrent_consts, recurrent_time, "forward + backward"),
    "cell": Family("cell", ("D",), {"gates": 4, "states": 2}, cell_consts, cell_time, "forward"),
    "scan": Family("scan", ("D",), {"elements": 2, "loads": 2, "outputs": 1}, scan_consts, scan_time, "forward"),
    "chunked": Family("chunked", ("K", "V"), {"substeps": 1, "householder": False, "gated": True, "split_k": False},
                      chunked_consts, chunked_time, "forward"),
}


@functools.lru_cache(maxsize=None)
def constraints_text(family: str) -> str:
    """The text of `templates/<family>.constraints`."""
    return (templates_dir() / f"{family}.constraints").read_text()


@functools.lru_cache(maxsize=256)
def _parsed(family: str, consts: tuple) -> Problem:
    return parse_problem(constraints_text(family), dict(consts))


def family_problem(family: str, dims: dict | None = None, hw: Hardware | None = None, **shape) -> Problem:
    """The family's constraint problem for these dims, with its objective."""
    return _setup(family, dims, hw, shape)[0]


def _setup(family: str, dims: dict | None, hw, shape: dict):
    if family not in FAMILIES:
        raise ReccError(f"unknown kernel family '{family}', expected one of: {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    hw = hardware(hw)
    known = set(fam.dims) | {"B", "T", "H"}
    unknown = sorted(set(dims or {}) - known) + sorted(set(shape) - set(fam.shape))
    if unknown:
        raise ReccError(f"{family} tiles: unknown dims or shape keywords {unknown}; dims are {sorted(known)}, "
                        f"shape keywords {sorted(fam.shape)}")
    d = {k: int((dims or {}).get(k, MAIN[k])) for k in ("B", "T", "H") + fam.dims}
    bad = [k for k, v in d.items() if v < 1]
    if bad:
        raise ReccError(f"{family} tiles: dims must be positive, got {', '.join(f'{k}={d[k]}' for k in bad)}")
    s = {**fam.shape, **shape}
    consts = fam.consts(d, s, hw)
    base = _parsed(family, tuple(sorted(consts.items())))
    if hw.interpreter:
        objective = lambda a: sum(a.values())
    else:
        objective = lambda a: fam.time(a, consts, d, s, hw)
    return Problem(base.variables, base.constraints, objective), d, s, hw


def choose_tiles(family: str, dims: dict | None = None, hw: Hardware | str | None = None, **shape) -> Tiles:
    """The best launch parameters of `family` for one call shape on `hw` (see the module docstring).

    dims: the family's dims (`FAMILIES[family].dims`) and B, T, H; missing ones from `MAIN`.
    shape: the family's shape keywords (`FAMILIES[family].shape`), e.g. `split=False`.
    Raises TilesInfeasible, naming a minimal set of conflicting constraints, if none fits."""
    problem, d, s, hw = _setup(family, dims, hw, shape)
    try:
        best = feasible_points(problem, 1)[0]
    except Infeasible as error:
        raise TilesInfeasible(family, d, s, hw, error) from None
    return Tiles(family, dict(best.assignment), best.objective, list(best.binding), hw, d, s, problem, best)


def launch_tiles(family: str, dims: dict, device=None, spec_key: str = "", **shape) -> dict:
    """`choose_tiles(...).assignment` for generated host code at call time: cached per
    (family, dims, shape, hardware), a tuned winner (`tune`, under `spec_key`) preferred.
    `device` is the inputs' device (a CPU device gives the interpreter model)."""
    return dict(_launch(family, tuple(sorted(dims.items())), hardware(device), spec_key, tuple(sorted(shape.items()))))


@functools.lru_cache(maxsize=1024)
def _launch(family: str, dims: tuple, hw: Hardware, spec_key: str, shape: tuple) -> dict:
    tiles = choose_tiles(family, dict(dims), hw, **dict(shape))
    return tuned(tiles, spec_key) if spec_key else tiles.assignment


# ---- a spec's families ----------------------------------------------------------------------

def families_of(rec: ir.Recurrence, dims: dict | None = None) -> dict:
    """{family: (dims, shape)} for the kernel families `rec`'s strategies use, at representative
    dims: `dims` (spec dim names, and B, T, H), else the spec's fixed sizes, else 128 (`MAIN`)."""
    from .analysis import analyse
    facts = analyse(rec)
    size = {**{d.name: 128 for d in rec.dims}, **rec.fixed_dims, **(dims or {})}
    call = {k: int(size.get(k, MAIN[k])) for k in ("B", "T", "H")}
    n = lambda dim: dim if isinstance(dim, int) else size[dim]
    matrices = [s for s in rec.states if len(s.shape) == 2]
    vectors = [s for s in rec.states if len(s.shape) == 1]
    out = {}
    stuck = [s for s in facts.states if not s.affine and not s.monoid]
    cell_params = [p for p in rec.params if len(p.shape) >= 2 and p.shape[-1] == p.shape[-2]]
    if stuck and vectors and cell_params:   # as recc.plan.candidates: a nonlinear cell goes to `cell` first
        gates = sum(math.prod(n(x) for x in p.shape[:-2]) for p in cell_params)
        out["cell"] = ({**call, "D": n(vectors[0].shape[0])}, {"gates": gates, "states": len(rec.states)})
    strategies = [s for s in facts.strategies if s in FAMILIES]
    if "chunked" in strategies and len(matrices) == 1:
        S = facts.state(matrices[0].name)
        K, V = matrices[0].shape
        out["chunked"] = ({**call, "K": n(K), "V": n(V)},
                          {"substeps": S.householder_count or 1, "householder": S.transition == "householder_product",
                           "gated": S.gate != "none"})
    if "scan" in strategies and vectors:
        groups = {s.monoid for s in facts.states if s.monoid}
        linear = [s for s in facts.states if s.affine]
        elements = 2 * len(linear) + sum(len(rec.monoid(g).elements) for g in groups)
        loads = sum(1 for i in rec.inputs if i.shape)
        out["scan"] = ({**call, "D": n(vectors[0].shape[0])}, {"elements": elements, "loads": max(loads, 1)})
    # the recurrent lowering tiles the state's last dim: no [D, D] param (a cell's R), one matrix
    # shape, and that matrix not square over one dim
    shapes = {tuple(s.shape) for s in matrices}
    if "recurrent" in strategies and not cell_params and len(shapes) <= 1 and all(a != b for a, b in shapes):
        if matrices:
            K, V = matrices[0].shape
            cols = [s for s in rec.states if s.shape and s.shape[-1] == V]
            split = True      # a matrix state's columns are independent (S^T q, householder(k) @ S sum over K)
        elif vectors:
            K, V = 1, vectors[0].shape[0]
            cols = vectors
            split = facts.diagonal_jacobian   # a step reading other channels sums over the state's dim
        else:
            K, V, cols, split = 1, 1, [], False
        row = lambda t: bool(t.shape) and t.shape[-1] == K and K != 1
        col = lambda t: bool(t.shape) and t.shape[-1] == V
        stacked = lambda t: math.prod(n(x) for x in t.shape[:-1])
        out["recurrent"] = ({**call, "K": n(K), "V": n(V)},
                            {"split": bool(split), "states": max(len(cols), 1),
                             "row_inputs": sum(stacked(t) for t in rec.inputs if row(t)),
                             "col_inputs": sum(stacked(t) for t in rec.inputs if col(t)),
                             "outputs": max(1, sum(1 for t in rec.outputs if col(t)))})
    return out


def tiles_for_spec(rec: ir.Recurrence, hw: Hardware | str | None = None, dims: dict | None = None) -> dict:
    """{family: Tiles} for the kernel families `rec`'s strategies use, best strategy first;
    a family with no feasible tiles maps to its TilesInfeasible (which says why)."""
    hw = hardware(hw)
    out = {}
    for family, (d, shape) in families_of(rec, dims).items():
        try:
            out[family] = choose_tiles(family, d, hw, **shape)
        except TilesInfeasible as error:
            out[family] = error
    return out


def tiles_text(rec: ir.Recurrence, hw: Hardware | str | None = None, dims: dict | None = None) -> str:
    """What `recc check` prints: the hardware model, the shape, each family's point and binding constraints."""
    hw = hardware(hw)
    size = {**{d.name: 128 for d in rec.dims}, **rec.fixed_dims, **(dims or {})}
    shape = " ".join(f"{k}={size.get(k, MAIN[k])}" for k in ("B", "T", "H")) + "".join(
        f" {d.name}={size[d.name]}" for d in rec.dims)
    lines = [f"  tiles    for {shape} on the {hw.describe()}"]
    for family, t in tiles_for_spec(rec, hw, dims).items():
        lines += ["    " + line for line in (str(t) if isinstance(t, TilesInfeasible) else t.explain()).split("\n")]
    return "\n".join(lines)


def tiles_json(rec: ir.Recurrence, hw: Hardware | str | None = None, dims: dict | None = None) -> dict:
    """What `recc check --json` adds under "tiles"."""
    hw = hardware(hw)
    return {"hardware": hw.to_json(),
            "kernels": {f: t.to_json() for f, t in tiles_for_spec(rec, hw, dims).items()}}


# ---- empirical tuning -----------------------------------------------------------------------

class TuningNeedsGPU(ReccError):
    pass


def tune(tiles: Tiles, run: Callable[[dict], object], n: int = 8, *, spec_key: str = "",
         timer: Callable[[Callable[[], object]], float] | None = None, cache: bool = True) -> dict:
    """Time `run(assignment)` at the n best feasible points and return the fastest assignment.

    `run` launches the kernel(s) with those tiles (a lowering compiled for them). `timer`
    takes a no-argument callable and returns its time (default: `triton.testing.do_bench`,
    median ms, which needs a GPU: without one this raises TuningNeedsGPU). Points whose
    launch raises (e.g. out of resources) are skipped. The winner is cached under
    `cache_dir()/tiles/<tiles.cache_key(spec_key)>.json`; `tuned(tiles, spec_key)` reads it back."""
    if timer is None:
        import torch
        if not torch.cuda.is_available():
            raise TuningNeedsGPU("tuning times kernels on a GPU, and torch.cuda.is_available() is False here; "
                                 "the tiles stay the cost model's choice")
        from triton.testing import do_bench
        timer = lambda fn: do_bench(fn, return_mode="median")
    timings, failures = [], []
    for point in tiles.candidates(n):
        try:
            timings.append((timer(lambda: run(point)), point))
        except Exception as error:  # noqa: BLE001 - a point that does not launch is skipped
            failures.append((point, f"{type(error).__name__}: {error}"))
    if not timings:
        raise ReccError(f"{tiles.family}: none of the {n} best tile points ran: {failures[0][1]}")
    best_time, best = min(timings, key=lambda x: x[0])
    if cache:
        from .runtime import write_atomic
        record = {"assignment": best, "time": best_time, "model": tiles.assignment,
                  "timings": [{"assignment": p, "time": t} for t, p in timings],
                  "failed": [{"assignment": p, "error": e} for p, e in failures]}
        write_atomic(_tuned_path(tiles, spec_key), json.dumps(record, indent=1))
    return best


def _tuned_path(tiles: Tiles, spec_key: str):
    from .runtime import cache_dir
    return cache_dir() / "tiles" / f"{tiles.cache_key(spec_key)}.json"


def tuned(tiles: Tiles, spec_key: str = "") -> dict:
    """The cached winner of `tune` for these tiles, if feasible, else `tiles.assignment`."""
    path = _tuned_path(tiles, spec_key)
    try:
        point = json.loads(path.read_text())["assignment"]
    except (OSError, ValueError, KeyError):
        return dict(tiles.assignment)
    if set(point) == set(tiles.assignment) and tiles.problem.is_feasible(point):
        return dict(point)
    return dict(tiles.assignment)
