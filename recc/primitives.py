"""The primitive functions and input annotations of the recurrence language.

One registry entry per primitive: its arity, its shape rule, its reference
implementation on batched torch tensors, and its symbolic form for analysis.
Adding a primitive to the language means adding one entry here; the checker,
the reference evaluator and the analysis all read this table.

Reference implementations receive tensors laid out `[N, H, *shape]`: two
batch axes (sequence, head) in front of the value's own shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

BATCH = 2  # leading batch axes of every reference value: [N, H, ...]


class ShapeMismatch(Exception):
    """Raised by a shape rule; the checker adds the position."""


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape else "a scalar"


def _same(shapes):
    return shapes[0]


def _elementwise2(name):
    def rule(shapes):
        a, b = shapes
        if a == b or b == ():
            return a
        if a == ():
            return b
        raise ShapeMismatch(f"{name} needs arguments of one shape or a scalar, got {_fmt(a)} and {_fmt(b)}")
    return rule


def _vector(name, what="argument"):
    def rule(shapes):
        if len(shapes[0]) != 1:
            raise ShapeMismatch(f"{name} needs a vector {what}, got {_fmt(shapes[0])}")
        return shapes[0]
    return rule


def _dot_rule(shapes):
    a, b = shapes
    if len(a) != 1 or a != b:
        raise ShapeMismatch(f"dot needs two vectors of one shape, got {_fmt(a)} and {_fmt(b)}")
    return ()


def _outer_rule(shapes):
    a, b = shapes
    if len(a) != 1 or len(b) != 1:
        raise ShapeMismatch(f"outer needs two vectors, got {_fmt(a)} and {_fmt(b)}")
    return (a[0], b[0])


def _householder_rule(shapes):
    k, beta = shapes
    if len(k) != 1:
        raise ShapeMismatch(f"householder needs a vector k, got {_fmt(k)}")
    if beta != ():
        raise ShapeMismatch(f"householder needs a scalar beta, got {_fmt(beta)}")
    return (k[0], k[0])


def _diag_rule(shapes):
    if len(shapes[0]) != 1:
        raise ShapeMismatch(f"diag needs a vector, got {_fmt(shapes[0])}")
    return (shapes[0][0], shapes[0][0])


def _value_dims(x: torch.Tensor) -> tuple:
    return tuple(range(BATCH, x.ndim))


def _sum(x):
    return x.sum(dim=_value_dims(x)) if x.ndim > BATCH else x


def _householder(k, beta):
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    return eye - beta[..., None, None] * k[..., :, None] * k[..., None, :]


def _rowsum_rule(shapes):
    if len(shapes[0]) != 2:
        raise ShapeMismatch(f"rowsum needs a matrix, got {_fmt(shapes[0])}")
    return shapes[0][:1]


def _stack_rule(shapes):
    if not shapes:
        raise ShapeMismatch("stack needs at least one argument")
    full = [s for s in shapes if s != ()] or [()]
    if any(s != full[0] for s in full):
        raise ShapeMismatch(f"stack needs arguments of one shape or scalars, got "
                            f"{', '.join(_fmt(s) for s in shapes)}")
    return (len(shapes),) + full[0]


def _stack(*xs):
    rank = max(x.ndim for x in xs)
    xs = torch.broadcast_tensors(*[x.reshape(tuple(x.shape) + (1,) * (rank - x.ndim)) for x in xs])
    return torch.stack(xs, dim=BATCH)


@dataclass(frozen=True)
class Primitive:
    name: str
    arity: int               # -1: any number of arguments (at least one)
    shape: Callable          # list of arg shapes -> result shape (raises ShapeMismatch)
    torch: Callable          # reference implementation on [N, H, *shape] tensors
    sympy: str | None        # name of the sympy function for elementwise analysis, if any
    elementwise: bool
    doc: str


def _unary(name, fn, sympy_name, doc):
    return Primitive(name, 1, _same, fn, sympy_name, True, doc)


PRIMITIVES: dict[str, Primitive] = {p.name: p for p in [
    _unary("exp", torch.exp, "exp", "e**x"),
    _unary("log", torch.log, "log", "natural logarithm"),
    _unary("sigmoid", torch.sigmoid, "sigmoid", "1 / (1 + e**-x)"),
    _unary("logsigmoid", F.logsigmoid, "logsigmoid", "log(sigmoid(x)), a log-space gate"),
    _unary("tanh", torch.tanh, "tanh", "hyperbolic tangent"),
    _unary("softplus", F.softplus, "softplus", "log(1 + e**x)"),
    _unary("relu", torch.relu, "relu", "max(x, 0)"),
    _unary("silu", F.silu, "silu", "x * sigmoid(x)"),
    _unary("sqrt", torch.sqrt, "sqrt", "square root"),
    _unary("abs", torch.abs, "abs", "absolute value"),
    Primitive("max", 2, _elementwise2("max"), torch.maximum, "Max", True, "elementwise maximum"),
    Primitive("min", 2, _elementwise2("min"), torch.minimum, "Min", True, "elementwise minimum"),
    Primitive("sum", 1, lambda s: (), _sum, None, False, "sum of all elements: a scalar"),
    Primitive("dot", 2, _dot_rule, lambda a, b: (a * b).sum(-1), None, False, "inner product of two vectors"),
    Primitive("outer", 2, _outer_rule, lambda a, b: a[..., :, None] * b[..., None, :], None, False,
              "outer product: outer(k, v)[i, j] = k[i] * v[j]"),
    Primitive("householder", 2, _householder_rule, _householder, None, False,
              "generalized Householder transition I - beta * k k^T"),
    Primitive("diag", 1, _diag_rule, torch.diag_embed, None, False, "diagonal matrix of a vector"),
    Primitive("l2norm", 1, _vector("l2norm"), lambda x: x / x.norm(dim=-1, keepdim=True), None, False,
              "x / ||x||"),
    # used by the adjoint (recc.adjoint) to write derivatives; usable in specs too
    _unary("step", lambda x: (x > 0).to(x.dtype), "Heaviside", "1 where x > 0, else 0 (the derivative of relu)"),
    Primitive("rowsum", 1, _rowsum_rule, lambda x: x.sum(-1), None, False, "sum over a matrix's last dim"),
    Primitive("stack", -1, _stack_rule, _stack, None, False,
              "stack(x0, x1, ...)[j] = xj: a new leading dim; a scalar argument fills its slice"),
]}


# ---- annotations on inputs ----------------------------------------------------

@dataclass(frozen=True)
class AnnotationKind:
    """What an input annotation means: how many numbers it takes, and how to
    draw valid random values for it (used by tests and benchmarks)."""
    name: str
    arity: int
    sample: Callable         # (shape, generator, dtype, *args) -> tensor
    doc: str


def _draw(shape, gen, dtype):
    return torch.randn(shape, generator=gen, dtype=dtype)


def _sample_unit(shape, gen, dtype):
    x = _draw(shape, gen, dtype)
    return x / x.norm(dim=-1, keepdim=True)


def _sample_range(shape, gen, dtype, lo, hi):
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=dtype)


ANNOTATIONS: dict[str, AnnotationKind] = {a.name: a for a in [
    AnnotationKind("log_gate", 0, lambda s, g, d: F.logsigmoid(_draw(s, g, d) + 2.0),
                   "a gate in log space: values <= 0, the decay is exp(value)"),
    AnnotationKind("gate", 0, lambda s, g, d: torch.sigmoid(_draw(s, g, d) + 2.0), "values in (0, 1)"),
    AnnotationKind("positive", 0, lambda s, g, d: F.softplus(_draw(s, g, d)) + 1e-3, "values > 0"),
    AnnotationKind("unit", 0, _sample_unit, "unit L2 norm over the last dim"),
    AnnotationKind("range", 2, _sample_range, "values in the open interval (lo, hi)"),
]}


def sample_input(decl_shape: tuple, annotations: tuple, gen: torch.Generator, dtype=torch.float64):
    """Random values for an input of the given full shape, honouring its annotations."""
    for ann in annotations:
        kind = ANNOTATIONS[ann.name]
        return kind.sample(decl_shape, gen, dtype, *ann.args)
    return _draw(decl_shape, gen, dtype)
