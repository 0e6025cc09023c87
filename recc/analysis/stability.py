"""Numerical facts the planner must respect: exp gates that overflow, decays that underflow,
transitions with negative (or growing) eigenvalues.

Values get intervals from the inputs' annotations (log_gate <= 0, gate in (0, 1),
positive, unit, range(lo, hi)) pushed through the step; one relational rule
knows that x - max(..., x, ...) <= 0, which is how a max-state stabiliser
(sLSTM's m, the online softmax's running max) shows up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import ir
from .linear import Linearity, _products
from .show import show

INF = math.inf
WIDE = (-INF, INF)
_EXP_MAX = 88.0      # exp overflows float32 above this


@dataclass(frozen=True)
class Stability:
    kind: str        # exp_overflow | stabilised_exp | decay_underflow | negative_eigenvalues | growth
    message: str
    pos: ir.Pos | None = None

    def to_json(self, file: str) -> dict:
        out = {"kind": self.kind, "message": self.message}
        if self.pos is not None:
            out["at"] = f"{file}:{self.pos}"
        return out


_ANNOTATION_RANGES = {"log_gate": (-INF, 0.0), "gate": (0.0, 1.0), "positive": (0.0, INF), "unit": (-1.0, 1.0)}


def _decl_range(d: ir.TensorDecl):
    for a in d.annotations:
        if a.name == "range":
            return tuple(a.args)
        if a.name in _ANNOTATION_RANGES:
            return _ANNOTATION_RANGES[a.name]
    return WIDE


def _mul(a, b):
    products = []
    for x in a:
        for y in b:
            if (x == 0 and math.isinf(y)) or (y == 0 and math.isinf(x)):
                products.append(0.0)
            else:
                products.append(x * y)
    return (min(products), max(products))


def _mono(f, lo, hi):
    def safe(x):
        try:
            return f(x)
        except (OverflowError, ValueError):
            return INF if x > 0 else -INF
    return (safe(lo), safe(hi))


def _exp(x):
    return 0.0 if x == -INF else INF if x == INF or x > 700 else math.exp(x)


def _sigmoid(x):
    return 0.0 if x == -INF else 1.0 if x == INF else 1 / (1 + math.exp(-x)) if x > -700 else 0.0


_MONOTONE = {
    "exp": _exp,
    "sigmoid": _sigmoid,
    "tanh": lambda x: math.tanh(x) if not math.isinf(x) else math.copysign(1.0, x),
    "logsigmoid": lambda x: -INF if x == -INF else 0.0 if x == INF else -math.log1p(math.exp(-x)) if x > -700 else x,
    "softplus": lambda x: 0.0 if x == -INF else INF if x == INF else math.log1p(math.exp(x)) if x < 700 else x,
    "relu": lambda x: max(x, 0.0),
    "log": lambda x: -INF if x <= 0 else math.log(x),
    "sqrt": lambda x: math.sqrt(max(x, 0.0)) if x != INF else INF,
}


class Ranges:
    """Intervals of the step's values (states are unknown: the whole line)."""

    def __init__(self, rec: ir.Recurrence):
        self.rec = rec
        self.decl = {d.name: _decl_range(d) for d in rec.inputs + rec.params}
        self.lets = {}           # let name -> its expression (last definition)

    def of(self, e) -> tuple:
        if isinstance(e, ir.Num):
            return (e.value, e.value)
        if isinstance(e, ir.Ref):
            if e.kind in ("input", "param"):
                return self.decl.get(e.name, WIDE)
            if e.kind == "let" and e.name in self.lets:
                return self.of(self.lets[e.name])
            if e.kind == "dim":
                return (1.0, INF)
            return WIDE
        if isinstance(e, ir.Index):
            return self.of(e.base)
        if isinstance(e, ir.Unary):
            lo, hi = self.of(e.operand)
            return (-hi, -lo) if e.op == "-" else (lo, hi)
        if isinstance(e, ir.Binary):
            a, b = self.of(e.lhs), self.of(e.rhs)
            if e.op == "+":
                lo = a[0] + b[0] if -INF not in (a[0], b[0]) else -INF
                return (lo, a[1] + b[1] if INF not in (a[1], b[1]) else INF)
            if e.op == "-":
                lo = a[0] - b[1] if not (a[0] == -INF or b[1] == INF) else -INF
                hi = a[1] - b[0] if not (a[1] == INF or b[0] == -INF) else INF
                if self._below_max(e.lhs, e.rhs):
                    hi = min(hi, 0.0)
                return (lo, hi)
            if e.op == "*":
                return _mul(a, b)
            if e.op == "/" and b[0] > 0:
                return _mul(a, (1 / b[1] if b[1] != INF else 0.0, 1 / b[0] if b[0] > 0 else INF))
            return WIDE
        if isinstance(e, ir.Call):
            args = [self.of(a) for a in e.args]
            if e.fn in _MONOTONE:
                return _mono(_MONOTONE[e.fn], *args[0])
            if e.fn == "abs":
                lo, hi = args[0]
                return (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))
            if e.fn in ("max", "min"):
                (a0, a1), (b0, b1) = args
                return (max(a0, b0), max(a1, b1)) if e.fn == "max" else (min(a0, b0), min(a1, b1))
            return WIDE
        return WIDE

    def resolve(self, e):
        while isinstance(e, ir.Ref) and e.kind in ("let", "element") and e.name in self.lets:
            e = self.lets[e.name]
        return e

    def _below_max(self, x, m) -> bool:
        """x - m <= 0 because m is max(..., x, ...)."""
        m = self.resolve(m)
        return isinstance(m, ir.Call) and m.fn == "max" and any(self.resolve(a) == self.resolve(x) for a in m.args)


