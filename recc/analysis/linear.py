"""Is each state's update affine in the states, and what is its transition?

A structural pass over the IR (no sympy): the step body is run abstractly,
every value becoming a `Lin` -- a sum of linear operators applied to the
states' values at the step's start plus an offset that reads no state -- or a
reason why it is not one (the offending term and its position). A state whose
value after the step is a `Lin` has an affine update S_t = A_t(S_{t-1}) + b_t:
`Lin.terms` is A_t (one operator per source state) and `Lin.offset` is b_t.

Operators are small trees (`Op`): id, scale (scalar gate), hadamard
(elementwise gate), left (M @ X), right (X @ M), transpose, map (another
linear primitive), sum and chain (composition). `transition_of` reads one as a
sum of products of factors and names its kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .. import ir
from ..primitives import PRIMITIVES
from .show import show

TRANSITIONS = ("identity", "scalar", "diagonal", "diagonal_low_rank", "householder_product", "dense", "nonlinear")

# primitives linear in one argument when the others read no state
_LINEAR_CALLS = {"sum", "rowsum", "diag", "stack", "dot", "outer"}


@dataclass(frozen=True)
class Op:
    """A linear operator on a state's value."""
    kind: str                    # id | scale | hadamard | left | right | transpose | map | index | sum | chain
    expr: object = None          # the gate, matrix, primitive name or index
    parts: tuple = ()            # sum: terms; chain: (outer, inner)


ID = Op("id")


def chain(outer: Op, inner: Op) -> Op:
    if inner.kind == "id":
        return outer
    if outer.kind == "id":
        return inner
    return Op("chain", parts=(outer, inner))


def op_sum(a: Op | None, b: Op | None) -> Op | None:
    if a is None:
        return b
    if b is None:
        return a
    return Op("sum", parts=(a.parts if a.kind == "sum" else (a,)) + (b.parts if b.kind == "sum" else (b,)))


@dataclass
class Lin:
    """An abstract value: affine in the states (terms, offset) or not (reason)."""
    terms: dict = field(default_factory=dict)    # source state -> Op
    offset: ir.Expr | None = None                # the part that reads no state (None: zero)
    deps: frozenset = frozenset()                # states it reads, in any way
    reason: str | None = None                    # why it is not affine in the states
    pos: ir.Pos | None = None                    # where (the offending term)
    via: str | None = None                       # the let through which a state arrives

    @property
    def const(self) -> bool:
        return not self.deps


def _nonaffine(message: str, pos, deps) -> Lin:
    return Lin(deps=frozenset(deps), reason=message, pos=pos)


# ---- expression construction (offsets) ------------------------------------------------

def _bin(op, a, b, shape):
    return ir.Binary(op, a, b, tuple(shape))


def _kids(e, kids):
    if isinstance(e, ir.Binary):
        return replace(e, lhs=kids[0], rhs=kids[1])
    if isinstance(e, ir.Unary):
        return replace(e, operand=kids[0])
    if isinstance(e, ir.Call):
        return replace(e, args=tuple(kids))
    if isinstance(e, ir.Index):
        return replace(e, base=kids[0], index=kids[1])
    if isinstance(e, ir.Tuple):
        return replace(e, items=tuple(kids))
    return e


# ---- the abstract step ------------------------------------------------------------------

