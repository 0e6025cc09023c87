"""Stage 6, tile: the launch parameters of each kernel family, from an integer constraint problem.

    choose_tiles(family, dims, hw, **shape) -> Tiles      one kernel family, one call shape
    launch_tiles(family, dims, device, spec_key, **shape) -> dict
                                                           the same, cached: what generated host code launches with
    tiles_for_spec(rec, hw=None, dims=None) -> {family: Tiles | TilesInfeasible}
    tune(tiles, run, n=8) -> dict                          time the n best points on the GPU, cache the winner

A family's variables and constraints are text, `templates/<family>.constraints` (the
solver's text form, `recc.solver.parse_problem`), whose constants are filled in from
the dims and the hardware model (`recc.hardware`); users can read and edit them. The
variables are exactly the launch parameters the family's host code passes to its
kernels, under the same names (a kernel a spec does not launch leaves its variables out).
The objective is the family's cost model below, in seconds, a sum of terms, one per
kernel (chunked: wy, h, o, dv, dh, dqk, wyb) or per direction (recurrent, cell, scan:
forward and backward). A kernel's time (`_kernel`) is the longer of

    its SMs' throughput: every program's tensor-core FLOPs, HBM and L2 bytes and issued
        lane-ops at the SM's rates, and
    waves * one program's latency: per loop iteration its dependent chain (a latency floor,
        cross-warp sync, its own lane-ops and tl.dot's, its loads, the memory latency its
        pipeline stages do not hide), then its epilogue,

with waves = ceil(programs / (SMs * programs per SM)), programs per SM from registers,
threads and shared memory. How each family's code spends time beyond that (`CODE`:
cycles per dependent operation, the work of moving an element, register pressure) was
calibrated per family so that the H100 model picks, at the benchmark main shapes, the
tiles measured fastest on an H100 (tests/test_tiles.py pins them; the sweeps are in
`benchmarks/results/`). Terms that share no variable beyond a few (the chunk size, the K
block) are solved apart and combined exactly (`recc.solver.split_points`): seven kernels
of ~50 points each, not 50^7; any spec's families solve in well under 50 ms.

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
from .solver import Compare, Infeasible, Problem, Solution, Term, format_problem, parse_problem, split_points, sum_of

MAIN = {"B": 4, "T": 4096, "H": 16, "K": 128, "V": 128, "D": 128, "RB": 2}  # benchmark main shape (DESIGN.md 5)

# Cost-model constants (cycles unless noted). Rough, documented, meant to rank tiles, not to predict.
REG_BASE = 40            # registers per thread besides the tiles: addresses, loop state, inputs
SYNC_CYCLES = 75         # a barrier and a cross-warp exchange through shared memory
WARP_SYNC_CYCLES = 20    # ... and per doubling of the warps taking part
SCHEDULERS = 4           # warp schedulers (and tensor cores) per SM
TC_WARPS = 8             # warps that keep an SM's tensor cores busy: two per scheduler (one issues while
                         # the other waits on its mma's result)
ACCESS = 128             # bytes: a cache line; a narrower row segment costs as much (its other part is read
                         # by another program, too late to hit in L2)
MAX_PROGRAMS_PER_SM = 32
LAUNCH = 3e-6            # s: a kernel launch and its tail
LEVEL_CYCLES = 120       # scan: one level of the scan tree (a shuffle or a shared-memory round and its barrier)
HO_TC_WARPS = 4
UT_STEP = 0.4           # chunked: a forward-substitution step of the UT transform's diagonal blocks (a sum
                        # inside a warp, no barrier), in step latencies; a dependent tl.dot counts one
REDUCE_CYCLES = 150      # recurrent: per doubling of the warps, the latency of a step's reductions over K
                         # (the state tile is held [BK, BV]: K across warps, a reduction crosses them)
OPS = {"recurrent": 11, "recurrent_bwd": 50, "cell": 10, "cell_bwd": 20, "scan": 6}  # lane-ops per element per step


@dataclass(frozen=True)
class Code:
    """How a family's generated code spends a program's time, beyond its tiles' arithmetic and
    bytes (see `_kernel`). Calibrated per family against its GPU measurements (the points
    tests/test_tiles.py pins): they describe the kernels' code, not the hardware."""
    cpi: float = 1.0              # cycles per dependent lane-op in one thread's chain
    move_ops: float = 2.0         # lane-ops per 2-byte element loaded or stored (address, mask, conversion,
                                  # the move into a tl.dot operand's layout)
    iteration: float = 0.0        # cycles an iteration of a tile loop adds to a program's chain (addresses,
                                  # masks, the pipeline's barrier and bookkeeping)
    reg_comfort: float = 1e9      # registers per thread beyond which a program's own work slows in
                                  # proportion (spills; loads serialised for want of registers)
    warp_cycles: float = 0.0      # cycles an iteration adds per warp of the program (layout changes of
                                  # tl.dot operands and results through shared memory, which every warp
                                  # takes part in; operand tiles replicated across the warps of a small tile)
    load_wait: float = 1.0        # a load's latency as a multiple of the hardware's unloaded one (loads queue
                                  # behind those of the other programs on the SM)


CODE = {
    "recurrent": Code(cpi=1.0),
    "cell": Code(cpi=1.0),
    "scan": Code(cpi=1.0, move_ops=4.0, iteration=150.0),
    # chunked kernels with scalar decays (simple GLA, RetNet, Mamba2): fit to the exhaustive H200 sweep of simple
    # GLA's five kernels (benchmarks/tile_sweep.py, 300 points at BT = 64, 128; results/2026-12-03-h200-sweep-
    # s6-a.json) on a grid (benchmarks/calibrate.py --fit --fit-choice; cpi, move_ops, warp_cycles, load_wait,
    # reg_comfort): the solver's kernels, priced with the measured times, 1.051x the fastest combination (fit
    # by each kernel's pick instead, cpi=0.5 move_ops=12: 1.093x, dqk on V blocks of 32, 290 us, where 64
    # took 257; the constants before any fit, cpi=2 move_ops=12 reg_comfort=96: 1.315x)
    "chunked": Code(cpi=0.25, move_ops=3.0, reg_comfort=160.0, warp_cycles=200.0, load_wait=8.0),
    # chunked_norm (mLSTM: the normaliser state and max stabiliser, templates/chunked_norm.jinja): fit likewise to
    # its exhaustive sweep (200 points; results/2026-12-03-h200-sweep-s6-c.json): 1.089x (earlier: 2.096x)
    "chunked_norm": Code(cpi=0.25, move_ops=6.0, reg_comfort=160.0, warp_cycles=100.0, load_wait=8.0),
    # chunked_key (GLA: per-key decays, sub-chunked scores and gradients): grid-fit (calibrate.py --fit
    # --fit-choice: the solver's whole choice priced with the measured times) to GLA's exhaustive H200 sweep
    # with split diagonal blocks (1287 points; results/2026-12-03-h200-s7-sweep-gla.json), with dqk's
    # registers and shared memory as ptxas counts them: 1.083x the fastest combination (the earlier
    # constants, cpi=2 move_ops=12 reg_comfort=96: 1.47x; without the dqk fix the best fit was 1.157x)
    "chunked_key": Code(cpi=1.0, move_ops=12.0, reg_comfort=96.0, warp_cycles=0.0, load_wait=4.0),
    # chunked_householder (DeltaNet, gated DeltaNet, DeltaProduct): grid-fit (calibrate.py --fit --fit-choice)
    # to the five exhaustive H200 sweeps of the family (results/2026-12-03-h200-{sweep-delta_net,
    # sweep-gated_delta_net, sweep-delta_product-mlstm, sweep-s6-a, s8-sweep-gated_delta_net}.json; the last
    # one of today's UT transform): the solver's choice, priced with the measured times, 1.092 / 1.038 /
    # 1.027 / 1.022 / 1.014x the fastest combination (the constants before, cpi=0.25 move_ops=6
    # warp_cycles=200 load_wait=8 reg_comfort=96, fit to DeltaNet's sweep alone: 1.077 / 1.081 / 1.042 /
    # 1.059 / 1.050x; they put chunk_fwd_o at BT 32 on 4 warps, 195 us against 2 warps' 150). Fit on each
    # op's sweeps left out: DeltaNet 1.092x, DeltaProduct 1.027x, gated DeltaNet 1.098 / 1.144 / 1.135x.
    "chunked_householder": Code(cpi=0.25, move_ops=3.0, reg_comfort=160.0, warp_cycles=0.0, load_wait=4.0),
}


