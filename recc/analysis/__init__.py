"""Analysis: facts about a recurrence that choose its strategy.

    analyse(rec) -> Facts          the facts, as frozen dataclasses
    facts_json(rec) -> dict        what `recc check --json` adds
    facts_text(rec) -> str         what `recc check` prints

Per state: is its update affine in the states (S_t = A_t(S_{t-1}) + b_t with A_t
reading no state; if not, the offending term and its position), the kind of its
transition A_t (identity | scalar | diagonal | diagonal_low_rank |
householder_product | dense | nonlinear; Householder factors counted) and of
its input term b_t. Per recurrence: associativity (affine steps compose by
construction; a user's combine operator is proved with sympy or refuted by a
counterexample, see `monoid.py`), numerical stability facts (`stability.py`) and
the strategies it admits, best first. The backward pass is in `recc.adjoint`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .. import ir
from .linear import TRANSITIONS, Linearity, Transition, elementwise_dependence, input_term, op_sum, transition_of
from .monoid import PROVED, REFUTED, UNKNOWN, Associativity, Counterexample, prove
from .stability import Stability, stability

__all__ = ["analyse", "facts_json", "facts_text", "Facts", "StateFacts", "Stability", "Associativity",
           "Counterexample", "TRANSITIONS", "STRATEGIES", "prove"]

STRATEGIES = ("chunked", "scan", "newton", "recurrent", "dag")
AFFINE_PROOF = ("affine steps (A_t, b_t) compose as (A2, b2) . (A1, b1) = (A2 A1, A2 b1 + b2): "
                "associative by construction")


@dataclass(frozen=True)
class StateFacts:
    name: str
    affine: bool
    transition: str                      # one of TRANSITIONS
    householder_count: int | None        # householder_product: number of factors per step
    input_term: str                      # none | elementwise | rank1 | rank<n> | dense | n/a (not affine)
    nonaffine_reason: str | None         # e.g. "h appears inside sigmoid at specs/lstm.rec:10:7, through let z"
    nonaffine_pos: ir.Pos | None
    gate: str = "none"                   # none | scalar | diagonal: the decay in the transition
    low_rank: int | None = None          # diagonal_low_rank: rank of the low-rank part
    coupled: tuple = ()                  # other states this state's update reads
    monoid: str | None = None            # updated by this user combine operator (a scan)
    input_words: str = ""                # the input term, readably


@dataclass(frozen=True)
class Facts:
    name: str
    file: str
    states: tuple                        # StateFacts, in declaration order
    associative: str                     # proved | refuted | unknown
    associativity: str                   # the proof, or why not
    counterexample: Counterexample | None
    monoids: tuple                       # (name, Associativity) for each declared monoid
    stability: tuple                     # Stability
    strategies: tuple                    # admissible strategies, best first
    blocks: tuple                        # groups of coupled states (tuples of names)
    diagonal_jacobian: bool              # the step reads states only elementwise

    def state(self, name: str) -> StateFacts:
        return next(s for s in self.states if s.name == name)

    def to_json(self) -> dict:
        out = {
            "affine": {s.name: s.affine for s in self.states},
            "transition": {s.name: s.transition for s in self.states},
            "householder_count": {s.name: s.householder_count for s in self.states
                                  if s.householder_count is not None},
            "input_term": {s.name: s.input_term for s in self.states},
            "associative": self.associative,
            "associativity": self.associativity,
            "strategies": list(self.strategies),
            "stability": [f.to_json(self.file) for f in self.stability],
        }
        reasons = {s.name: s.nonaffine_reason for s in self.states if not s.affine}
        if reasons:
            out["nonaffine"] = reasons
        if self.counterexample is not None:
            out["counterexample"] = self.counterexample.to_json()
        if self.monoids:
            out["monoids"] = {name: _monoid_json(a) for name, a in self.monoids}
        if any(len(b) > 1 for b in self.blocks):
            out["blocks"] = [list(b) for b in self.blocks]
        return out


def _monoid_json(a: Associativity) -> dict:
    out = {"associative": a.status, "how": a.how, "identity": a.identity}
    if a.counterexample is not None:
        out["counterexample"] = a.counterexample.to_json()
    if a.identity_counterexample is not None:
        out["identity_counterexample"] = a.identity_counterexample.to_json()
    return out


# ---- the analysis -------------------------------------------------------------------------

def analyse(rec: ir.Recurrence) -> Facts:
    """All facts about `rec` (cached per recurrence)."""
    return _analyse(rec, rec.file)


@functools.lru_cache(maxsize=128)
def _analyse(rec: ir.Recurrence, file: str) -> Facts:
    linear = Linearity(rec)
    scans = _scanned_states(rec)
    monoids = tuple((m.name, prove(m)) for m in rec.monoids)
    verdicts = dict(monoids)
    states = []
    for s in rec.states:
        lin = linear.states[s.name]
        coupled = tuple(sorted(lin.deps - {s.name}))
        if lin.reason is not None:
            reason = lin.reason + (f", through let {lin.via}" if lin.via else "")
            states.append(StateFacts(s.name, False, "nonlinear", None, "n/a", reason, lin.pos, coupled=coupled,
                                     monoid=scans.get(s.name)))
            continue
        op = None
        for t in lin.terms.values():
            op = op_sum(op, t)
        tr = transition_of(op) if op is not None else Transition("identity")
        kind, words = input_term(lin.offset, s)
        states.append(StateFacts(s.name, True, tr.kind, tr.householder_count, kind, None, None, tr.gate, tr.rank,
                                 coupled, scans.get(s.name), words))

    # associativity of the whole step
    verdict, parts, cx = PROVED, [AFFINE_PROOF] if any(sf.affine for sf in states) else [], None
    for name in dict.fromkeys(sf.monoid for sf in states if sf.monoid):
        a = verdicts[name]
        parts.append(f"monoid {name}: {a.how}")
        if _worse(a.status, verdict):
            verdict, cx = a.status, a.counterexample
    stuck = [sf for sf in states if not sf.affine and not sf.monoid]
    if stuck:
        verdict = verdict if verdict == REFUTED else UNKNOWN
        parts = [f"state {stuck[0].name} is not affine ({stuck[0].nonaffine_reason}) and no combine operator "
                 f"is declared for it: treated as not associative"]
    elif verdict != PROVED:
        parts = [p for p in parts if p.startswith("monoid")]
    how = "; ".join(parts)

    facts = stability(rec, linear)
    blocks = _blocks(rec, linear)
    diagonal = elementwise_dependence(rec)
    strategies = _strategies(rec, states, verdict, diagonal)
    return Facts(rec.name, rec.file, tuple(states), verdict, how, cx, monoids, facts, strategies, blocks, diagonal)


_ORDER = {PROVED: 0, UNKNOWN: 1, REFUTED: 2}


def _worse(a: str, b: str) -> bool:
    return _ORDER[a] > _ORDER[b]


def _scanned_states(rec: ir.Recurrence) -> dict:
    """States updated only by a combine `x, y = M((x, y), (u, v))` whose right operand reads no state:
    state -> monoid name."""
    states = {s.name for s in rec.states}
    count = {}
    for stmt in ir.unrolled(rec.body):
        if isinstance(stmt, ir.Assign):
            count[stmt.target] = None
        elif isinstance(stmt, ir.Combine):
            left_ok = all(isinstance(e, ir.Ref) and e.kind == "state" and e.name == t
                          for e, t in zip(stmt.left, stmt.targets))
            right_ok = not any(isinstance(n, ir.Ref) and n.name in states and n.kind == "state"
                               for e in stmt.right for n in ir.walk(e))
            for t in stmt.targets:
                count[t] = stmt.monoid if (left_ok and right_ok and t not in count) else None
    return {k: v for k, v in count.items() if v is not None}


def _blocks(rec: ir.Recurrence, linear: Linearity) -> tuple:
    parent = {s.name: s.name for s in rec.states}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x
    for s in rec.states:
        for d in linear.states[s.name].deps:
            parent[find(d)] = find(s.name)
    groups = {}
    for s in rec.states:
        groups.setdefault(find(s.name), []).append(s.name)
    return tuple(tuple(g) for g in groups.values())


def _strategies(rec: ir.Recurrence, states: list, verdict: str, diagonal: bool) -> tuple:
    shape = {s.name: s.shape for s in rec.states}
    out = []
    if verdict == PROVED and all(sf.affine for sf in states):
        chunkable = {"identity", "scalar", "diagonal", "householder_product"}
        matrix = any(len(shape[sf.name]) >= 2 for sf in states)
        if matrix and all(sf.transition in chunkable for sf in states):
            out.append("chunked")
        if not matrix and all(sf.transition in ("identity", "scalar", "diagonal") for sf in states):
            out.append("scan")
    elif verdict == PROVED and all(sf.affine or sf.monoid for sf in states) \
            and all(len(shape[sf.name]) <= 1 for sf in states):
        out.append("scan")
    if verdict != PROVED and diagonal and not all(sf.affine for sf in states):
        out.append("newton")
    out.append("recurrent")
    return tuple(out)


# ---- for the command line --------------------------------------------------------------------

def facts_json(rec: ir.Recurrence) -> dict:
    return analyse(rec).to_json()


_TRANSITION_WORDS = {
    "identity": "identity (no decay)",
    "scalar": "scalar per head",
    "diagonal": "diagonal (per key / channel)",
    "diagonal_low_rank": "diagonal plus low rank",
    "householder_product": "product of generalized Householder transitions",
    "dense": "dense matrix",
    "nonlinear": "nonlinear",
}


def facts_text(rec: ir.Recurrence) -> str:
    f = analyse(rec)
    lines = ["  analysis"]
    for s in f.states:
        if s.affine:
            tr = _TRANSITION_WORDS[s.transition]
            if s.householder_count is not None:
                tr += f" (n_h = {s.householder_count})"
            if s.gate != "none" and s.transition not in ("scalar", "diagonal"):
                tr += f", {s.gate} decay"
            if s.low_rank:
                tr += f" (rank {s.low_rank})"
            couple = f"; reads {', '.join(s.coupled)}" if s.coupled else ""
            lines.append(f"    state {s.name}: affine; transition {tr}; input {s.input_words}{couple}")
        else:
            how = f"; combined by monoid {s.monoid}" if s.monoid else ""
            lines.append(f"    state {s.name}: not affine: {s.nonaffine_reason}{how}")
    lines.append(f"    associative: {f.associative} ({f.associativity})")
    for name, a in f.monoids:
        ident = {"absent": "no identity declared", PROVED: "identity holds"}.get(a.identity, f"identity {a.identity}")
        if a.identity_counterexample is not None:
            ident += f": {a.identity_counterexample}"
        lines.append(f"    monoid {name}: {a.status}; {ident}")
    for s in f.stability:
        lines.append(f"    stability [{s.kind}]: {s.message}")
    if any(len(b) > 1 for b in f.blocks):
        lines.append("    coupled states: " + "; ".join(", ".join(b) for b in f.blocks if len(b) > 1))
    lines.append(f"    strategies: {', '.join(f.strategies)}")
    return "\n".join(lines)