class Linearity:
    """Runs the step body over `Lin` values. `states[S]` is S's value after the step;
    `lets[name]` each let's (last) value."""

    def __init__(self, rec: ir.Recurrence):
        self.rec = rec
        env = {s.name: Lin({s.name: ID}, None, frozenset({s.name})) for s in rec.states}
        for stmt in ir.unrolled(rec.body):
            if isinstance(stmt, ir.Let):
                value = self.value(stmt.expr, env)
                env[stmt.name] = value
            elif isinstance(stmt, ir.Assign):
                env[stmt.target] = self.value(stmt.expr, env)
            elif isinstance(stmt, ir.Combine):
                monoid = rec.monoid(stmt.monoid)
                left = [self.value(e, env) for e in stmt.left]
                right = [self.value(e, env) for e in stmt.right]
                fields = {monoid.left: dict(zip(monoid.elements, left)),
                          monoid.right: dict(zip(monoid.elements, right))}
                local = {}
                for s in monoid.body:
                    target = s.name if isinstance(s, ir.Let) else s.target
                    local[target] = self.value(s.expr, {**env, **local}, fields, monoid.name)
                for t, e in zip(stmt.targets, monoid.elements):
                    env[t] = local[e]
        self.states = {s.name: env[s.name] for s in rec.states}

    def at(self, pos) -> str:
        return f"{self.rec.file}:{pos}"

    def value(self, e, env, fields=None, monoid=None) -> Lin:
        v = lambda x: self.value(x, env, fields, monoid)
        if isinstance(e, ir.Num):
            return Lin(offset=e)
        if isinstance(e, ir.Field):
            return fields[e.operand][e.name]
        if isinstance(e, ir.Ref):
            if e.kind == "state" or (e.kind in ("let", "element") and e.name in env):
                out = env[e.name]
                if e.kind == "let" and out.deps:
                    out = replace(out, via=e.name if out.via is None or out.reason is None else out.via)
                return out
            return Lin(offset=e)
        kids = [v(k) for k in ir.children(e)]
        bad = next((k for k in kids if k.reason is not None), None)
        if bad is not None:
            return replace(bad, deps=frozenset().union(*(k.deps for k in kids)))
        deps = frozenset().union(*(k.deps for k in kids)) if kids else frozenset()
        if not deps:
            return Lin(offset=_kids(e, [k.offset for k in kids]))
        via = next((k.via for k in kids if k.deps and k.via), None)
        names = " and ".join(sorted(deps))
        verb = "appears" if len(deps) == 1 else "appear"
        suffix = f" (in monoid {monoid})" if monoid else ""

        def fail(what):
            return replace(_nonaffine(f"{names} {verb} {what} at {self.at(e.pos)}{suffix}", e.pos, deps), via=via)

        if isinstance(e, ir.Unary):
            (a,) = kids
            if e.op == "-":
                return self._map(a, Op("scale", ir.Num(-1.0)), lambda o: ir.Unary("-", o, e.shape))
            return self._map(a, Op("transpose"), lambda o: ir.Unary("T", o, e.shape))
        if isinstance(e, ir.Index):
            base, _ = kids
            return self._map(base, Op("index", e.index), lambda o: replace(e, base=o))
        if isinstance(e, ir.Binary):
            a, b = kids
            if e.op in "+-":
                return self._add(a, b, e)
            if e.op == "*":
                if a.deps and b.deps:
                    return fail("in a product of two state-dependent terms")
                c, x, c_expr = (a, b, e.lhs) if not a.deps else (b, a, e.rhs)
                gate = Op("scale" if c.offset.shape == () else "hadamard", c.offset)
                return self._map(x, gate, lambda o: _bin("*", c.offset, o, e.shape))
            if e.op == "/":
                if b.deps:
                    return fail("in a denominator")
                inv = _bin("/", ir.Num(1.0), b.offset, b.offset.shape)
                return self._map(a, Op("scale" if b.offset.shape == () else "hadamard", inv),
                                 lambda o: _bin("/", o, b.offset, e.shape))
            if e.op == "@":
                if a.deps and b.deps:
                    return fail("in a product of two state-dependent terms")
                if b.deps:
                    return self._map(b, Op("left", a.offset), lambda o: _bin("@", a.offset, o, e.shape))
                return self._map(a, Op("right", b.offset), lambda o: _bin("@", o, b.offset, e.shape))
            if e.op == "**":
                if isinstance(e.rhs, ir.Num) and e.rhs.value == 1.0 and not b.deps:
                    return a
                return fail("in a power")
        if isinstance(e, ir.Call):
            moving = [k for k in kids if k.deps]
            if e.fn in _LINEAR_CALLS and len(moving) == 1 and e.fn != "stack":
                i = next(i for i, k in enumerate(kids) if k.deps)
                consts = [k.offset for k in kids]
                return self._map(kids[i], Op("map", e.fn), lambda o: _kids(e, consts[:i] + [o] + consts[i + 1:]))
            if e.fn == "stack":
                return fail("inside stack")  # stacked states: treated as not affine (rare)
            return fail(f"inside {e.fn}")
        return fail("in an expression recc cannot analyse")

    @staticmethod
    def _map(x: Lin, op: Op, offset) -> Lin:
        terms = {s: chain(op, t) for s, t in x.terms.items()}
        return Lin(terms, offset(x.offset) if x.offset is not None else None, x.deps, via=x.via)

    @staticmethod
    def _add(a: Lin, b: Lin, e: ir.Binary) -> Lin:
        minus = e.op == "-"
        terms = dict(a.terms)
        for s, t in b.terms.items():
            t = chain(Op("scale", ir.Num(-1.0)), t) if minus else t
            terms[s] = op_sum(terms.get(s), t)
        if a.offset is None:
            offset = b.offset if b.offset is None or not minus else ir.Unary("-", b.offset, b.offset.shape)
        elif b.offset is None:
            offset = a.offset
        else:
            offset = _bin(e.op, a.offset, b.offset, e.shape)
        return Lin(terms, offset, a.deps | b.deps, via=a.via or b.via)


