"""Model of an integer constraint problem: variables, expressions, constraints.

Everything here is an immutable value with structural equality. Semantics are
Python's: ``//`` and ``%`` floor, ``min``/``max`` as builtins. A divisor must
not be able to be zero: :class:`Problem` rejects ``a // b`` and ``a % b``
whenever the interval bounds of ``b`` over the declared domains contain 0.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping, Sequence, Union

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

Assignment = Mapping[str, int]
Domains = Mapping[str, Sequence[int]]


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    return value


def _values(values: Iterable[int], what: str) -> tuple[int, ...]:
    result = tuple(sorted({_int(v, what) for v in values}))
    if not result:
        raise ValueError(f"{what} is empty")
    return result


def powers_of_two(lo: int, hi: int) -> tuple[int, ...]:
    """The powers of two ``p`` with ``lo <= p <= hi``."""
    return tuple(1 << k for k in range(max(hi, 1).bit_length()) if lo <= 1 << k <= hi)


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


# ---------------------------------------------------------------------------
# Interval arithmetic (shared by Expr.bounds and the compiled bounds functions)


def interval_mul(al: int, ah: int, bl: int, bh: int) -> tuple[int, int]:
    if al >= 0 and bl >= 0:
        return al * bl, ah * bh
    corners = (al * bl, al * bh, ah * bl, ah * bh)
    return min(corners), max(corners)


def interval_floordiv(al: int, ah: int, bl: int, bh: int) -> tuple[int, int]:
    """Bounds of ``a // b``; requires ``0`` outside ``[bl, bh]``."""
    if al >= 0 and bl > 0:
        return al // bh, ah // bl
    corners = (al // bl, al // bh, ah // bl, ah // bh)
    return min(corners), max(corners)


def interval_mod(al: int, ah: int, bl: int, bh: int) -> tuple[int, int]:
    """Bounds of ``a % b``; requires ``0`` outside ``[bl, bh]``."""
    if al == ah and bl == bh:
        return al % bl, al % bl
    if bl < 0:
        return bl + 1, 0
    if al >= 0:
        return (al, ah) if ah < bl else (0, min(ah, bh - 1))
    return 0, bh - 1


# ---------------------------------------------------------------------------
# Expressions

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "//": 2, "%": 2}
_UNARY = 3
_ATOM = 4


class Expr:
    """Integer expression. Build with Python operators: ``+ - * // %``, unary ``-``,
    :func:`min_of`, :func:`max_of`; ``<= < >= >`` give a :class:`Compare`
    (use :func:`eq` / :func:`ne` for equality, ``==`` stays structural)."""

    __slots__ = ()

    def __add__(self, other: ExprLike) -> Expr:
        return BinOp("+", self, as_expr(other))

    def __radd__(self, other: ExprLike) -> Expr:
        return BinOp("+", as_expr(other), self)

    def __sub__(self, other: ExprLike) -> Expr:
        return BinOp("-", self, as_expr(other))

    def __rsub__(self, other: ExprLike) -> Expr:
        return BinOp("-", as_expr(other), self)

    def __mul__(self, other: ExprLike) -> Expr:
        return BinOp("*", self, as_expr(other))

    def __rmul__(self, other: ExprLike) -> Expr:
        return BinOp("*", as_expr(other), self)

    def __floordiv__(self, other: ExprLike) -> Expr:
        return BinOp("//", self, as_expr(other))

    def __rfloordiv__(self, other: ExprLike) -> Expr:
        return BinOp("//", as_expr(other), self)

    def __mod__(self, other: ExprLike) -> Expr:
        return BinOp("%", self, as_expr(other))

    def __rmod__(self, other: ExprLike) -> Expr:
        return BinOp("%", as_expr(other), self)

    def __neg__(self) -> Expr:
        return Neg(self)

    def __le__(self, other: ExprLike) -> Constraint:
        return compare(self, "<=", other)

    def __lt__(self, other: ExprLike) -> Constraint:
        return compare(self, "<", other)

    def __ge__(self, other: ExprLike) -> Constraint:
        return compare(self, ">=", other)

    def __gt__(self, other: ExprLike) -> Constraint:
        return compare(self, ">", other)

    def children(self) -> tuple[Expr, ...]:
        return ()

    def variables(self) -> tuple[Var, ...]:
        """Distinct variables in first-occurrence order."""
        return _distinct(e for e in _walk(self) if isinstance(e, Var))

    def evaluate(self, assignment: Assignment) -> int:
        raise NotImplementedError

    def bounds(self, domains: Domains | None = None) -> tuple[int, int]:
        """Interval ``(lo, hi)`` containing every value over the box of
        ``domains`` (sorted values by variable name; default: declared domains)."""
        raise NotImplementedError

    def _precedence(self) -> int:
        return _ATOM

    def __str__(self) -> str:
        raise NotImplementedError


