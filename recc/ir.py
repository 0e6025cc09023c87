"""The typed IR of a recurrence: frozen dataclasses, produced by `recc.check`.

Every later stage (reference evaluator, analysis, planner, renderer) reads
this and nothing earlier. Shapes are tuples of dimension names or fixed
integers; `()` is a scalar (one number per sequence, step and head).

Conventions fixed here and relied on everywhere:

* Inputs are per step: a tensor `[B, T, H, *shape]`.
* Params are shared over time: a tensor `[H, *shape]`.
* States are carried over time: a tensor `[N, H, *shape]`, N sequences.
* Outputs are per step: a tensor `[B, T, H, *shape]`.
* The body is a sequential program over one time step. A state read before
  it is assigned in the step is its value from the previous step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

Dim = Union[str, int]
Shape = tuple  # tuple[Dim, ...]


@dataclass(frozen=True)
class Pos:
    """A source position: 1-based line and column."""
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


# ---- expressions -------------------------------------------------------------

@dataclass(frozen=True)
class Expr:
    """Base of expression nodes. `shape` is filled in by the checker."""


@dataclass(frozen=True)
class Num(Expr):
    value: float
    pos: Pos = field(compare=False, default=Pos(0, 0))
    shape: Shape = ()


@dataclass(frozen=True)
class Ref(Expr):
    """A name. `kind` is one of: input, param, state, let, const, loop, dim,
    element (a monoid element assigned earlier in the combine), operand (a
    monoid's `a`/`b`; only under Field)."""
    name: str
    kind: str
    shape: Shape = ()
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Call(Expr):
    """A primitive from `recc.primitives.PRIMITIVES`, or a monoid combine."""
    fn: str
    args: tuple
    shape: Shape = ()
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Binary(Expr):
    """op in + - * / @ **. Elementwise ops need equal shapes or a scalar side."""
    op: str
    lhs: Expr
    rhs: Expr
    shape: Shape = ()
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Unary(Expr):
    """op is '-' (negation) or 'T' (transpose of the last two dims)."""
    op: str
    operand: Expr
    shape: Shape = ()
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Index(Expr):
    """`base[index]`: picks one slice along the first (stacked) dim of base.
    The index is a Num with an integer value or a loop Ref."""
    base: Expr
    index: Expr
    shape: Shape = ()
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Field(Expr):
    """`a.m` inside a monoid combine: element m of operand a."""
    operand: str
    name: str
    pos: Pos = field(compare=False, default=Pos(0, 0))
    shape: Shape = ()


@dataclass(frozen=True)
class Tuple(Expr):
    """`(x, y)`: only as an argument of a monoid combine."""
    items: tuple
    shape: Shape = ()
    pos: Pos = field(compare=False, default=Pos(0, 0))


# ---- statements --------------------------------------------------------------

@dataclass(frozen=True)
class Let:
    name: str
    expr: Expr
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Assign:
    """Assign a new value to a state (or, in a monoid, to an element)."""
    target: str
    expr: Expr
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Combine:
    """`x, y = M((x, y), (u, v))`: states x, y take the monoid M's combine of
    two tuples, elementwise over the states' common shape."""
    targets: tuple
    monoid: str
    left: tuple
    right: tuple
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Emit:
    """`output o = expr`: the step's value of output o."""
    output: str
    expr: Expr
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class For:
    """A bounded loop inside one step: `for j in start..stop` (stop excluded)."""
    var: str
    start: int
    stop: int
    body: tuple
    pos: Pos = field(compare=False, default=Pos(0, 0))


# ---- declarations ------------------------------------------------------------

@dataclass(frozen=True)
class DimDecl:
    """A dimension. `size` is fixed in the spec (`n = 2`) or None (read off
    the arguments at call time)."""
    name: str
    size: int | None
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Annotation:
    """`: log_gate`, `: range(0, 2)`, `: unit`: what values an input takes.
    See `recc.primitives.ANNOTATIONS`."""
    name: str
    args: tuple = ()


@dataclass(frozen=True)
class TensorDecl:
    """An input, param, state or output."""
    name: str
    shape: Shape
    pos: Pos = field(compare=False, default=Pos(0, 0))
    annotations: tuple = ()
    init: float = 0.0          # states only: the value of a fresh state


@dataclass(frozen=True)
class ConstDecl:
    """A scalar known before the run, e.g. `const scale = K ** -0.5`; the op
    takes it as a keyword argument with this default."""
    name: str
    expr: Expr
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Monoid:
    """A user-declared associative operator on tuples of elements."""
    name: str
    left: str
    right: str
    elements: tuple
    identity: tuple              # floats, one per element, or () if undeclared
    body: tuple                  # Let / Assign statements over Field and Ref
    pos: Pos = field(compare=False, default=Pos(0, 0))


@dataclass(frozen=True)
class Recurrence:
    name: str
    topology: str                # "sequence" (grid2d / dag are parsed, not yet lowered)
    dims: tuple                  # DimDecl
    inputs: tuple                # TensorDecl
    params: tuple                # TensorDecl
    consts: tuple                # ConstDecl
    states: tuple                # TensorDecl
    outputs: tuple               # TensorDecl
    body: tuple                  # statements of one step
    monoids: tuple = ()          # Monoid
    source: str = field(compare=False, default="")
    file: str = field(compare=False, default="<spec>")

    def decl(self, name: str) -> TensorDecl:
        for d in self.inputs + self.params + self.states + self.outputs:
            if d.name == name:
                return d
        raise KeyError(name)

    def monoid(self, name: str) -> Monoid:
        return next(m for m in self.monoids if m.name == name)

    @property
    def free_dims(self) -> tuple:
        """Dims whose size is read off the arguments at call time."""
        return tuple(d.name for d in self.dims if d.size is None)

    @property
    def fixed_dims(self) -> dict:
        return {d.name: d.size for d in self.dims if d.size is not None}


def walk(expr: Expr):
    """Yield expr and all its sub-expressions, parents first."""
    yield expr
    for child in children(expr):
        yield from walk(child)


def children(expr: Expr) -> tuple:
    if isinstance(expr, Call):
        return expr.args
    if isinstance(expr, Binary):
        return (expr.lhs, expr.rhs)
    if isinstance(expr, Unary):
        return (expr.operand,)
    if isinstance(expr, Index):
        return (expr.base, expr.index)
    if isinstance(expr, Tuple):
        return expr.items
    return ()


def unrolled(body: tuple, env: dict | None = None) -> tuple:
    """The body with every `for` loop unrolled and loop variables replaced by
    numbers: a flat list of Let / Assign / Combine / Emit."""
    out = []
    for stmt in body:
        if isinstance(stmt, For):
            for j in range(stmt.start, stmt.stop):
                sub = {**(env or {}), stmt.var: j}
                out.extend(unrolled(stmt.body, sub))
        elif env:
            out.append(_substitute_loop(stmt, env))
        else:
            out.append(stmt)
    return tuple(out)


def _substitute_loop(node, env: dict):
    from dataclasses import fields, replace
    if isinstance(node, Ref) and node.kind == "loop":
        return Num(float(env[node.name]), node.pos)
    if isinstance(node, tuple):
        return tuple(_substitute_loop(x, env) for x in node)
    if isinstance(node, (Expr, Let, Assign, Emit, Combine)):
        changes = {}
        for f in fields(node):
            v = getattr(node, f.name)
            if isinstance(v, (Expr, tuple)):
                changes[f.name] = _substitute_loop(v, env)
        return replace(node, **changes)
    return node