# ---- transitions ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Factor:
    kind: str                    # scalar | diag | householder | rank1 | dense
    expr: object = None


def _is_one(e) -> bool:
    return isinstance(e, ir.Num) and e.value == 1.0


def _products(op: Op) -> list:
    """The operator as a sum of products of factors: a list of lists."""
    if op.kind == "id":
        return [[]]
    if op.kind == "scale":
        return [[]] if _is_one(op.expr) else [[Factor("scalar", op.expr)]]
    if op.kind == "hadamard":
        return [[Factor("diag", op.expr)]]
    if op.kind in ("left", "right"):
        return matrix_products(op.expr)
    if op.kind == "sum":
        return [p for part in op.parts for p in _products(part)]
    if op.kind == "chain":
        outer, inner = (_products(p) for p in op.parts)
        return [a + b for a in outer for b in inner]
    return [[Factor("dense", op.kind if op.expr is None else op.expr)]]


def matrix_products(m: ir.Expr) -> list:
    """A matrix expression (reading no state) as a sum of products of structured factors."""
    if isinstance(m, ir.Binary) and m.op == "*" and (m.lhs.shape == () or m.rhs.shape == ()):
        s, rest = (m.lhs, m.rhs) if m.lhs.shape == () else (m.rhs, m.lhs)
        return [[Factor("scalar", s)] + p for p in matrix_products(rest)]
    if isinstance(m, ir.Binary) and m.op == "/" and m.rhs.shape == ():
        return [[Factor("scalar", m.rhs)] + p for p in matrix_products(m.lhs)]
    if isinstance(m, ir.Unary) and m.op == "-":
        return [[Factor("scalar", ir.Num(-1.0))] + p for p in matrix_products(m.operand)]
    if isinstance(m, ir.Unary) and m.op == "T" and isinstance(m.operand, ir.Call) \
            and m.operand.fn in ("householder", "diag", "outer"):
        return matrix_products(m.operand)
    if isinstance(m, ir.Binary) and m.op in "+-":
        right = matrix_products(m.rhs)
        if m.op == "-":
            right = [[Factor("scalar", ir.Num(-1.0))] + p for p in right]
        return matrix_products(m.lhs) + right
    if isinstance(m, ir.Binary) and m.op == "@":
        return [a + b for a in matrix_products(m.lhs) for b in matrix_products(m.rhs)]
    if isinstance(m, ir.Call) and m.fn == "householder":
        return [[Factor("householder", m)]]
    if isinstance(m, ir.Call) and m.fn == "diag":
        return [[Factor("diag", m.args[0])]]
    if isinstance(m, ir.Call) and m.fn == "outer":
        return [[Factor("rank1", m)]]
    return [[Factor("dense", m)]]


@dataclass(frozen=True)
class Transition:
    kind: str                    # one of TRANSITIONS
    householder_count: int | None = None
    rank: int | None = None      # diagonal_low_rank: the low-rank part's rank
    gate: str = "none"           # none | scalar | diagonal: the decay multiplying the transition
    factors: tuple = ()          # the factors of a single-product transition, for messages


def _product_kind(p: list) -> str:
    kinds = {f.kind for f in p if not (f.kind == "scalar" and _is_one(f.expr))}
    for k in ("dense", "rank1", "householder", "diag", "scalar"):
        if k in kinds:
            return k
    return "identity"


def _gate(products) -> str:
    kinds = {f.kind for p in products for f in p}
    if "diag" in kinds:
        return "diagonal"
    numbers = all(isinstance(f.expr, ir.Num) for p in products for f in p if f.kind == "scalar")
    return "scalar" if "scalar" in kinds and not numbers else "none"