ExprLike = Union[Expr, int]


def as_expr(value: ExprLike) -> Expr:
    if isinstance(value, Expr):
        return value
    return Const(_int(value, "expression operand"))


def _walk(expr: Expr) -> Iterable[Expr]:
    yield expr
    for child in expr.children():
        yield from _walk(child)


def _distinct(items: Iterable) -> tuple:
    return tuple(dict.fromkeys(items))


def _wrap(expr: Expr, at_least: int) -> str:
    return str(expr) if expr._precedence() >= at_least else f"({expr})"


@dataclass(frozen=True)
class Const(Expr):
    """Integer literal; ``name`` (optional) is how it prints, e.g. ``smem``."""

    value: int
    name: str | None = None

    def __post_init__(self) -> None:
        _int(self.value, "constant")
        if self.name is not None and not _IDENTIFIER.match(self.name):
            raise ValueError(f"invalid constant name {self.name!r}")

    def evaluate(self, assignment: Assignment) -> int:
        return self.value

    def bounds(self, domains: Domains | None = None) -> tuple[int, int]:
        return self.value, self.value

    def _precedence(self) -> int:
        return _UNARY if self.name is None and self.value < 0 else _ATOM

    def __str__(self) -> str:
        return self.name if self.name is not None else str(self.value)


@dataclass(frozen=True)
class Var(Expr):
    """Integer variable with a finite domain (stored sorted, deduplicated)."""

    name: str
    domain: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _IDENTIFIER.match(self.name):
            raise ValueError(f"invalid variable name {self.name!r}")
        object.__setattr__(self, "domain", _values(self.domain, f"domain of {self.name}"))

    @classmethod
    def range(cls, name: str, lo: int, hi: int) -> Var:
        """Domain ``lo, lo+1, ..., hi`` (inclusive)."""
        return cls(name, range(lo, hi + 1))

    @classmethod
    def powers_of_two(cls, name: str, lo: int, hi: int) -> Var:
        """Domain of the powers of two in ``[lo, hi]``."""
        return cls(name, powers_of_two(lo, hi))

    @classmethod
    def one_of(cls, name: str, values: Iterable[int]) -> Var:
        return cls(name, tuple(values))

    def evaluate(self, assignment: Assignment) -> int:
        return assignment[self.name]

    def bounds(self, domains: Domains | None = None) -> tuple[int, int]:
        values = self.domain if domains is None else domains[self.name]
        return values[0], values[-1]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr

    def __post_init__(self) -> None:
        if self.op not in _PRECEDENCE:
            raise ValueError(f"unknown operator {self.op!r}")

    def children(self) -> tuple[Expr, ...]:
        return self.left, self.right

    def evaluate(self, assignment: Assignment) -> int:
        a = self.left.evaluate(assignment)
        b = self.right.evaluate(assignment)
        if self.op == "+":
            return a + b
        if self.op == "-":
            return a - b
        if self.op == "*":
            return a * b
        if self.op == "//":
            return a // b
        return a % b

    def bounds(self, domains: Domains | None = None) -> tuple[int, int]:
        al, ah = self.left.bounds(domains)
        bl, bh = self.right.bounds(domains)
        if self.op == "+":
            return al + bl, ah + bh
        if self.op == "-":
            return al - bh, ah - bl
        if self.op == "*":
            return interval_mul(al, ah, bl, bh)
        if self.op == "//":
            return interval_floordiv(al, ah, bl, bh)
        return interval_mod(al, ah, bl, bh)

    def _precedence(self) -> int:
        return _PRECEDENCE[self.op]

    def __str__(self) -> str:
        p = self._precedence()
        return f"{_wrap(self.left, p)} {self.op} {_wrap(self.right, p + 1)}"


