"""Stage 5: choose a strategy for a checked recurrence, and say why (its launch tiles
come from `recc.tiles`, per call).

    plan(rec, strategy=None) -> Plan

The analysis (`recc.analysis.analyse`) lists the strategies a recurrence
admits, best first (chunked and scan need an associative step; recurrent takes
any step). A nonlinear cell with a recurrent matrix (LSTM, GRU, sLSTM) goes to
`cell` first. The planner walks that list and keeps the first strategy whose
lowering exists in this build and accepts the spec; `lower` then produces the
kernels. When none does, the op runs the float32 sequential reference and the
module header says so.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from . import ir
from .errors import ReccError

STRATEGIES = ("chunked", "scan", "cell", "recurrent")

# The recurrent kernels' compiled-in tile choices (their launch tiles, BV, BV_bwd, CHUNK and
# warps, come from the solver per call: recc.tiles, templates/recurrent.constraints; its cost
# model was calibrated on the H100 sweep of benchmarks/recurrent_gpu_check.py --sweep: GLA at
# B=4, T=4096, H=16, K=V=128, bf16, 2026-11-23, which picked BV=16 / BV_bwd=32, 4 warps each).
# REG_STEPS: the backward replays this many steps at a time in registers (its code is
#     unrolled that many times) and its scratch keeps one state per REG_STEPS steps;
#     "auto": as many as fit without spilling, from the size of the adjoint step
#     (`recc.lower.recurrent.reg_steps_for`: GLA 2, gated DeltaNet 1, vector states 4).
# ORDER, ORDER_bwd: the register order of a matrix state's tile in the forward and the
#     backward kernel: "VK" holds S[K, V] as [BV, BK], "KV" as [BK, BV]. Holding the state as
#     [BK, BV] ran the GLA forward 3.3x and the backward 1.4x faster than [BV, BK] (same sweep).
RECURRENT_TILES = {"REG_STEPS": "auto", "ORDER": "KV", "ORDER_bwd": "KV"}


@dataclass(frozen=True)
class Plan:
    strategy: str                  # one of STRATEGIES, or "reference"
    why: str                       # one line
    tiles: dict = field(default_factory=dict)
    candidates: tuple = ()         # what was considered, best first
    rejected: tuple = ()           # (strategy, reason) for each candidate passed over


def candidates(rec: ir.Recurrence) -> tuple:
    """Strategies worth trying for `rec`, best first."""
    try:
        from .analysis import analyse
        facts = analyse(rec)
    except ImportError:  # pragma: no cover - an analysis-less build
        return ("recurrent",)
    order = [s for s in facts.strategies if s in STRATEGIES]
    if any(not s.affine for s in facts.states) and not all(s.monoid for s in facts.states if not s.affine):
        order.insert(0, "cell")
    return tuple(dict.fromkeys(order + ["recurrent"]))


def _lowering(strategy: str):
    """The `lower_<strategy>` function, or None when this build lacks it."""
    try:
        module = importlib.import_module(f"recc.lower.{strategy}")
    except ImportError:
        return None
    return getattr(module, f"lower_{strategy}", None)


# The exceptions by which a lowering says "this spec is not mine" (each strategy names its own).
REFUSALS = ("NotChunked", "NotScannable", "NotACell", "Unsupported")


def _lower(name: str, rec: ir.Recurrence, tiles: dict):
    fn = _lowering(name)
    if name == "recurrent":
        return fn(rec, tiles)
    return fn(rec)


def plan(rec: ir.Recurrence, strategy: str | None = None, tiles: dict | None = None):
    """(Plan, Lowered or None): the first strategy, best first, whose lowering
    accepts `rec`. A `strategy` names the one to use; it is an error if it cannot.
    `tiles` overrides the recurrent strategy's compiled-in choices (RECURRENT_TILES) and the
    launch tiles the solver would choose per call."""
    if strategy and strategy not in STRATEGIES:
        raise ReccError(f"unknown strategy '{strategy}', expected one of: {', '.join(STRATEGIES)}")
    order = (strategy,) if strategy else candidates(rec)
    rejected = []
    for name in order:
        if _lowering(name) is None:
            rejected.append((name, "not in this build"))
            continue
        chosen = {**RECURRENT_TILES, **(tiles or {})} if name == "recurrent" else {}
        try:
            lowered = _lower(name, rec, chosen)
        except Exception as e:  # noqa: BLE001 - only a lowering's refusal is caught
            if type(e).__name__ not in REFUSALS:
                raise
            rejected.append((name, str(e)))
            continue
        passed = "".join(f"; {n} passed over: {r}" for n, r in rejected)
        return Plan(name, lowered.why + passed, dict(lowered.tiles), order, tuple(rejected)), lowered
    if strategy:
        raise ReccError(f"{rec.name}: strategy '{strategy}' cannot lower this spec: {rejected[0][1]}")
    why = "; ".join(f"{n}: {r}" for n, r in rejected)
    return Plan("reference", f"no kernel lowering accepts this spec yet ({why}); the op runs the sequential "
                             f"reference in float32", {}, order, tuple(rejected)), None