def transition_of(op: Op) -> Transition:
    products = _products(op)
    kinds = [_product_kind(p) for p in products]
    gate = _gate(products)
    if "dense" in kinds:
        return Transition("dense", gate=gate)
    if len(products) == 1:
        kind = kinds[0]
        factors = tuple(products[0])
        if kind == "householder":
            n = sum(f.kind == "householder" for f in products[0])
            return Transition("householder_product", n, gate=gate, factors=factors)
        if kind == "rank1":
            return Transition("diagonal_low_rank", rank=1, gate=gate, factors=factors)
        return Transition({"diag": "diagonal", "scalar": "scalar", "identity": "identity"}[kind], gate=gate,
                          factors=factors)
    low = sum(k in ("rank1", "householder") for k in kinds)
    if low:
        return Transition("diagonal_low_rank", rank=low, gate=gate)
    for kind, name in (("diag", "diagonal"), ("scalar", "scalar")):
        if kind in kinds:
            return Transition(name, gate=gate)
    return Transition("identity")


# ---- the input term ---------------------------------------------------------------------------

def _rank(b: ir.Expr) -> int | None:
    """The rank of a matrix expression, where its form bounds it (None: full)."""
    if isinstance(b, ir.Call) and b.fn == "outer":
        return 1
    if isinstance(b, ir.Binary) and b.op in "*/" and (b.lhs.shape == () or b.rhs.shape == ()):
        return _rank(b.rhs if b.lhs.shape == () else b.lhs)
    if isinstance(b, ir.Unary):
        return _rank(b.operand)
    if isinstance(b, ir.Binary) and b.op in "+-":
        r1, r2 = _rank(b.lhs), _rank(b.rhs)
        return None if r1 is None or r2 is None else r1 + r2
    if isinstance(b, ir.Binary) and b.op == "@":
        ranks = [r for r in (_rank(b.lhs) if len(b.lhs.shape) == 2 else None,
                             _rank(b.rhs) if len(b.rhs.shape) == 2 else None) if r is not None]
        return min(ranks) if ranks else None
    return None


def input_term(offset: ir.Expr | None, state: ir.TensorDecl) -> tuple:
    """(kind, words): kind is none | elementwise | rank1 | rank<n> | dense."""
    if offset is None:
        return "none", "no input term"
    if len(state.shape) < 2:
        return "elementwise", f"elementwise input {show(offset)}"
    r = _rank(offset)
    if r == 1:
        return "rank1", f"rank-1 outer product {show(offset)}"
    if r is not None:
        return f"rank{r}", f"sum of {r} rank-1 terms"
    return "dense", f"dense input term {show(offset)}"


# ---- the Jacobian's structure (for Newton iterations) --------------------------------------------

def elementwise_dependence(rec: ir.Recurrence) -> bool:
    """True if every state's update reads the states only through elementwise operations (so the
    step's Jacobian is diagonal, or block-diagonal per channel for several states)."""
    mixed = {}                                      # let name -> reads a state through a mixing op
    dep = {s.name for s in rec.states}
    reads = lambda e, live: any(isinstance(n, ir.Ref) and n.name in live for n in ir.walk(e))
    live = set(dep)
    shapes = {s.name: s.shape for s in rec.states}
    ok = True

    def mixes(e) -> bool:
        if isinstance(e, ir.Ref):
            return mixed.get(e.name, False)
        if isinstance(e, (ir.Num, ir.Field)):
            return False
        kids = ir.children(e)
        if any(mixes(k) for k in kids):
            return True
        elementwise = isinstance(e, ir.Unary) and e.op == "-" or \
            isinstance(e, ir.Binary) and e.op in ("+", "-", "*", "/", "**") or \
            isinstance(e, ir.Call) and getattr(PRIMITIVES.get(e.fn), "elementwise", False)
        return not elementwise and any(reads(k, live) for k in kids)

    for stmt in ir.unrolled(rec.body):
        if isinstance(stmt, (ir.Let, ir.Assign)):
            name = stmt.name if isinstance(stmt, ir.Let) else stmt.target
            if reads(stmt.expr, live):
                live.add(name)
                m = mixes(stmt.expr)
                mixed[name] = m
                if isinstance(stmt, ir.Assign) and (m or stmt.expr.shape != shapes[name]):
                    ok = False
        elif isinstance(stmt, ir.Combine):
            exprs = stmt.left + stmt.right
            if any(mixes(e) for e in exprs):
                ok = False
            for t in stmt.targets:
                mixed[t] = any(mixes(e) for e in exprs)
                live.add(t)
    if len({tuple(s.shape) for s in rec.states}) > 1:
        ok = False
    return ok