@dataclass(frozen=True)
class Neg(Expr):
    operand: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def evaluate(self, assignment: Assignment) -> int:
        return -self.operand.evaluate(assignment)

    def bounds(self, domains: Domains | None = None) -> tuple[int, int]:
        lo, hi = self.operand.bounds(domains)
        return -hi, -lo

    def _precedence(self) -> int:
        return _UNARY

    def __str__(self) -> str:
        # A literal or a nested negation is parenthesised so that the text
        # parses back to the same tree (``-3`` parses as the literal -3).
        operand = self.operand
        plain = operand._precedence() == _ATOM and not isinstance(operand, Const)
        return f"-{operand}" if plain else f"-({operand})"


@dataclass(frozen=True)
class MinMax(Expr):
    fn: str  # "min" or "max"
    args: tuple[Expr, ...]

    def __post_init__(self) -> None:
        if self.fn not in ("min", "max") or not self.args:
            raise ValueError(f"bad {self.fn}() call")

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def evaluate(self, assignment: Assignment) -> int:
        pick = min if self.fn == "min" else max
        return pick(a.evaluate(assignment) for a in self.args)

    def bounds(self, domains: Domains | None = None) -> tuple[int, int]:
        pick = min if self.fn == "min" else max
        los, his = zip(*(a.bounds(domains) for a in self.args))
        return pick(los), pick(his)

    def __str__(self) -> str:
        return f"{self.fn}({', '.join(map(str, self.args))})"


def min_of(*args: ExprLike) -> Expr:
    return MinMax("min", tuple(as_expr(a) for a in args))


def max_of(*args: ExprLike) -> Expr:
    return MinMax("max", tuple(as_expr(a) for a in args))


# ---------------------------------------------------------------------------
# Constraints. Only the label of a top-level constraint is used.


class Constraint:
    """A condition on an assignment. ``label`` names it in explanations."""

    __slots__ = ()
    label: str

    def named(self, label: str) -> Constraint:
        return replace(self, label=label)

    def parts(self) -> tuple[Constraint, ...]:
        return ()

    def exprs(self) -> tuple[Expr, ...]:
        """The expressions this constraint reads directly (not via parts)."""
        return ()

    def variables(self) -> tuple[Var, ...]:
        return _distinct(v for e in _all_exprs(self) for v in e.variables())

    def holds(self, assignment: Assignment) -> bool:
        raise NotImplementedError

    def _precedence(self) -> int:
        return _ATOM

    def describe(self) -> str:
        """``label (text)``."""
        return f"{self.label} ({self})"


def _all_exprs(c: Constraint) -> Iterable[Expr]:
    yield from c.exprs()
    for part in c.parts():
        yield from _all_exprs(part)


def _unlabelled(parts: Iterable[Constraint]) -> tuple[Constraint, ...]:
    return tuple(p.named("") if p.label else p for p in parts)


def _cwrap(c: Constraint, at_least: int) -> str:
    return str(c) if c._precedence() >= at_least else f"({c})"


COMPARE_OPS = ("<=", "<", ">=", ">", "==", "!=")
_COMPARE_FN = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
    "!=": operator.ne,
}
_NEGATED_OP = {"<=": ">", "<": ">=", ">=": "<", ">": "<=", "==": "!=", "!=": "=="}
_IMPLIES, _OR, _AND = 1, 2, 3


