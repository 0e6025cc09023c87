"""Lower expressions and constraints to straight-line Python functions.

Variables are addressed by position: ``index`` maps a variable name to its slot
in the value vector ``v`` (evaluation) or in the bound vectors ``lo``/``hi``
(interval bounds). The generated code only reads those vectors, so it is safe
to ``exec``; it runs 3-6x faster than walking the model tree. Functions are
cached by source text, so re-solving a problem (or a like one) skips codegen.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

from .model import (
    And,
    BinOp,
    Compare,
    Const,
    Constraint,
    Divisible,
    Expr,
    Implies,
    Member,
    MinMax,
    Neg,
    Or,
    PowerOfTwo,
    Var,
    interval_floordiv,
    interval_mod,
    interval_mul,
    is_power_of_two,
)

Index = Mapping[str, int]
Vector = Sequence[int]

_INTERVAL_FN = {"*": "_mul", "//": "_floordiv", "%": "_mod"}
_GLOBALS = {
    "_mul": interval_mul,
    "_floordiv": interval_floordiv,
    "_mod": interval_mod,
    "_is_pow2": is_power_of_two,
}


def _value_source(expr: Expr, index: Index) -> str:
    if isinstance(expr, Const):
        return f"({expr.value})"
    if isinstance(expr, Var):
        return f"v[{index[expr.name]}]"
    if isinstance(expr, BinOp):
        return f"({_value_source(expr.left, index)} {expr.op} {_value_source(expr.right, index)})"
    if isinstance(expr, Neg):
        return f"(-{_value_source(expr.operand, index)})"
    if isinstance(expr, MinMax):
        return f"{expr.fn}({', '.join(_value_source(a, index) for a in expr.args)})"
    raise TypeError(f"not an expression: {expr!r}")


def _check_source(c: Constraint, index: Index, sets: dict[str, str]) -> str:
    """Source of ``c``'s truth; membership sets are added to ``sets``."""
    if isinstance(c, Compare):
        return f"({_value_source(c.lhs, index)} {c.op} {_value_source(c.rhs, index)})"
    if isinstance(c, Divisible):
        return f"({_value_source(c.dividend, index)} % {_value_source(c.divisor, index)} == 0)"
    if isinstance(c, PowerOfTwo):
        return f"({'not ' if c.negated else ''}_is_pow2({_value_source(c.expr, index)}))"
    if isinstance(c, Member):
        name = f"_set{len(sets)}"
        sets[name] = repr(c.values)
        return f"({_value_source(c.expr, index)} {'not in' if c.negated else 'in'} {name})"
    if isinstance(c, (And, Or)):
        joiner = " and " if isinstance(c, And) else " or "
        return "(" + joiner.join(_check_source(p, index, sets) for p in c.items) + ")"
    if isinstance(c, Implies):
        premise = _check_source(c.premise, index, sets)
        return f"(not {premise} or {_check_source(c.conclusion, index, sets)})"
    raise TypeError(f"not a constraint: {c!r}")


@functools.lru_cache(maxsize=4096)
def _define(source: str) -> Callable:
    """The function ``f`` that ``source`` defines."""
    namespace = dict(_GLOBALS)
    exec(source, namespace)
    return namespace["f"]


def compile_value(expr: Expr, index: Index) -> Callable[[Vector], int]:
    """``f(v)``: the value of ``expr`` at the assignment vector ``v``."""
    return _define(f"def f(v):\n    return {_value_source(expr, index)}\n")


def compile_check(c: Constraint, index: Index) -> Callable[[Vector], bool]:
    """``f(v)``: whether ``c`` holds at the assignment vector ``v``."""
    sets: dict[str, str] = {}
    body = _check_source(c, index, sets)
    params = "".join(f", {name}=frozenset({values})" for name, values in sets.items())
    return _define(f"def f(v{params}):\n    return {body}\n")


class _BoundsEmitter:
    """Emits one statement per node; returns the (lo, hi) source of each node."""

    def __init__(self, index: Index):
        self.index = index
        self.lines: list[str] = []

    def temp(self, lo_source: str, hi_source: str) -> tuple[str, str]:
        n = len(self.lines)
        self.lines.append(f"l{n}, h{n} = {lo_source}, {hi_source}")
        return f"l{n}", f"h{n}"

    def emit(self, expr: Expr) -> tuple[str, str]:
        if isinstance(expr, Const):
            return str(expr.value), str(expr.value)
        if isinstance(expr, Var):
            i = self.index[expr.name]
            return f"lo[{i}]", f"hi[{i}]"
        if isinstance(expr, Neg):
            lo, hi = self.emit(expr.operand)
            return self.temp(f"-{hi}", f"-{lo}")
        if isinstance(expr, MinMax):
            los, his = zip(*(self.emit(a) for a in expr.args))
            return self.temp(f"{expr.fn}({', '.join(los)})", f"{expr.fn}({', '.join(his)})")
        if isinstance(expr, BinOp):
            al, ah = self.emit(expr.left)
            bl, bh = self.emit(expr.right)
            if expr.op == "+":
                return self.temp(f"{al} + {bl}", f"{ah} + {bh}")
            if expr.op == "-":
                return self.temp(f"{al} - {bh}", f"{ah} - {bl}")
            n = len(self.lines)
            self.lines.append(f"l{n}, h{n} = {_INTERVAL_FN[expr.op]}({al}, {ah}, {bl}, {bh})")
            return f"l{n}", f"h{n}"
        raise TypeError(f"not an expression: {expr!r}")


def compile_bounds(expr: Expr, index: Index) -> Callable[[Vector, Vector], tuple[int, int]]:
    """``f(lo, hi)``: an interval containing ``expr`` over the box ``lo <= v <= hi``."""
    emitter = _BoundsEmitter(index)
    lo, hi = emitter.emit(expr)
    body = "".join(f"    {line}\n" for line in emitter.lines)
    return _define(f"def f(lo, hi):\n{body}    return {lo}, {hi}\n")