def chunked_code(householder: bool, per_key: bool = False, normaliser: bool = False) -> str:
    """The CODE entry of a chunked spec's kernels: householder transitions, per-key decays and the
    normaliser state generate different kernels, each calibrated on its own."""
    return ("chunked_householder" if householder else "chunked_key" if per_key
            else "chunked_norm" if normaliser else "chunked")


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
    terms: tuple = field(default=(), repr=False, compare=False)

    def __getitem__(self, name: str) -> int:
        return self.assignment[name]

    def candidates(self, n: int) -> list:
        """The n best feasible assignments, best first (the first is `assignment`): what `tune` times."""
        return [s.assignment for s in split_points(self.problem, self.terms, n)]

    def parts(self) -> dict:
        """{term: its share of the objective at the chosen point} (a kernel's or a direction's time)."""
        return {t.name: t.cost({v: self.assignment[v] for v in t.variables}) for t in self.terms}

    @property
    def label(self) -> str:
        """The family's name, and which plan where it has two (chunked: a call without gradient)."""
        return f"{self.family}, no gradient" if self.shape.get("inference") else self.family

    @property
    def estimate(self) -> str:
        if self.hardware.interpreter:
            return f"interpreter model: smallest legal tiles (sum {self.objective:g})"
        measures = "forward" if self.shape.get("inference") else FAMILIES[self.family].measures
        return f"estimated {_seconds(self.objective)} {measures}"

    def explain(self) -> str:
        """The point (a line per kernel where the family has several; a plan's kernels that do not
        run, e.g. h and o where FUSE = 1, left out), the estimate and the binding constraints with
        the moves they block."""
        groups = _kernel_groups(self.family, self.assignment)
        if len(groups) > 1 and not self.hardware.interpreter:
            parts = self.parts()
            if self.shape.get("inference"):
                idle = {t.name for t in self.terms if parts[t.name] == 0}
                used = {v for t in self.terms if t.name not in idle for v in t.variables}
                groups = {name: [k for k in names if k in used] for name, names in groups.items() if name not in idle}
            lines = [f"{self.label}: ({self.estimate})"]
            for name, names in groups.items():
                point = ", ".join(f"{k}={self.assignment[k]}" for k in names)
                at = f"   {_seconds(parts[name])}" if name in parts else ""
                lines.append(f"  {name + ':':<8}{point}{at}")
        else:
            point = ", ".join(f"{k}={v}" for k, v in self.assignment.items())
            lines = [f"{self.label}: {point}   ({self.estimate})"]
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
        out = {"family": self.family, "assignment": dict(self.assignment), "objective": self.objective,
               "objective_unit": "sum" if self.hardware.interpreter else "seconds", "binding": list(self.binding),
               "dims": dict(self.dims), "shape": dict(self.shape)}
        if not self.hardware.interpreter:
            out["terms"] = self.parts()
        return out

    def constraints(self) -> str:
        """The family's constraint text with this call's constants filled in (editable, re-parsable)."""
        return format_problem(Problem(self.problem.variables, self.problem.constraints))

    def cache_key(self, spec_key: str = "") -> str:
        """Names one tuning result: spec, family, dims, shape, hardware."""
        text = json.dumps([spec_key, self.family, self.dims, self.shape, self.hardware.name, self.hardware.arch],
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _kernel_groups(family: str, assignment: dict) -> dict:
    """{kernel: its variable names} for display: chunked's per-kernel prefixes, 'shared' first."""
    if family != "chunked":
        return {"all": list(assignment)}
    groups = {"shared": [k for k in assignment if "_" not in k]}
    for k in assignment:
        if "_" in k:
            groups.setdefault(k.split("_", 1)[0], []).append(k)
    return groups


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


def _pipelined_smem(stages: int, per_stage: int, epilogue: int) -> int:
    """Shared memory of a kernel whose loop's loads are pipelined over `stages` buffers and whose
    epilogue (after the loop) needs `epilogue` bytes: Triton reuses the loop's buffers there, so
    the larger of the two (ptxas on sm_90, Triton 3.6: simple GLA o and dv at BT 64, BKS 64, BV 128,
    8 warps: 64 / 96 KiB at 2 / 3 stages, i.e. 32 KiB a stage and nothing more; dqk likewise)."""
    return max(stages * per_stage, epilogue)


def _sync(warps: int) -> float:
    """Cycles of a barrier with a cross-warp exchange (none within one warp)."""
    return 0 if warps == 1 else SYNC_CYCLES + WARP_SYNC_CYCLES * math.log2(warps)


@functools.lru_cache(maxsize=16)
def _rates(hw: Hardware) -> tuple:
    """Per-SM rates `_kernel` uses, in seconds per unit: (FLOP on the tensor cores, HBM byte at the
    SM's share of the bandwidth, L2 byte, lane-op at the issue rate, cycle)."""
    return (hw.sms / hw.tensor_flops, hw.sms / hw.bandwidth, hw.sms / hw.l2_bandwidth,
            1.0 / (hw.warp_size * SCHEDULERS * hw.clock_hz), 1.0 / hw.clock_hz)


def _kernel(hw: Hardware, code: Code, *, programs: int, warps: int, elems: float, smem: float, iters: int = 1,
            stages: int = 1, loop: tuple = (0, 0, 0, 0, 0), once: tuple = (0, 0, 0, 0, 0),
            serial: float = 0.0, extra: float = 0.0, tc_warps: int = TC_WARPS) -> float:
    """Seconds of one launch. A program holds `elems` fp32 values in registers and `smem` bytes
    of shared memory; it runs `iters` iterations of `loop`, then `once` (its epilogue, or the
    prologue and epilogue of a state pass), each (tensor FLOPs, HBM bytes loaded, HBM bytes
    stored, L2 bytes, lane-ops): L2 bytes are loads of tiles other programs running at the same
    time read too (the same chunk's q and k in every V block). Stores cost bandwidth, not latency.

    The launch takes the longer of (1) its SMs' throughput: every program's FLOPs, bytes and
    lane-ops at the SM's rates (tensor cores busy with TC_WARPS resident warps, HBM at the SM's
    share of the bandwidth, L2, issue), and (2) waves of programs times one program's latency:
    per piece of work its dependent chain (the latency floor, cross-warp sync, its lane-ops at
    `code.cpi` per thread, slower with crowded registers, its tl.dot's on the tensor cores its
    own warps keep busy, its loads) plus the memory latency its pipeline does not hide (a
    loop's loads are issued `stages - 1` iterations early; the epilogue hides none).
    `serial`: cycles of latency an iteration's chain has besides (a scan tree's levels);
    `extra`: seconds one program spends besides (unhidden loads once per chunk)."""
    per_flop, per_byte, per_l2, per_op, cycle = _rates(hw)
    threads = hw.warp_size * warps
    regs = elems / threads + REG_BASE
    per_sm = _per_sm(threads, regs, smem, hw)
    sharing = min(per_sm, -(-programs // hw.sms))
    own_tc = per_flop / min(1.0, warps / tc_warps)                     # seconds per FLOP, one program alone
    sm_tc = per_flop / min(1.0, warps * sharing / tc_warps)            # ... with its co-resident programs
    crowding = max(1.0, regs / code.reg_comfort)
    per_lane = code.cpi * crowding * cycle / threads
    floor = hw.step_latency + (_sync(warps) + code.iteration + code.warp_cycles * warps) * cycle
    move = code.move_ops / 2

    flops, loads, stores, l2, ops = loop
    ops += move * (loads + stores + l2)
    chain = floor + ops * per_lane + crowding * flops * own_tc + loads * per_byte + l2 * per_l2 + serial * cycle
    busy = max(flops * sm_tc, (loads + stores) * per_byte + l2 * per_l2, ops * per_op)
    memory = hw.memory_latency * code.load_wait
    hidden = 0.0 if stages == 1 else min(memory, (stages - 1) * chain)
    latency = iters * (chain + memory - hidden)
    flops, loads, stores, l2, ops = once
    ops += move * (loads + stores + l2)
    chain = floor + ops * per_lane + crowding * flops * own_tc + loads * per_byte + l2 * per_l2
    tail = max(flops * sm_tc, (loads + stores) * per_byte + l2 * per_l2, ops * per_op)
    latency += chain + memory + extra
    throughput = -(-programs // min(hw.sms, programs)) * (iters * busy + tail)
    return LAUNCH + max(throughput, -(-programs // (hw.sms * per_sm)) * latency)


# ---- families -------------------------------------------------------------------------------

def _limits(hw: Hardware) -> dict:
    return {"WARP": hw.warp_size, "MAX_REGS": hw.max_regs_per_thread, "REGS_BLOCK": hw.regs_per_block,
            "SMEM_BLOCK": hw.smem_per_block, "L2": hw.l2_bytes, "REG_BASE": REG_BASE, "GPU": int(not hw.interpreter),
            "WGMMA": int(hw.arch.startswith("sm_90"))}


# recurrent ---------------------------------------------------------------------------------

RECURRENT_REG_STEPS = 2   # steps the backward replays at a time from its scratch (GLA's; see recc.lower.recurrent)


def recurrent_consts(d: dict, s: dict, hw: Hardware) -> dict:
    return {"K": d["K"], "V": d["V"], "KP": _pow2(d["K"]), "VP": _pow2(d["V"]), "STATES": s["states"],
            "SPLIT": int(s["split"]), "TP": _pow2(d["T"]), **_limits(hw)}


def recurrent_terms(c: dict, d: dict, s: dict, hw: Hardware) -> list:
    """Forward (BV, num_warps) and backward (BV_bwd, num_warps_bwd), sharing CHUNK; per step
    and program (sequence, head, column tile of V), as `_kernel` iterations. The state tile is
    held [BK, BV] (the default ORDER, "KV": lanes along V, K across registers and warps), so a
    step's reductions over K cross the warps (REDUCE_CYCLES per doubling).

    forward: the state tiles' ~OPS['recurrent'] lane-ops per element, the row inputs [K] (the
    same rows for every column tile: from L2 after the first), the column inputs and outputs
    [BV], and the states (fp32) stored every CHUNK steps; the next step's inputs load while
    this one computes.
    backward: two walks (each chunk replayed from its checkpoint, then the adjoint steps:
    ~OPS['recurrent_bwd'] lane-ops), a checkpoint load per chunk whose latency nothing
    hides, fp32 partial row gradients per column tile (summed by the host afterwards: a pass
    over them), and a scratch state written every RECURRENT_REG_STEPS steps and read back:
    L2 traffic while the resident programs' scratch fits the L2, the part beyond it from HBM.
    Calibrated on GLA (B=4 T=4096 H=16 K=V=128 bf16; benchmarks/results/*-gla_recurrent-order-sweep.log)."""
    KP, S = c["KP"], c["STATES"]
    rows = s["row_inputs"] * d["K"] * 2

    def forward(a):
        BV, warps, chunk = a["BV"], a["num_warps"], a["CHUNK"]
        nv = -(-d["V"] // BV)
        tile = S * KP * BV
        hbm, l2 = rows / nv, rows - rows / nv
        loop = (0, hbm + s["col_inputs"] * BV * 2, s["outputs"] * BV * 2 + tile * 4 / chunk, l2,
                tile * OPS["recurrent"])
        return _kernel(hw, CODE["recurrent"], programs=d["B"] * d["H"] * nv, warps=warps, stages=2,
                       elems=(S + 1) * KP * BV, smem=0, iters=d["T"], loop=loop, once=(0, tile * 4, tile * 4, 0, tile),
                       serial=REDUCE_CYCLES * math.log2(warps))

    def backward(a):
        BV, warps, chunk = a["BV_bwd"], a["num_warps_bwd"], a["CHUNK"]
        nv = -(-d["V"] // BV)
        programs = d["B"] * d["H"] * nv
        tile = S * KP * BV
        hbm, l2 = rows / nv, rows - rows / nv
        scratch = tile * 4 / RECURRENT_REG_STEPS                           # bytes per step, each way
        threads = hw.warp_size * warps
        resident = min(programs, hw.sms * _per_sm(threads, (2 * S + 4) * KP * BV / threads + REG_BASE, 0, hw))
        footprint = resident * tile * 4 * chunk / RECURRENT_REG_STEPS
        miss = max(0.0, 1.0 - hw.l2_bytes / footprint)
        # per walk step (two walks per step): the replay's and the adjoint's traffic, halved
        loads = (2 * (hbm + s["col_inputs"] * BV * 2) + s["outputs"] * BV * 4 + tile * 4 / chunk + miss * scratch) / 2
        stores = (s["row_inputs"] * d["K"] * 4 + s["col_inputs"] * BV * 2 + miss * scratch) / 2
        l2_bytes = (2 * l2 + 2 * (1 - miss) * scratch) / 2
        ops = tile * (OPS["recurrent"] + OPS["recurrent_bwd"]) / 2
        kernel = _kernel(hw, CODE["recurrent"], programs=programs, warps=warps, stages=2, elems=(2 * S + 4) * KP * BV,
                         smem=0, iters=2 * d["T"], loop=(0, loads, stores, l2_bytes, ops),
                         once=(0, tile * 8, tile * 4, 0, tile), serial=REDUCE_CYCLES * math.log2(warps),
                         extra=-(-d["T"] // chunk) * hw.memory_latency)
        # the host sums the column tiles' partial row gradients (fp32) afterwards
        partial = d["B"] * d["T"] * d["H"] * s["row_inputs"] * d["K"] * 4
        return kernel + (partial * (nv + 1) / hw.bandwidth if nv > 1 else 0.0)

    return [("forward", ("BV", "num_warps", "CHUNK"), forward),
            ("backward", ("BV_bwd", "num_warps_bwd", "CHUNK"), backward)]


# cell --------------------------------------------------------------------------------------

def cell_consts(d: dict, s: dict, hw: Hardware) -> dict:
    DP = max(16, _pow2(d["D"]))
    return {"D": d["D"], "DP": DP, "NP": max(16, _pow2(d["B"])), "G": s["gates"], "STATES": s["states"],
            "RB": d["RB"], "R_BYTES": s["gates"] * DP * DP * d["RB"], "COPIES": 1 if s["save_dots"] else 2,
            "H": d["H"], **_limits(hw)}


def cell_terms(c: dict, d: dict, s: dict, hw: Hardware) -> list:
    """Forward and backward with the same tiles; per step and program (head, BB sequences), as
    `_kernel` iterations: G tl.dot's [BB, DP] x [DP, DP] with R (in shared memory, or read
    from L2 every step when not resident), ~OPS['cell'] lane-ops per gate and state element,
    the step's inputs (the next step's loaded while this one computes), its outputs, states
    and products stored for the backward; the backward twice the products (the adjoint's and
    the param gradient's) and ~OPS['cell_bwd'] lane-ops, reading what the forward stored."""
    DP, G, RB, S = c["DP"], c["G"], c["RB"], c["STATES"]
    D = d["D"]

    def walk(a, dots, ops, copies, loads, stores):
        BB, warps = a["BB"], a["num_warps"]
        elems = (S + G) * BB * DP
        weights = 0 if a["RESIDENT"] else copies * c["R_BYTES"]
        loop = (dots * 2 * BB * DP * DP * G, BB * D * loads, BB * D * stores, weights, elems * ops)
        return _kernel(hw, CODE["cell"], programs=d["H"] * -(-d["B"] // BB), warps=warps, stages=2, elems=elems,
                       smem=a["RESIDENT"] * copies * c["R_BYTES"] + BB * DP * RB, iters=d["T"], loop=loop,
                       once=(0, BB * D * S * 4 + a["RESIDENT"] * copies * c["R_BYTES"], BB * D * S * 4, 0, 0))

    tiles = ("BB", "num_warps", "RESIDENT")
    return [("forward", tiles, lambda a: walk(a, 1, OPS["cell"], 1, G * 2, 2 + S * 4 + G * 4)),
            ("backward", tiles, lambda a: walk(a, 2, OPS["cell_bwd"], c["COPIES"], G * 2 + S * 4 + G * 4 + 2,
                                               G * 2))]


# scan --------------------------------------------------------------------------------------

def scan_consts(d: dict, s: dict, hw: Hardware) -> dict:
    return {"D": d["D"], "DP": max(16, _pow2(d["D"])), "TP": max(16, _pow2(d["T"])), "ELEMS": s["elements"],
            "LOADS": s["loads"], "BLOADS": s["loads"] + s["states"] + s["outputs"], **_limits(hw)}


def scan_terms(c: dict, d: dict, s: dict, hw: Hardware) -> list:
    """Forward (BT, BD, num_warps) and backward (BT_bwd, BD_bwd, num_warps_bwd); per block of BT steps and program (sequence,
    head, BD channels), as `_kernel` iterations: [BT, BD] fp32 tiles loaded (the next block's
    before this one is scanned) and stored (rows narrower than a cache line cost a line), a
    work-efficient scan over ELEMS tiles (~2 * OPS['scan'] lane-ops per element: the threads'
    own elements, then the partial results) whose log2(BT) levels (LEVEL_CYCLES each) and
    log2(num_warps) rounds across warps (a barrier each) are the chain's latency, the carry. The backward reads the inputs,
    the saved states and the outputs' cotangents and writes the inputs' gradients.
    Registers: the prefetched inputs and the scan elements, as the constraints count them
    (close to what ptxas reports for first_order on sm_90)."""

    def walk(a, loads, stores, suffix=""):
        BT, BD, warps = a["BT" + suffix], a["BD" + suffix], a["num_warps" + suffix]
        levels = max(1, int(math.log2(BT)))
        row = _row_bytes(min(BD, d["D"]), 4)
        loop = (0, loads * BT * row, stores * BT * row, 0, c["ELEMS"] * BT * BD * OPS["scan"] * 2)
        return _kernel(hw, CODE["scan"], programs=d["B"] * d["H"] * -(-d["D"] // BD), warps=warps, stages=2,
                       elems=(loads + c["ELEMS"]) * BT * BD, smem=c["ELEMS"] * BT * BD * 4,
                       iters=-(-d["T"] // BT), loop=loop,
                       serial=levels * LEVEL_CYCLES + math.log2(warps) * SYNC_CYCLES)

    return [("forward", ("BT", "BD", "num_warps"), lambda a: walk(a, c["LOADS"], s["outputs"])),
            ("backward", ("BT_bwd", "BD_bwd", "num_warps_bwd"), lambda a: walk(a, c["BLOADS"], c["LOADS"], "_bwd"))]


# chunked -----------------------------------------------------------------------------------

CHUNKED_KERNELS = ("wy", "a", "h", "o", "ho", "dv", "dh", "dqk", "wyb")
CHUNKED_INFERENCE = ("wy", "a", "h", "o", "ho")   # a call that needs no gradient: the forward, h and o or ho


def chunked_consts(d: dict, s: dict, hw: Hardware) -> dict:
    key = int(s["per_key"])
    return {"K": d["K"], "V": d["V"], "KP": max(16, _pow2(d["K"])), "VP": max(16, _pow2(d["V"])),
            "NS": s["substeps"], "HH": int(s["householder"]), "KEY": key, "NORM": int(s["normaliser"]),
            "EB": int(s["elem_bytes"]), "TP": max(16, _pow2(d["T"])), **_limits(hw)}


def chunked_kernels(s: dict) -> tuple:
    """The kernels a spec of this shape launches (householder transitions add wy and wyb, per-key
    decays the scores kernel a); with `inference` (no gradient wanted) the forward's alone: h and o,
    or ho in their place (the variable FUSE picks)."""
    launched = CHUNKED_INFERENCE if s.get("inference") else tuple(k for k in CHUNKED_KERNELS if k != "ho")
    return tuple(k for k in launched if (s["householder"] or k not in ("wy", "wyb"))
                 and (s["per_key"] or k != "a"))


def chunked_terms(c: dict, d: dict, s: dict, hw: Hardware) -> list:
    """One term per kernel (see templates/chunked.constraints for what each computes):
    programs, registers (fp32 values; bf16 operand tiles two to a register) and shared memory
    as the constraints count them, and per loop iteration and per program the tensor FLOPs,
    HBM loads and stores, L2 loads (a tile the other V blocks, or K blocks, of the same chunk
    read too) and elementwise lane-ops. Per-key decays add the scores kernel a (per sub-chunk of
    BC rows: a [BC, KB] x [KB, BC] tl.dot per earlier sub-chunk and BC columns of per-element
    exps per K block), whose scores o and dv load; dv stores dA, which dqk takes
    per sub-chunk (its rows of the chunk's state parts, a [BC, BC] x [BC, KB] tl.dot per other
    sub-chunk, BC rows of per-element exps); householder transitions add the UT transform's kernels
    (its inverse: BI - 1 dependent forward-substitution steps in lane arithmetic inside the
    diagonal blocks of BI rows, UT_STEP step latencies each, then log2(BT / BI) merges of two dependent
    [BT, BT] tl.dot's, one step latency each)."""
    B, H, T = d["B"], d["H"], d["T"]
    K, V, KP, NS = d["K"], d["V"], c["KP"], c["NS"]
    HH, KEY, EB = c["HH"], c["KEY"], c["EB"]   # EB: bytes of an element of the kernels' type
    gated = int(s["gated"])
    code = CODE[chunked_code(HH, KEY, c["NORM"])]

    def cd(n, b):
        return -(-n // b)

    def shared(nbytes, readers):
        """(HBM, L2) bytes of a tile `readers` programs running together load."""
        return nbytes / readers, nbytes - nbytes / readers

    def chunks(BT):
        return B * cd(T * NS, BT), cd(T * NS, BT)        # chunks of all sequences, per sequence

    def a(a):
        """Per-key decays: per (sub-chunk, chunk), the scores' rows [BC, BT] in [BC, BC] blocks; per K
        block of KB: the diagonal block and, on average, (NC - 1) / 2 earlier sub-chunks (a
        [BC, KB] x [KB, BC] tl.dot each, the earlier rows read by the chunk's other sub-chunks too:
        L2). The diagonal block is priced as split (_separable: one more tl.dot and the span's max),
        the path of any decays short of e^-60 over a sub-chunk."""
        BT, KB = a["BT"], min(a["BKS"], KP)
        BC = min(a["BC"], BT)
        NT, _ = chunks(BT)
        nc = BT // BC
        pairs = (nc - 1) / 2
        loop = ((pairs + 1) * 2 * BC * BC * KB, BC * KB * 8, 0, pairs * BC * KB * 12 + BC * KB * 2,
                (pairs + 1) * 6 * BC * KB + 4 * BC * KB)
        return _kernel(hw, code, programs=nc * NT * H, warps=a["a_warps"], stages=a["a_stages"],
                       elems=BC * BC + 6 * BC * KB, smem=a["a_stages"] * BC * KB * (2 * EB + 4),
                       iters=cd(K, KB), loop=loop, once=(0, 0, BC * BT * 2, 0, BC * BT),
                       serial=(pairs + 1) * 40)          # the span's max: shuffles across lanes

    def wy(a):
        BT = a["BT"]
        BV, BI = a["wy_BV"], min(a["BI"], BT)
        NT, _ = chunks(BT)
        # the inverse: BI - 1 forward-substitution steps on the diagonal blocks ([BT, BC] products and
        # a sum over BI inside a warp each), then log2(BT / BI) merges of two dependent [BT, BT] tl.dot's;
        # A goes through the program's Tm slot (stored, its diagonal blocks' rows read back), then T
        levels = int(math.log2(BT // BI))
        subst = (BI - 1) * BT * BI * (4 + math.log2(BI))
        chain = ((BI - 1) * UT_STEP + 2 * levels) * hw.step_latency
        once = (2 * BT * BT * KP * 2 + levels * 2 * 2 * BT ** 3, BT * KP * 2, 2 * BT * BT * 4 + BT * KP * 2,
                2 * (BI - 1) * BT * 4, subst + levels * 4 * BT * BT + 4 * BT * KP)
        loop = (2 * BT * BT * BV, BT * BV * 2, BT * BV * 2, 0, 3 * BT * BV)
        return _kernel(hw, code, programs=NT * H, warps=a["wy_warps"], stages=a["wy_stages"],
                       elems=4 * BT * BT + BT * BI + 2 * BT * KP + 2 * BT * BV,
                       smem=a["wy_stages"] * BT * BV * 4 + BT * BT * 4 + BT * KP * EB,
                       iters=cd(V, BV), loop=loop, once=once, extra=chain)

    def h(a):
        BT, BV = a["BT"], a["h_BV"]
        _, NC = chunks(BT)
        nv = cd(V, BV)
        hbm, l2 = shared(KP * BT * 2 + HH * BT * KP * 2 + KEY * KP * BT * 4, nv)
        loop = (2 * KP * BT * BV * (1 + HH), hbm + BT * BV * 2, KP * BV * 2 + HH * BT * BV * 4, l2,
                2 * KP * BV + (2 + 3 * gated) * BT * BV + KEY * 4 * KP * BT + HH * 2 * BT * BV)
        return _kernel(hw, code, programs=B * H * nv, warps=a["h_warps"], stages=a["h_stages"],
                       elems=KP * BV + BT * BV + KP * BT // 2 + HH * (BT * KP // 2 + BT * BV) + KEY * KP * BT,
                       smem=a["h_stages"] * (KP * BT + BT * BV + HH * BT * KP) * EB + KP * BV * EB,
                       iters=NC, loop=loop, once=(0, KP * BV * 4, KP * BV * 4, 0, 2 * KP * BV))

    def dh(a):
        BT, BV = a["BT"], a["dh_BV"]
        BTT = BT // NS
        _, NC = chunks(BT)
        nv = cd(V, BV)
        hbm, l2 = shared(KP * BTT * 2 + HH * 2 * BT * KP * 2 + KEY * KP * BTT * 4, nv)
        loop = (2 * KP * BTT * BV + HH * 4 * BT * KP * BV, hbm + BTT * BV * 2 + HH * BT * BV * 4,
                KP * BV * 2 + HH * BT * BV * 4, l2,
                2 * KP * BV + 4 * KP * BTT + KEY * 4 * KP * BTT + HH * (3 * BT * BV + 2 * BT * KP))
        return _kernel(hw, code, programs=B * H * nv, warps=a["dh_warps"], stages=a["dh_stages"],
                       elems=KP * BV + (KP * BTT + BTT * BV) // 2 + HH * (BT * KP + BT * BV) + KEY * KP * BT,
                       smem=a["dh_stages"] * (KP * BTT + BTT * BV + HH * 2 * BT * KP) * EB + KP * BV * EB,
                       iters=NC, loop=loop, once=(0, KP * BV * 4, KP * BV * 4, 0, 2 * KP * BV))

    def o(a):
        BT, BV, KB = a["BT"], a["o_BV"], min(a["BKS"], KP)
        BTT = BT // NS
        NT, _ = chunks(BT)
        nv = cd(V, BV)
        hbm, l2 = shared((BTT * KB + (1 - KEY) * BT * KB) * 2 + KEY * BTT * KB * 4, nv)
        flops = 2 * BTT * KB * BV + (1 - KEY) * 2 * BTT * KB * BT
        ops = 2 * KB * BV + KEY * BTT * KB * 3
        a_hbm, a_l2 = shared(KEY * BTT * BT * 2, nv)       # per-key decays: the scores from kernel a
        once = (2 * BTT * BT * BV, BT * BV * 2 + a_hbm, BTT * BV * 2, a_l2, BTT * BT * 6 + BTT * BV * 4)
        return _kernel(hw, code, programs=nv * NT * H, warps=a["o_warps"], stages=a["o_stages"],
                       elems=BTT * BV + BT * BT + (BTT * KB + BT * KB + KB * BV + BT * BV) // 2 + KEY * BTT * KB,
                       smem=_pipelined_smem(a["o_stages"], (BTT * KB + BT * KB + KB * BV) * EB, (BT * BT + BT * BV) * EB),
                       iters=cd(K, KB), loop=(flops, hbm + KB * BV * 2, 0, l2, ops), once=once)

    def ho(a):
        """h's loop, plus per chunk the output's: q (read by every V block: L2), q h and (per-key
        decays: loaded from a) the scores q k^T, their product with v, the output block stored;
        no per-chunk state stored."""
        BT, BV = a["BT"], a["ho_BV"]
        BTT = BT // NS
        _, NC = chunks(BT)
        nv = cd(V, BV)
        hbm, l2 = shared(KP * BT * 2 + HH * BT * KP * 2 + KEY * KP * BT * 4 + BTT * KP * 2
                         + KEY * (BTT * KP * 4 + BTT * BT * 2), nv)
        flops = 2 * KP * BT * BV * (1 + HH) + 2 * BTT * KP * BV + (1 - KEY) * 2 * BTT * KP * BT + 2 * BTT * BT * BV
        ops = (KP * BV + (2 + 3 * gated) * BT * BV + KEY * 4 * KP * BT + HH * 2 * BT * BV
               + BTT * BT * 4 + 2 * BTT * BV + KEY * BTT * KP * 3)
        loop = (flops, hbm + BT * BV * 2, BTT * BV * 2, l2, ops)
        return _kernel(hw, code, programs=B * H * nv, warps=a["ho_warps"], stages=a["ho_stages"],
                       elems=KP * BV + BT * BV + KP * BT // 2 + HH * BT * KP // 2 + KEY * KP * BT
                       + BTT * (KP // 2 + BT) + KEY * BTT * KP,
                       smem=a["ho_stages"] * (KP * BT + BT * BV + HH * BT * KP + BTT * KP) * EB
                       + (KP * BV + BTT * BT) * EB,
                       iters=NC, loop=loop, once=(0, KP * BV * 4, KP * BV * 4, 0, 2 * KP * BV),
                       tc_warps=HO_TC_WARPS)

    def dv(a):
        BT, BV, KB = a["BT"], a["dv_BV"], min(a["BKS"], KP)
        BTT = BT // NS
        NT, _ = chunks(BT)
        nv = cd(V, BV)
        plain = 1 - HH
        # per-key decays: k and G (fp32) instead of k and q; the scores from kernel a; dA = do v^T stored
        hbm, l2 = shared(BT * KB * 2 + (1 - KEY) * KB * BTT * 2 + KEY * BT * KB * 4, nv)
        flops = (1 - KEY) * 2 * BT * KB * BTT + plain * 2 * BT * KB * BV
        ops = plain * 2 * KB * BV + KEY * BT * KB * 3
        a_hbm, a_l2 = shared(KEY * BT * BT * 2, nv)
        once = (2 * BT * BTT * BV * (1 + KEY), BTT * BV * 2 + KEY * BT * BV * 2 + a_hbm,
                BT * BV * (4 if HH else 2) + KEY * BT * BT * 4, a_l2, BT * BTT * 6 + BT * BV * 5 + KEY * BT * BT * 2)
        return _kernel(hw, code, programs=nv * NT * H, warps=a["dv_warps"], stages=a["dv_stages"],
                       elems=BT * BTT + 2 * BT * BV + (2 * BT * KB + KB * BV + BT * BV) // 2
                       + KEY * (BT * KB + BT * BT),
                       smem=_pipelined_smem(a["dv_stages"], (2 * BT * KB + KB * BV) * EB, (BT * BT + BT * BV) * EB),
                       iters=cd(K, KB), loop=(flops, hbm + plain * KB * BV * 2, 0, l2, ops), once=once)

    def dqk_key(a):
        """Per-key decays: per (K block, chunk) a pass over V for the chunk's state parts and chunk-end
        term (the epilogue here), then per sub-chunk (the loop's iterations) its rows of the state
        parts (one-hot tl.dot's on two bf16 parts), the NC - 1 other sub-chunks ([BC, BC] x [BC, KB]
        tl.dot's on dA, which dv stored: L2), the diagonal block split (two more such tl.dot's; see a),
        dq, dk, dG stored."""
        BT, BV, KB = a["BT"], a["dqk_BV"], min(a["BKS"], KP)
        BC = min(a["BC"], BT)
        NT, _ = chunks(BT)
        nk, nv, nc = cd(K, KB), cd(V, BV), BT // BC
        pairs = nc - 1                                       # earlier (dq) and later (dk) sub-chunks
        loop = (2 * 2 * 2 * BC * BT * KB + (pairs + 2) * 2 * BC * BC * KB, 0, BC * KB * 8,
                BC * KB * 8 + pairs * (BC * KB * 6 + BC * BC * 4) + 2 * BC * BC * 4,
                BC * BT + (pairs + 2) * 4 * BC * KB + BC * KB * 10)
        dv_hbm, dv_l2 = shared(2 * BT * V * 2, nk)           # do, v (every K block reads them)
        once = (2 * 2 * BT * V * KB, 2 * KB * V * 2 + dv_hbm + BT * KB * 6, 0, dv_l2, 3 * KB * V + 12 * BT * KB)
        return _kernel(hw, code, programs=nk * NT * H, warps=a["dqk_warps"], stages=a["dqk_stages"],
                       # registers: fit to ptxas on sm_90 (BT = 64, 4 and 8 warps); the V loop's tiles are
                       # dead by the sub-chunks' loop, which sets the peak (ptxas: the same at BV 16 - 128)
                       elems=3 * BT * KB + 4 * BC * KB,
                       # shared memory: ptxas on sm_90 (Triton 3.6) shows the V loop's stage buffers reused
                       # for the sub-chunks' operands, and no second buffer when the loop runs once
                       smem=_pipelined_smem(min(a["dqk_stages"], nv), (2 * BT * BV + 2 * KB * BV) * EB,
                                            4 * BT * KB * EB),
                       iters=nc, loop=loop, once=once,
                       serial=(pairs + 2) * 40 + nv * 100)  # dA blocks: an L1 load each (and the span's
                                                             # max); the V blocks of the state parts

    def dqk(a):
        BT, BV, KB = a["BT"], a["dqk_BV"], min(a["BKS"], KP)
        BTT = BT // NS
        NT, _ = chunks(BT)
        nk = cd(K, KB)
        hbm, l2 = shared((BT * BV + BTT * BV) * 2 + HH * BT * BV * 4, nk)
        loop = (2 * BV * (BTT * KB + BT * KB + BTT * BT) + HH * 2 * BT * BV * KB, hbm + 2 * KB * BV * 2, 0, l2,
                2 * KB * BV + BT * BV + HH * BT * BV)
        once = (2 * 2 * BTT * BT * KB, (BTT * KB + BT * KB) * 2, (BTT * KB + BT * KB) * 2 + BT * 4 * (gated + 1), 0,
                BTT * BT * 6 + 4 * BT * KB)
        return _kernel(hw, code, programs=nk * NT * H, warps=a["dqk_warps"], stages=a["dqk_stages"],
                       elems=2 * BT * KB + BT * BT + HH * (BT * KB + BT * BV) + (2 * BT * BV + 2 * KB * BV) // 2,
                       smem=_pipelined_smem(a["dqk_stages"], (2 * BT * BV + 2 * KB * BV + HH * 2 * BT * BV) * EB,
                                            (BT * BT + BT * KB) * EB),
                       iters=cd(V, BV), loop=loop, once=once)

    def wyb(a):
        BT, BV, KB = a["BT"], a["wyb_BV"], min(a["BKS"], KP)
        NT, _ = chunks(BT)
        # per V block: T^T dU and dU v^T; over K (twice, KB at a time): dW k^T and k k^T, then
        # T^T dW and (Y + Y^T) k with dk's partial (fp32) read once; dA = -T^T dT T^T
        loop = (2 * 2 * BT * BT * BV, BT * BV * (4 + 2), BT * BV * 2, 0, 2 * BT * BV)
        once = (2 * 4 * BT * BT * K + 2 * 2 * BT * BT * BT, BT * K * (2 + 4 + 4), BT * K * 2, BT * K * (2 + 4),
                8 * BT * BT + 4 * BT * K)
        return _kernel(hw, code, programs=NT * H, warps=a["wyb_warps"], stages=a["wyb_stages"],
                       elems=4 * BT * BT + 3 * BT * BV + BT * KB,
                       smem=a["wyb_stages"] * BT * BV * (2 * EB + 2) + BT * BT * 4 + BT * KB * EB,
                       iters=cd(V, BV), loop=loop, once=once)

    kernels = {"wy": (wy, ("BT", "BI")), "a": (a, ("BT", "BKS", "BC")), "h": (h, ("BT",)), "o": (o, ("BT", "BKS")),
               "ho": (ho, ("BT",)),
               "dv": (dv, ("BT", "BKS")), "dh": (dh, ("BT",)),
               "dqk": (dqk_key, ("BT", "BKS", "BC")) if KEY else (dqk, ("BT", "BKS")),
               "wyb": (wyb, ("BT", "BKS"))}
    if s.get("inference"):   # FUSE = 1: ho runs, h and o do not (their variables are then free and cost nothing)
        for k, on in (("h", 0), ("o", 0), ("ho", 1)):
            fn, shared_vars = kernels[k]
            kernels[k] = ((lambda fn, on: lambda a: fn(a) if a["FUSE"] == on else 0.0)(fn, on), shared_vars + ("FUSE",))
    return [(k, kernels[k][1] + tuple(f"{k}_{p}" for p in (("warps", "stages") if k == "a" else ("BV", "warps", "stages"))),
             kernels[k][0]) for k in chunked_kernels(s)]


@dataclass(frozen=True)
class Family:
    name: str
    dims: tuple               # dim names of this family, besides B, T, H
    shape: dict               # shape keywords and their defaults
    consts: Callable          # (dims, shape, hw) -> constants of the .constraints text
    terms: Callable           # (consts, dims, shape, hw) -> [(name, variables read, cost(assignment) -> s)]
    measures: str             # what the estimate covers


FAMILIES = {
    "recurrent": Family("recurrent", ("K", "V"),
                        {"split": True, "states": 1, "row_inputs": 2, "col_inputs": 1, "outputs": 1},
                        recurrent_consts, recurrent_terms, "forward + backward"),
    "cell": Family("cell", ("D", "RB"), {"gates": 4, "states": 2, "save_dots": True}, cell_consts, cell_terms,
                   "forward + backward"),
    "scan": Family("scan", ("D",), {"elements": 2, "loads": 2, "states": 1, "outputs": 1}, scan_consts, scan_terms,
                   "forward + backward"),
    "chunked": Family("chunked", ("K", "V"),
                      {"substeps": 1, "householder": False, "gated": True, "per_key": False, "normaliser": False,
                       "elem_bytes": 2, "inference": False},
                      chunked_consts, chunked_terms, "forward + backward"),
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
    """(problem, terms, dims, shape, hw): the variables the terms read (a kernel the shape does
    not launch reads none: its variables and their constraints are left out), and the terms:
    the cost model's, or on the interpreter model the sum of each term's own variables and of
    the shared ones."""
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
    raw = fam.terms(consts, d, s, hw)
    read = {v for _, names, _ in raw for v in names}
    variables = tuple(v for v in base.variables if v.name in read)
    constraints = tuple(c for c in base.constraints if all(v.name in read for v in c.variables()))
    if hw.interpreter:
        readers = {v.name: sum(v.name in names for _, names, _ in raw) for v in variables}
        shared = tuple(v.name for v in variables if readers[v.name] > 1)
        terms = [Term(name, names, _sum_of([v for v in names if readers[v] == 1])) for name, names, _ in raw]
        terms.append(Term("shared", shared, _sum_of(shared)))
    else:
        terms = [Term(name, names, cost) for name, names, cost in raw]
    problem = Problem(variables, constraints, sum_of(terms))
    return problem, tuple(terms), d, s, hw


def _sum_of(names) -> Callable:
    names = tuple(names)
    return lambda a: sum(a[n] for n in names)


def choose_tiles(family: str, dims: dict | None = None, hw: Hardware | str | None = None, **shape) -> Tiles:
    """The best launch parameters of `family` for one call shape on `hw` (see the module docstring).

    dims: the family's dims (`FAMILIES[family].dims`) and B, T, H; missing ones from `MAIN`.
    shape: the family's shape keywords (`FAMILIES[family].shape`), e.g. `split=False`.
    Raises TilesInfeasible, naming a minimal set of conflicting constraints, if none fits."""
    problem, terms, d, s, hw = _setup(family, dims, hw, shape)
    try:
        best = split_points(problem, terms, 1)[0]
    except Infeasible as error:
        raise TilesInfeasible(family, d, s, hw, error) from None
    return Tiles(family, dict(best.assignment), best.objective, list(best.binding), hw, d, s, problem, best, terms)


def launch_tiles(family: str, dims: dict, device=None, spec_key: str = "", **shape) -> dict:
    """What generated host code launches with: `choose_tiles(...).assignment` for the model of
    `device` (the inputs' device; a CPU device gives the interpreter model), or the winner
    `tune` cached for it under `spec_key`. Cached per (family, dims, shape, hardware); T is
    rounded up to a power of two first (the choice depends on T only through the number of
    blocks, and varlen batches of new lengths then reuse it)."""
    dims = dict(dims)
    if "T" in dims:
        dims["T"] = _pow2(max(int(dims["T"]), 1))
    return dict(_launch(family, tuple(sorted(dims.items())), _device_model(device), spec_key,
                        tuple(sorted(shape.items()))))


def _device_model(device) -> Hardware:
    """hardware(device), cached per device (a CUDA device's properties are read once)."""
    if device is None or isinstance(device, (Hardware, str, int)):
        return hardware(device)
    return _device_model_of(str(device))


@functools.lru_cache(maxsize=64)
def _device_model_of(device: str) -> Hardware:
    return hardware(device)


@functools.lru_cache(maxsize=1024)
def _launch(family: str, dims: tuple, hw: Hardware, spec_key: str, shape: tuple) -> dict:
    tiles = choose_tiles(family, dict(dims), hw, **dict(shape))
    return tuned(tiles, spec_key) if spec_key else tiles.assignment


def reference_tiles(rec: ir.Recurrence, family: str) -> dict | None:
    """The family's choice on the H100 model at the spec's main shape (`families_of`): what a
    module's header shows as an example (its host code chooses per call); None if infeasible."""
    dims, shape = families_of(rec).get(family, ({}, FAMILIES[family].shape))
    try:
        return choose_tiles(family, dims, "h100", **shape).assignment
    except TilesInfeasible:
        return None


def described(assignment: dict | None) -> str:
    """'BT=64 BD=32 num_warps=4' (or 'infeasible')."""
    return " ".join(f"{k}={v}" for k, v in assignment.items()) if assignment is not None else "infeasible"


def spec_key(rec: ir.Recurrence) -> str:
    """The key a spec's tuned tiles are cached under: its text's sha256 (the module's SPEC_HASH)."""
    return hashlib.sha256(rec.source.encode("utf-8")).hexdigest()


def launch_shape(rec: ir.Recurrence, family: str) -> tuple:
    """(dims, shape) a lowering renders into its host code for `launch_tiles`: dims maps the
    family's dim names to the spec's (a dim name, or a number for a fixed size), shape holds
    the compile-time shape keywords; those of `families_of`, or the family's defaults where
    the analysis does not list the family (a strategy forced by name)."""
    found = _families(rec).get(family)
    if found is None:
        return {}, dict(FAMILIES[family].shape)
    return dict(found[0]), dict(found[1])


# ---- a spec's families ----------------------------------------------------------------------

def families_of(rec: ir.Recurrence, dims: dict | None = None) -> dict:
    """{family: (dims, shape)} for the kernel families `rec`'s strategies use, at representative
    dims: `dims` (spec dim names, and B, T, H), else the spec's fixed sizes, else 128 (`MAIN`)."""
    size = {**{d.name: 128 for d in rec.dims}, **rec.fixed_dims, **(dims or {})}
    call = {k: int(size.get(k, MAIN[k])) for k in ("B", "T", "H")}
    n = lambda dim: dim if isinstance(dim, int) else int(size[dim])
    out = {}
    for family, (spec_dims, shape) in _families(rec).items():
        d = {k: n(v) for k, v in spec_dims.items()}
        if family == "cell":
            d["RB"] = MAIN["RB"]
        out[family] = ({**call, **d}, shape)
    return out


def _families(rec: ir.Recurrence) -> dict:
    """{family: ({family dim: spec dim name or size}, shape keywords)}, best strategy first."""
    from .analysis import analyse
    facts = analyse(rec)
    fixed = {**rec.fixed_dims}
    n = lambda dim: dim if isinstance(dim, int) else fixed.get(dim, 128)
    matrices = [s for s in rec.states if len(s.shape) == 2]
    vectors = [s for s in rec.states if len(s.shape) == 1]
    out = {}
    stuck = [s for s in facts.states if not s.affine and not s.monoid]
    cell_params = [p for p in rec.params if len(p.shape) >= 2 and p.shape[-1] == p.shape[-2]]
    if stuck and vectors and cell_params:   # as recc.plan.candidates: a nonlinear cell goes to `cell` first
        gates = sum(math.prod(n(x) for x in p.shape[:-2]) for p in cell_params)
        out["cell"] = ({"D": vectors[0].shape[0]}, {"gates": gates, "states": len(rec.states), "save_dots": True})
    strategies = [s for s in facts.strategies if s in FAMILIES]
    if "chunked" in strategies and len(matrices) == 1:
        S = facts.state(matrices[0].name)
        K, V = matrices[0].shape
        out["chunked"] = ({"K": K, "V": V},
                          {"substeps": S.householder_count or 1, "householder": S.transition == "householder_product",
                           "gated": S.gate != "none", "per_key": S.gate == "diagonal", "normaliser": bool(vectors)})
    if "scan" in strategies and vectors:
        groups = {s.monoid for s in facts.states if s.monoid}
        linear = [s for s in facts.states if s.affine]
        elements = 2 * len(linear) + sum(len(rec.monoid(g).elements) for g in groups)
        loads = sum(1 for i in rec.inputs if i.shape)
        out["scan"] = ({"D": vectors[0].shape[0]},
                       {"elements": elements, "loads": max(loads, 1), "states": len(vectors),
                        "outputs": max(1, len(rec.outputs))})
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
        out["recurrent"] = ({"K": K, "V": V},
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
        plans = {family: shape}
        if family == "chunked" and not shape.get("normaliser"):   # its plan for calls without gradient
            plans[f"{family}, no gradient"] = {**shape, "inference": True}
        for name, s in plans.items():
            try:
                out[name] = choose_tiles(family, d, hw, **s)
            except TilesInfeasible as error:
                out[name] = error
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