def _factor_exps(e, ranges: Ranges, seen=None):
    """exp calls whose value multiplies into e (not those inside another function's argument)."""
    seen = set() if seen is None else seen
    if isinstance(e, ir.Ref) and e.kind == "let" and e.name in ranges.lets and e.name not in seen:
        seen.add(e.name)
        yield from _factor_exps(ranges.lets[e.name], ranges, seen)
        return
    if isinstance(e, ir.Call) and e.fn == "exp":
        yield e
        return
    if isinstance(e, ir.Call) and e.fn not in ("outer", "householder", "diag", "dot", "sum", "stack", "rowsum"):
        return
    for k in ir.children(e):
        yield from _factor_exps(k, ranges, seen)


def stability(rec: ir.Recurrence, linear: Linearity) -> tuple:
    ranges = Ranges(rec)
    facts = []
    updates = []                                   # (state, expression) of every update, monoids inlined
    for stmt in ir.unrolled(rec.body):
        if isinstance(stmt, ir.Let):
            ranges.lets[stmt.name] = stmt.expr
        elif isinstance(stmt, ir.Assign):
            updates.append(stmt.expr)
        elif isinstance(stmt, ir.Combine):
            m = rec.monoid(stmt.monoid)
            for s in m.body:
                ranges.lets[s.name if isinstance(s, ir.Let) else s.target] = s.expr
            updates += [s.expr for s in m.body]
            updates += list(stmt.left + stmt.right)

    # exp gates: overflow unless stabilised (one fact per gate, all its positions)
    gates = {}
    for u in updates:
        for call in _factor_exps(u, ranges):
            gates.setdefault(show(call), []).append(call)
    done = set()
    for text, calls in gates.items():
        call = calls[0]
        where = f" at {rec.file}:" + ", ".join(dict.fromkeys(str(c.pos) for c in calls))
        lo, hi = ranges.of(call.args[0])
        if hi > _EXP_MAX:
            facts.append(Stability(
                "exp_overflow",
                f"{text}{where} is unbounded (its argument has no upper bound): a kernel must stabilise it in "
                f"log space with a running max state m (as in mLSTM/sLSTM: m_t = max(log f_t + m_{{t-1}}, i_t), "
                f"gates exp(i_t - m_t))", call.pos))
        elif hi <= 0 and ranges._below_max(*_minus(ranges.resolve(call.args[0]))):
            facts.append(Stability("stabilised_exp", f"{text}{where} is stabilised: its argument is "
                                                     f"x - max(..., x, ...) <= 0", call.pos))

    # decays and Householder factors of affine transitions
    for s in rec.states:
        lin = linear.states[s.name]
        if lin.reason is not None:
            continue
        for src, op in lin.terms.items():
            for product in _products(op):
                for f in product:
                    if f.kind in ("scalar", "diag") and not isinstance(f.expr, ir.Num):
                        lo, hi = ranges.of(f.expr)
                        if 0 <= lo < 1e-30 and hi <= 1:
                            key = ("decay", show(f.expr))
                            if key not in done:
                                done.add(key)
                                facts.append(Stability(
                                    "decay_underflow",
                                    f"the decay {show(f.expr)} of state {s.name} lies in ({lo:g}, {hi:g}]: products of "
                                    f"decays over a chunk underflow; accumulate them as sums of logs (cumulative "
                                    f"log-decay) and form ratios exp(G_i - G_j)", getattr(f.expr, "pos", None)))
                    if f.kind == "householder":
                        facts += _householder_facts(f.expr, s.name, ranges, rec, done)
    return tuple(facts)


def _minus(e):
    if isinstance(e, ir.Binary) and e.op == "-":
        return e.lhs, e.rhs
    return e, ir.Num(0.0)


def _householder_facts(h: ir.Call, state: str, ranges: Ranges, rec, done) -> list:
    k, beta = h.args
    key = ("householder", h.pos)
    if key in done:
        return []
    done.add(key)
    lo, hi = ranges.of(beta)
    base = k.base if isinstance(k, ir.Index) else k
    unit = isinstance(base, ir.Ref) and any(a.name == "unit" for a in _annotations(rec, base.name))
    where = f" at {rec.file}:{h.pos}"
    if not unit:
        return [Stability("growth", f"{show(h)}{where}: k is not declared unit-norm, so the eigenvalue "
                                    f"1 - beta ||k||^2 is unbounded and state {state} can grow; "
                                    f"normalise k (annotate it `unit` or use l2norm)", h.pos)]
    if hi > 2:
        return [Stability("growth", f"{show(h)}{where}: beta up to {hi:g} gives eigenvalues below -1; "
                                    f"state {state} can grow", h.pos)]
    if hi > 1:
        return [Stability("negative_eigenvalues",
                          f"{show(h)}{where}: beta in ({lo:g}, {hi:g}) gives the eigenvalue 1 - beta in "
                          f"({1 - hi:g}, {1 - lo:g}): negative eigenvalues (still |.| <= 1); kernels must not "
                          f"assume a positive (contractive-in-sign) transition", h.pos)]
    return []


def _annotations(rec, name):
    try:
        return rec.decl(name).annotations
    except KeyError:
        return ()
