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

import functools
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
    decoder: str | None = None     # the strategy of calls of few steps (chunked: recurrent), chosen per call


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


def _try(name: str, rec: ir.Recurrence, tiles: dict | None = None):
    """(Lowered, None) where the lowering `name` accepts `rec`, else (None, why not)."""
    if _lowering(name) is None:
        return None, "not in this build"
    chosen = {**RECURRENT_TILES, **(tiles or {})} if name == "recurrent" else {}
    try:
        return _lower(name, rec, chosen), None
    except Exception as e:  # noqa: BLE001 - only a lowering's refusal is caught
        if type(e).__name__ not in REFUSALS:
            raise
        return None, str(e)


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
        lowered, refusal = _try(name, rec, tiles)
        if lowered is None:
            rejected.append((name, refusal))
            continue
        passed = "".join(f"; {n} passed over: {r}" for n, r in rejected)
        decoder = "recurrent" if not strategy and name == "chunked" and _try("recurrent", rec)[0] else None
        return Plan(name, lowered.why + passed, dict(lowered.tiles), order, tuple(rejected), decoder), lowered
    if strategy:
        raise ReccError(f"{rec.name}: strategy '{strategy}' cannot lower this spec: {rejected[0][1]}")
    why = "; ".join(f"{n}: {r}" for n, r in rejected)
    return Plan("reference", f"no kernel lowering accepts this spec yet ({why}); the op runs the sequential "
                             f"reference in float32", {}, order, tuple(rejected)), None


# ---- the strategy of one call --------------------------------------------------------------
# A chunked op runs its calls of few steps (decoding: T = 1 with the state carried in
# initial_state) with the recurrent strategy's kernels: one launch, a step at a time, where the
# chunked form pays for its cumulative decays, per-chunk states and several launches whatever T.
# Which is cheaper the tile solver's cost model says, per call shape: each family's estimate at
# its own best tiles (a call without gradient: the forward alone). On the interpreter, whose
# model counts tile sizes rather than time, the H100's model decides, so the CPU runs the path
# the GPU would.

def call_strategy(rec: ir.Recurrence, dims: dict, device=None, grad: bool = True) -> str:
    """"recurrent" where the model prices the recurrent kernels below the chunked ones for a call of
    `dims` (B, T, H and the spec's dim names; varlen: B sequences of the average length) on
    `device`'s model, else "chunked"."""
    from .tiles import _device_model, _pow2
    size = {k: max(int(v), 1) for k, v in dims.items()}
    size["T"] = _pow2(size["T"])
    return _call_strategy(rec, tuple(sorted(size.items())), _decision_model(_device_model(device)), bool(grad))


def estimates(rec: ir.Recurrence, dims: dict, hw, grad: bool) -> dict:
    """{family: estimated seconds} of a call of `dims` for chunked and recurrent (without gradient:
    the forward's kernels alone), at each family's own best tiles on the model `hw`."""
    from .tiles import choose_tiles, families_of
    fams = families_of(rec, dims)
    if "chunked" not in fams or "recurrent" not in fams:
        return {}
    out = {}
    for family in ("chunked", "recurrent"):
        d, shape = fams[family]
        if family == "chunked" and not grad and not shape["normaliser"]:
            shape = {**shape, "inference": True}          # its plan for the forward alone
        t = choose_tiles(family, d, hw, **shape)
        if grad or (family == "chunked" and shape.get("inference")):
            out[family] = t.objective
        else:                                             # the forward's terms of a training plan
            out[family] = sum(v for k, v in t.parts().items() if k in ("forward", "wy", "a", "h", "o"))
    return out


@functools.lru_cache(maxsize=1024)
def _call_strategy(rec: ir.Recurrence, dims: tuple, hw, grad: bool) -> str:
    cost = estimates(rec, dict(dims), hw, grad)
    return "recurrent" if cost and cost["recurrent"] < cost["chunked"] else "chunked"


def decoding_steps(rec: ir.Recurrence, hw="h100", grad: bool = False, B: int = 4, H: int = 16) -> int:
    """The most steps (a power of two up to 4096, or 0) at which a call of B sequences and H heads
    runs the recurrent strategy on the model `hw` (what `recc check` reports)."""
    most = 0
    for T in (2 ** i for i in range(13)):
        if call_strategy(rec, {"B": B, "T": T, "H": H}, hw, grad) != "recurrent":
            break
        most = T
    return most


def _decision_model(hw):
    """The model that decides: `hw`'s, the H100's in place of the interpreter's."""
    from .tiles import hardware
    model = hardware(hw)
    return hardware("h100") if model.interpreter else model


def plan_json(rec: ir.Recurrence, hw=None) -> dict:
    """What `recc check --json` adds under "plan": the strategy, why, and for a chunked op the
    calls its decoder takes (`decoding_steps` at B=4, H=16, the spec's main dims)."""
    chosen, _ = plan(rec)
    out = {"strategy": chosen.strategy, "why": chosen.why, "decoder": chosen.decoder}
    if chosen.decoder:
        model = _decision_model(hw)
        out["decoding_steps"] = {"hardware": model.name, "B": 4, "H": 16,
                                 "forward": decoding_steps(rec, model, grad=False),
                                 "forward_backward": decoding_steps(rec, model, grad=True)}
    return out


def plan_text(rec: ir.Recurrence, hw=None) -> str:
    """What `recc check` prints as the plan."""
    data = plan_json(rec, hw)
    lines = [f"  plan     {data['strategy']}: {data['why']}"]
    if data["decoder"]:
        d = data["decoding_steps"]
        lines.append(f"           calls of few steps run {data['decoder']} instead, where the {d['hardware']} model prices "
                     f"it lower (per call shape; at B=4 H=16: up to T={d['forward']} without gradient, "
                     f"T={d['forward_backward']} with)")
    return "\n".join(lines)