@dataclass(frozen=True)
class Compare(Constraint):
    """``lhs op rhs`` with ``op`` one of ``<= < >= > == !=``."""

    lhs: Expr
    op: str
    rhs: Expr
    label: str = ""

    def __post_init__(self) -> None:
        if self.op not in COMPARE_OPS:
            raise ValueError(f"unknown comparison {self.op!r}")

    def exprs(self) -> tuple[Expr, ...]:
        return self.lhs, self.rhs

    def holds(self, assignment: Assignment) -> bool:
        return _COMPARE_FN[self.op](self.lhs.evaluate(assignment), self.rhs.evaluate(assignment))

    def __str__(self) -> str:
        return f"{self.lhs} {self.op} {self.rhs}"


@dataclass(frozen=True)
class Divisible(Constraint):
    """``dividend % divisor == 0``."""

    dividend: Expr
    divisor: Expr
    label: str = ""

    def exprs(self) -> tuple[Expr, ...]:
        return self.dividend, self.divisor

    def holds(self, assignment: Assignment) -> bool:
        return self.dividend.evaluate(assignment) % self.divisor.evaluate(assignment) == 0

    def __str__(self) -> str:
        return f"{BinOp('%', self.dividend, self.divisor)} == 0"


@dataclass(frozen=True)
class PowerOfTwo(Constraint):
    """``expr`` is (``negated``: is not) a positive power of two."""

    expr: Expr
    negated: bool = False
    label: str = ""

    def exprs(self) -> tuple[Expr, ...]:
        return (self.expr,)

    def holds(self, assignment: Assignment) -> bool:
        return is_power_of_two(self.expr.evaluate(assignment)) != self.negated

    def __str__(self) -> str:
        return f"{'not ' if self.negated else ''}pow2({self.expr})"


@dataclass(frozen=True)
class Member(Constraint):
    """``expr in values`` (``negated``: ``not in``); values stored sorted."""

    expr: Expr
    values: tuple[int, ...]
    negated: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _values(self.values, "membership set"))

    def exprs(self) -> tuple[Expr, ...]:
        return (self.expr,)

    def holds(self, assignment: Assignment) -> bool:
        return (self.expr.evaluate(assignment) in self.values) != self.negated

    def __str__(self) -> str:
        return f"{self.expr} {'not in' if self.negated else 'in'} {format_values(self.values)}"


@dataclass(frozen=True)
class And(Constraint):
    """All of ``items``."""

    items: tuple[Constraint, ...]  # at least two
    label: str = ""

    def __post_init__(self) -> None:
        if len(self.items) < 2:
            raise ValueError("And needs at least two parts")
        object.__setattr__(self, "items", _unlabelled(self.items))

    def parts(self) -> tuple[Constraint, ...]:
        return self.items

    def holds(self, assignment: Assignment) -> bool:
        return all(c.holds(assignment) for c in self.items)

    def _precedence(self) -> int:
        return _AND

    def __str__(self) -> str:
        return " and ".join(_cwrap(c, _AND + 1) for c in self.items)


@dataclass(frozen=True)
class Or(Constraint):
    """Any of ``items``."""

    items: tuple[Constraint, ...]  # at least two
    label: str = ""

    def __post_init__(self) -> None:
        if len(self.items) < 2:
            raise ValueError("Or needs at least two parts")
        object.__setattr__(self, "items", _unlabelled(self.items))

    def parts(self) -> tuple[Constraint, ...]:
        return self.items

    def holds(self, assignment: Assignment) -> bool:
        return any(c.holds(assignment) for c in self.items)

    def _precedence(self) -> int:
        return _OR

    def __str__(self) -> str:
        return " or ".join(_cwrap(c, _OR + 1) for c in self.items)


