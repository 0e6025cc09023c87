"""Is a user's combine operator associative? Does its declared identity hold?

`prove(monoid)` first tries a symbolic proof with sympy: f(f(a, b), c) and
f(a, f(b, c)) are built element by element and their difference normalised
(additions pushed into max/min, exponentials merged, expanded); zero for every
element is a proof. Failing that, it evaluates both sides with the reference
evaluator on random triples (fixed seed) and reports the first triple where
they differ as a counterexample. With neither, the answer is "unknown", which
the planner treats as not associative. The declared identity e is checked the
same way: f(e, a) == a == f(a, e).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from types import SimpleNamespace

import torch

from .. import ir

PROVED, REFUTED, UNKNOWN = "proved", "refuted", "unknown"


@dataclass(frozen=True)
class Counterexample:
    """Operands where two expressions that should agree do not."""
    law: str                     # "associativity" | "left identity" | "right identity"
    operands: tuple              # ((name, {element: value}), ...)
    left: dict                   # element -> value of the law's left side
    right: dict                  # element -> value of its right side

    def __str__(self) -> str:
        fmt = lambda d: "(" + ", ".join(f"{k}={_num(v)}" for k, v in d.items()) + ")"
        ops = ", ".join(f"{n} = {fmt(v)}" for n, v in self.operands)
        sides = {"associativity": ("f(f(a, b), c)", "f(a, f(b, c))"),
                 "left identity": ("f(e, a)", "a"), "right identity": ("f(a, e)", "a")}[self.law]
        return f"{sides[0]} = {fmt(self.left)} but {sides[1]} = {fmt(self.right)} at {ops}"

    def to_json(self) -> dict:
        return {"law": self.law, "operands": {n: v for n, v in self.operands}, "left": self.left,
                "right": self.right, "text": str(self)}


@dataclass(frozen=True)
class Associativity:
    status: str                  # proved | refuted | unknown
    how: str                     # one line: the proof, or why not
    counterexample: Counterexample | None = None
    identity: str = "absent"     # proved | refuted | unknown | absent (none declared)
    identity_counterexample: Counterexample | None = None


def _num(v: float) -> str:
    return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:.6g}"


# ---- sympy forms of the primitives ----------------------------------------------------------

@functools.lru_cache(maxsize=1)
def sympy_forms() -> dict:
    """The sympy form of each elementwise primitive (sympy is imported only when a monoid is analysed)."""
    import sympy as sp
    return {
        "exp": sp.exp, "log": sp.log, "tanh": sp.tanh, "sqrt": sp.sqrt, "abs": sp.Abs,
        "sigmoid": lambda x: 1 / (1 + sp.exp(-x)),
        "logsigmoid": lambda x: -sp.log(1 + sp.exp(-x)),
        "softplus": lambda x: sp.log(1 + sp.exp(x)),
        "relu": lambda x: sp.Max(x, 0),
        "silu": lambda x: x / (1 + sp.exp(-x)),
        "max": sp.Max, "min": sp.Min,
        "step": lambda x: sp.Heaviside(x, 0),
    }


def _sym_num(v: float):
    import sympy as sp
    if v == math.inf:
        return sp.oo
    if v == -math.inf:
        return -sp.oo
    return sp.Integer(int(v)) if v == int(v) else sp.Rational(repr(v))


def _sympy(e, operands: dict, local: dict, consts: dict):
    import sympy as sp
    go = lambda x: _sympy(x, operands, local, consts)
    if isinstance(e, ir.Num):
        return _sym_num(e.value)
    if isinstance(e, ir.Field):
        return operands[e.operand][e.name]
    if isinstance(e, ir.Ref):
        if e.name in local:
            return local[e.name]
        return consts.setdefault(e.name, sp.Symbol(e.name, real=True))
    if isinstance(e, ir.Unary):
        return -go(e.operand)
    if isinstance(e, ir.Binary):
        a, b = go(e.lhs), go(e.rhs)
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                "**": lambda: a ** b}[e.op]()
    if isinstance(e, ir.Call):
        return sympy_forms()[e.fn](*[go(a) for a in e.args])
    raise TypeError(f"cannot translate {e!r}")


def combine_sympy(m: ir.Monoid, left: dict, right: dict, consts: dict) -> dict:
    """f(left, right), element by element, as sympy expressions."""
    operands = {m.left: left, m.right: right}
    local = {}
    for s in m.body:
        target = s.name if isinstance(s, ir.Let) else s.target
        local[target] = _sympy(s.expr, operands, local, consts)
    return {e: local[e] for e in m.elements}


def _push_into_max(expr):
    """c + max(x, y) -> max(x + c, y + c) (and for min), bottom-up, so nested maxima flatten."""
    import sympy as sp
    if not expr.args:
        return expr
    expr = expr.func(*[_push_into_max(a) for a in expr.args])
    if isinstance(expr, sp.Add):
        for term in expr.args:
            if isinstance(term, (sp.Max, sp.Min)):
                rest = expr - term
                if not rest.has(sp.Max, sp.Min):
                    return _push_into_max(term.func(*[a + rest for a in term.args]))
    return expr


def _normal(expr, push: bool):
    import sympy as sp
    if push:
        expr = _push_into_max(expr)
    return sp.expand(sp.powsimp(sp.expand(expr), combine="exp"))


def _zero(diff, thorough: bool = True) -> bool:
    """diff == 0 identically? Normalisation first; `thorough` adds simplify and max/min case splits."""
    import sympy as sp
    if diff == 0:
        return True
    d = _normal(diff, False)
    if d == 0 or _normal(diff, True) == 0:
        return True
    if not thorough:
        return False
    if diff.has(sp.Max, sp.Min) and _piecewise_zero(diff, (), [0]):
        return True
    if sp.count_ops(d) <= 60:              # simplify is slow on large expressions
        try:
            return sp.simplify(d) == 0
        except Exception:
            return False
    return False


def _piecewise_zero(diff, conds: tuple, leaves: list) -> bool:
    """Zero on every piece: split each innermost max/min on which argument wins; a piece whose
    conditions (linear, strict) leave no open region is skipped (diff is continuous, so the open
    pieces decide). Gives up (False) past 256 pieces or on nonlinear conditions."""
    import sympy as sp
    atoms = [a for a in diff.atoms(sp.Max, sp.Min) if not any(x.has(sp.Max, sp.Min) for x in a.args)]
    if not atoms:
        leaves[0] += 1
        d = _normal(diff, False)
        return d == 0 or _empty(conds) or (sp.count_ops(d) <= 60 and sp.simplify(d) == 0)
    atom = sorted(atoms, key=sp.default_sort_key)[0]
    for win in atom.args:
        if leaves[0] > 256:
            return False
        new = conds + tuple((win - o) if isinstance(atom, sp.Max) else (o - win) for o in atom.args if o != win)
        if _empty(new):
            continue
        if not _piecewise_zero(diff.xreplace({atom: win}), new, leaves):
            return False
    return True


def _empty(conds: tuple) -> bool:
    """True if {c > 0 for c in conds} is empty (linear conds with rational coefficients; else False):
    Fourier-Motzkin elimination, exact for strict inequalities."""
    import sympy as sp
    if not conds:
        return False
    syms = sorted(set().union(*(c.free_symbols for c in conds)), key=str)
    rows = []
    for c in conds:
        d = sp.expand(c).as_coefficients_dict()
        row = []
        for key in [sp.Integer(1)] + syms:
            v = d.get(key, 0)
            if not (v == 0 or v.is_Rational):
                return False
            row.append(Fraction(int(sp.numer(v)), int(sp.denom(v))) if v != 0 else Fraction(0))
        if set(d) - {sp.Integer(1), *syms}:
            return False                                   # a nonlinear term
        rows.append(tuple(row))
    for j in range(1, len(syms) + 1):
        pos = [r for r in rows if r[j] > 0]
        neg = [r for r in rows if r[j] < 0]
        rest = [r for r in rows if r[j] == 0]
        for p_ in pos:
            for n_ in neg:
                rest.append(tuple(a * -n_[j] + b * p_[j] for a, b in zip(p_, n_)))
        rows = list(set(rest))
        if len(rows) > 4000:
            return False
    return any(r[0] <= 0 for r in rows)                   # some 0 < const fails


# ---- numbers ------------------------------------------------------------------------------------

def _combine_numeric(m: ir.Monoid, left: list, right: list, consts: dict) -> list:
    from ..reference import combine
    return combine(m, left, right, SimpleNamespace(consts=consts))


def _samples(m: ir.Monoid, n: int, gen: torch.Generator):
    """Operands drawn from several distributions, one batch of n per draw."""
    k = len(m.elements)
    draws = [
        lambda: torch.randn(n, 1, generator=gen, dtype=torch.float64),
        lambda: 3 * torch.randn(n, 1, generator=gen, dtype=torch.float64),
        lambda: 0.05 + torch.rand(n, 1, generator=gen, dtype=torch.float64),
        lambda: torch.randint(-3, 4, (n, 1), generator=gen).to(torch.float64),
    ]
    for draw in draws:
        yield [[draw() for _ in range(k)] for _ in range(3)]


def _differ(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    both = torch.isfinite(x) & torch.isfinite(y)
    return both & ((x - y).abs() > 1e-7 * (1 + x.abs() + y.abs()))


def _counterexample(m: ir.Monoid, consts: dict, law: str, n: int = 256, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    f = lambda x, y: _combine_numeric(m, x, y, consts)
    ident = [torch.full((n, 1), v, dtype=torch.float64) for v in m.identity]
    for a, b, c in _samples(m, n, gen):
        if law == "associativity":
            lhs, rhs, ops = f(f(a, b), c), f(a, f(b, c)), (("a", a), ("b", b), ("c", c))
        elif law == "left identity":
            lhs, rhs, ops = f(ident, a), a, (("e", ident), ("a", a))
        else:
            lhs, rhs, ops = f(a, ident), a, (("a", a), ("e", ident))
        bad = torch.zeros(n, 1, dtype=torch.bool)
        for x, y in zip(lhs, rhs):
            bad |= _differ(x.expand(n, 1), y.expand(n, 1))
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            pick = lambda vals: {e: float(v.expand(n, 1)[i, 0]) for e, v in zip(m.elements, vals)}
            return Counterexample(law, tuple((name, pick(v)) for name, v in ops), pick(lhs), pick(rhs))
    return None


# ---- the verdict --------------------------------------------------------------------------------

def prove(m: ir.Monoid, consts: dict | None = None) -> Associativity:
    """Associativity (and identity) of monoid `m`; `consts`: values for consts it reads (numeric search)."""
    return _prove(m, tuple(sorted((consts or {}).items())))


@functools.lru_cache(maxsize=128)
def _prove(m: ir.Monoid, consts: tuple) -> Associativity:
    import sympy as sp
    values = dict(consts)
    symbols = {}
    ops = {n: {e: sp.Symbol(f"{n}_{e}", real=True) for e in m.elements} for n in "abc"}
    f = lambda x, y: combine_sympy(m, x, y, symbols)
    try:
        lhs, rhs = f(f(ops["a"], ops["b"]), ops["c"]), f(ops["a"], f(ops["b"], ops["c"]))
        diffs = [lhs[e] - rhs[e] for e in m.elements]
        quick = all(_zero(d, thorough=False) for d in diffs)
    except (TypeError, KeyError):
        diffs, quick = None, False
    numeric_consts = {name: values.get(name, 0.7) for name in (str(s) for s in symbols)}
    proof = "f(f(a, b), c) - f(a, f(b, c)) simplifies to 0 for every element (sympy)"
    cx = None
    if quick:
        status, how = PROVED, proof
    elif (cx := _counterexample(m, numeric_consts, "associativity")) is not None:
        status, how = REFUTED, f"counterexample: {cx}"
    elif diffs is not None and all(_zero(d) for d in diffs):
        status, how = PROVED, proof + ", case by case on which argument of each max/min wins" \
            if any(d.has(sp.Max, sp.Min) for d in diffs) else proof
    else:
        status, how = UNKNOWN, ("no symbolic proof and no counterexample in 1024 random triples; "
                                "treated as not associative")
    identity, icx = "absent", None
    if m.identity:
        e = {name: _sym_num(v) for name, v in zip(m.elements, m.identity)}
        try:
            left, right = f(e, ops["a"]), f(ops["a"], e)
            sym_ok = all(_zero(left[x] - ops["a"][x]) and _zero(right[x] - ops["a"][x]) for x in m.elements)
        except (TypeError, KeyError):
            sym_ok = False
        if sym_ok:
            identity = PROVED
        else:
            icx = _counterexample(m, numeric_consts, "left identity") or \
                _counterexample(m, numeric_consts, "right identity")
            identity = REFUTED if icx is not None else UNKNOWN
    return Associativity(status, how, cx, identity, icx)