@dataclass(frozen=True)
class Implies(Constraint):
    """``premise -> conclusion``: ``conclusion`` holds wherever ``premise`` does."""

    premise: Constraint
    conclusion: Constraint
    label: str = ""

    def __post_init__(self) -> None:
        premise, conclusion = _unlabelled((self.premise, self.conclusion))
        object.__setattr__(self, "premise", premise)
        object.__setattr__(self, "conclusion", conclusion)

    def parts(self) -> tuple[Constraint, ...]:
        return self.premise, self.conclusion

    def holds(self, assignment: Assignment) -> bool:
        return not self.premise.holds(assignment) or self.conclusion.holds(assignment)

    def _precedence(self) -> int:
        return _IMPLIES

    def __str__(self) -> str:
        return f"{_cwrap(self.premise, _OR)} -> {self.conclusion}"


def format_values(values: Sequence[int]) -> str:
    """Shortest text for a value set, of ``{a, b}``, ``lo..hi``, ``pow2(lo, hi)``."""
    lo, hi = values[0], values[-1]
    forms = ["{" + ", ".join(map(str, values)) + "}"]
    if tuple(values) == tuple(range(lo, hi + 1)):
        forms.append(f"{lo}..{hi}")
    if tuple(values) == powers_of_two(lo, hi):
        forms.append(f"pow2({lo}, {hi})")
    return min(forms, key=len)


# ---------------------------------------------------------------------------
# Constraint builders


def compare(lhs: ExprLike, op: str, rhs: ExprLike) -> Constraint:
    """``lhs op rhs``; ``a % b == 0`` becomes :class:`Divisible`."""
    lhs, rhs = as_expr(lhs), as_expr(rhs)
    if op == "==" and isinstance(lhs, BinOp) and lhs.op == "%" and rhs == Const(0):
        return Divisible(lhs.left, lhs.right)
    return Compare(lhs, op, rhs)


def eq(lhs: ExprLike, rhs: ExprLike) -> Constraint:
    return compare(lhs, "==", rhs)


def ne(lhs: ExprLike, rhs: ExprLike) -> Constraint:
    return compare(lhs, "!=", rhs)


def divisible(dividend: ExprLike, divisor: ExprLike) -> Constraint:
    """``dividend % divisor == 0``."""
    return Divisible(as_expr(dividend), as_expr(divisor))


def power_of_two(expr: ExprLike) -> Constraint:
    return PowerOfTwo(as_expr(expr))


def member(expr: ExprLike, values: Iterable[int]) -> Constraint:
    return Member(as_expr(expr), tuple(values))


def all_of(*items: Constraint) -> Constraint:
    """Conjunction of one or more constraints."""
    return items[0] if len(items) == 1 else And(items)


def any_of(*items: Constraint) -> Constraint:
    """Disjunction of one or more constraints."""
    return items[0] if len(items) == 1 else Or(items)


def implies(premise: Constraint, conclusion: Constraint) -> Constraint:
    return Implies(premise, conclusion)


def negate(c: Constraint) -> Constraint:
    """The unlabelled constraint that holds exactly where ``c`` does not."""
    if isinstance(c, Compare):
        return compare(c.lhs, _NEGATED_OP[c.op], c.rhs)
    if isinstance(c, Divisible):
        return Compare(BinOp("%", c.dividend, c.divisor), "!=", Const(0))
    if isinstance(c, (PowerOfTwo, Member)):
        return replace(c, negated=not c.negated, label="")
    if isinstance(c, And):
        return Or(tuple(negate(p) for p in c.items))
    if isinstance(c, Or):
        return And(tuple(negate(p) for p in c.items))
    if isinstance(c, Implies):
        return And((c.premise, negate(c.conclusion)))
    raise TypeError(f"not a constraint: {c!r}")


# ---------------------------------------------------------------------------
# Problem

Objective = Union[Expr, Callable[[dict[str, int]], float], None]
MAX_DEPTH = 64  # nesting levels of a constraint or objective (compiled code allows ~200)


def check_constraint(c: Constraint, declared: Mapping[str, Var]) -> None:
    """Raise ValueError unless ``c`` only uses ``declared`` variables, no
    divisor can be zero and it nests at most MAX_DEPTH levels."""
    if not isinstance(c, Constraint):
        raise TypeError(f"not a constraint: {c!r}")
    _check_depth(c)
    check_exprs(list(_all_exprs(c)), declared)
    for part in _parts_recursive(c):
        if isinstance(part, Divisible):
            _check_divisor(part.divisor, part)


def check_exprs(exprs: Sequence[Expr], declared: Mapping[str, Var]) -> None:
    """:func:`check_constraint` for expressions."""
    for expr in exprs:
        _check_depth(expr)
        for var in expr.variables():
            if declared.get(var.name) != var:
                raise ValueError(f"variable {var.name} is not declared with domain {var.domain}")
        for node in _walk(expr):
            if isinstance(node, BinOp) and node.op in ("//", "%"):
                _check_divisor(node.right, node)


def _depth(node: Expr | Constraint) -> int:
    children = node.children() if isinstance(node, Expr) else node.exprs() + node.parts()
    return 1 + max((_depth(child) for child in children), default=0)


def _check_depth(node: Expr | Constraint) -> None:
    if _depth(node) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")


def _parts_recursive(c: Constraint) -> Iterable[Constraint]:
    yield c
    for part in c.parts():
        yield from _parts_recursive(part)


def _check_divisor(divisor: Expr, where: object) -> None:
    lo, hi = divisor.bounds()
    if lo <= 0 <= hi:
        raise ValueError(f"divisor {divisor} may be zero in {where}")


@dataclass(frozen=True)
class Problem:
    """Variables (declaration order matters for tie-breaking), labelled
    constraints and an objective to minimise: an :class:`Expr`, a callable
    ``(assignment: dict[str, int]) -> float``, or ``None`` (any feasible point).

    Labels are identifiers; unlabelled constraints are labelled ``c1, c2, ...``
    by position. A callable objective is evaluated at every feasible point and
    at the domain neighbours of returned points (to find binding constraints)."""

    variables: tuple[Var, ...]
    constraints: tuple[Constraint, ...] = ()
    objective: Objective = None

    def __post_init__(self) -> None:
        variables = tuple(self.variables)
        declared = {v.name: v for v in variables}
        if len(declared) != len(variables):
            raise ValueError("duplicate variable name")
        constraints = tuple(
            c if c.label else c.named(f"c{i}") for i, c in enumerate(self.constraints, 1)
        )
        labels = [c.label for c in constraints]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate constraint label in {labels}")
        for label in labels:
            if not _IDENTIFIER.match(label):
                raise ValueError(f"constraint label {label!r} is not an identifier")
        for c in constraints:
            check_constraint(c, declared)
        objective = self.objective
        if isinstance(objective, int):
            objective = as_expr(objective)
        if isinstance(objective, Expr):
            check_exprs([objective], declared)
        elif objective is not None and not callable(objective):
            raise TypeError(f"objective must be an Expr, a callable or None, not {objective!r}")
        object.__setattr__(self, "variables", variables)
        object.__setattr__(self, "constraints", constraints)
        object.__setattr__(self, "objective", objective)
        consts = self.consts()
        clash = set(consts) & set(declared)
        if clash:
            raise ValueError(f"names used both as constant and variable: {sorted(clash)}")

    def consts(self) -> dict[str, int]:
        """Named constants used by constraints and objective, in first-use order."""
        exprs = [e for c in self.constraints for e in _all_exprs(c)]
        if isinstance(self.objective, Expr):
            exprs.append(self.objective)
        found: dict[str, int] = {}
        for expr in exprs:
            for node in _walk(expr):
                if isinstance(node, Const) and node.name is not None:
                    if found.setdefault(node.name, node.value) != node.value:
                        raise ValueError(f"constant {node.name} has two values")
        return found

    def is_feasible(self, assignment: Assignment) -> bool:
        return all(c.holds(assignment) for c in self.constraints)

    def cost(self, assignment: Assignment) -> int | float:
        """Objective value at ``assignment`` (0 when there is no objective)."""
        if self.objective is None:
            return 0
        if isinstance(self.objective, Expr):
            return self.objective.evaluate(assignment)
        return self.objective(dict(assignment))
