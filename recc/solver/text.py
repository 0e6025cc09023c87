"""Text form of a :class:`~recc.solver.model.Problem` (grammar: ``grammar/constraints.lark``).

::

    # chunked forward tiles
    var BK in pow2(16, 256)          # or {16, 32, 64}, or 1..4
    const K = 128
    constraint k_tiles: K % BK == 0
    constraint warps: BK >= 128 -> num_warps >= 4
    minimize: K // BK + num_warps

Names must be declared before use; ``/`` is floor division like ``//``;
unlabelled constraints are labelled ``c1, c2, ...`` by position. Every error
in the text raises :class:`ConstraintSyntaxError` with its 1-based line and column.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Mapping

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from ..errors import ReccError
from .model import (
    And,
    BinOp,
    Const,
    Constraint,
    Expr,
    Implies,
    Member,
    MinMax,
    Neg,
    Or,
    PowerOfTwo,
    Problem,
    Var,
    check_constraint,
    check_exprs,
    compare,
    format_values,
    negate,
    powers_of_two,
)

RESERVED = frozenset("var const constraint minimize in not and or pow2 min max".split())
MAX_DOMAIN = 1 << 20  # values in one domain or membership set
_NEGATIVE_LITERAL = re.compile(r"-\s*[0-9][0-9_]*")
_BINOPS = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%"}


class ConstraintSyntaxError(ReccError, ValueError):
    """Bad constraint text; ``str()`` is ``"line:col: message"``."""

    def __init__(self, line: int, col: int, message: str):
        super().__init__(f"{line}:{col}: {message}")
        self.line, self.col, self.message = line, col, message


def _grammar_path(name: str) -> Path:
    try:
        from recc.resources import grammar_path
    except ImportError:
        return Path(__file__).resolve().parents[2] / "grammar" / name
    return grammar_path(name)


@functools.lru_cache(maxsize=None)
def _parser() -> Lark:
    grammar = _grammar_path("constraints.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse_problem(text: str, consts: Mapping[str, int] | None = None) -> Problem:
    """Parse the text form; ``consts`` supplies named constants the text may
    use without declaring (declaring one of them again is an error)."""
    tree = _tree(text)
    try:
        return _Builder(text, consts or {}).problem(tree)
    except RecursionError:
        raise ConstraintSyntaxError(1, 1, "expression nested too deeply") from None


@functools.lru_cache(maxsize=64)
def _tree(text: str) -> Tree:
    """The parse tree of `text` (cached: a family's constraints are parsed once per process and
    built into a problem per set of constants; the builder only reads the tree)."""
    try:
        return _parser().parse(text)
    except UnexpectedInput as error:
        raise _syntax_error(text, error) from None


def _syntax_error(text: str, error: UnexpectedInput) -> ConstraintSyntaxError:
    if isinstance(error, UnexpectedCharacters):
        return ConstraintSyntaxError(
            error.line, error.column, f"unexpected character {text[error.pos_in_stream]!r}"
        )
    if isinstance(error, UnexpectedToken) and error.token.type != "$END":
        message = f"unexpected {error.token.value!r}"
        expected = _describe_expected(error.accepts or error.expected)
        if expected:
            message += f", expected {expected}"
        return ConstraintSyntaxError(error.line, error.column, message)
    lines = text.split("\n")
    return ConstraintSyntaxError(len(lines), len(lines[-1]) + 1, "unexpected end of text")


_EXPRESSION_START = {"NAME", "INT", "LPAR", "MINUS", "MIN", "MAX", "POW2", "NOT"}
_WORDS = {"COMPARE": "a comparison", "$END": "end of text"}


def _describe_expected(terminals: set[str]) -> str:
    """``"a or b"`` for up to four alternatives, ``""`` when there are more."""
    names = set(terminals)
    described = []
    if "NAME" in names:
        names -= _EXPRESSION_START
        described.append("an expression")
    described += sorted(_WORDS.get(n) or repr(_parser().get_terminal(n).pattern.value) for n in names)
    return " or ".join(described) if len(described) <= 4 else ""


def _at(node: Tree | Token) -> tuple[int, int]:
    if isinstance(node, Token):
        return node.line, node.column
    return node.meta.line, node.meta.column


class _Builder:
    """Turns a parse tree into a Problem, resolving names in declaration order."""

    def __init__(self, text: str, consts: Mapping[str, int]):
        self.text = text
        self.scope: dict[str, Expr] = {name: Const(value, name) for name, value in consts.items()}
        self.variables: dict[str, Var] = {}
        self.constraints: list[Constraint] = []
        self.objective: Expr | None = None

    def error(self, node: Tree | Token, message: str) -> ConstraintSyntaxError:
        return ConstraintSyntaxError(*_at(node), message)

    def problem(self, tree: Tree) -> Problem:
        for statement in tree.children:
            getattr(self, "on_" + statement.data)(statement)
        return Problem(tuple(self.variables.values()), tuple(self.constraints), self.objective)

    # statements --------------------------------------------------------

    def declare(self, name: Token, value: Expr) -> None:
        if name in RESERVED:
            raise self.error(name, f"'{name}' is a reserved word")
        if name in self.scope:
            raise self.error(name, f"'{name}' is already defined")
        self.scope[str(name)] = value

    def on_var_decl(self, tree: Tree) -> None:
        name, domain = tree.children
        var = Var(str(name), self.domain(domain))
        self.declare(name, var)
        self.variables[var.name] = var

    def on_const_decl(self, tree: Tree) -> None:
        name, value = tree.children
        self.declare(name, Const(self.constant(value), str(name)))

    def on_constraint_decl(self, tree: Tree) -> None:
        label, body = tree.children
        c = self.condition(body)
        name = str(label) if label is not None else f"c{len(self.constraints) + 1}"
        if name in RESERVED:
            raise self.error(label, f"'{name}' is a reserved word")
        if name in {k.label for k in self.constraints}:
            raise self.error(label or tree, f"duplicate constraint label '{name}'")
        try:
            check_constraint(c, self.variables)
        except ValueError as error:
            raise self.error(body, str(error)) from None
        self.constraints.append(c.named(name))

    def on_objective(self, tree: Tree) -> None:
        if self.objective is not None:
            raise self.error(tree, "a second 'minimize'")
        (body,) = tree.children
        objective = self.number(body)
        try:
            check_exprs([objective], self.variables)
        except ValueError as error:
            raise self.error(body, str(error)) from None
        self.objective = objective

    # values ------------------------------------------------------------

    def constant(self, tree: Tree) -> int:
        expr = self.number(tree)
        if expr.variables():
            raise self.error(tree, f"'{expr}' is not constant")
        try:
            return expr.evaluate({})
        except ZeroDivisionError:
            raise self.error(tree, f"division by zero in '{expr}'") from None

    def domain(self, tree: Tree) -> tuple[int, ...]:
        bounds = [self.constant(child) for child in tree.children]
        if tree.data == "value_set":
            values: tuple[int, ...] = tuple(bounds)
        elif tree.data == "value_range":
            if bounds[1] - bounds[0] >= MAX_DOMAIN:
                raise self.error(tree, f"more than {MAX_DOMAIN} values")
            values = tuple(range(bounds[0], bounds[1] + 1))
        else:
            values = powers_of_two(*bounds)
        if not values:
            raise self.error(tree, "empty set of values")
        return values

    # expressions and conditions -----------------------------------------

    def number(self, node: Tree | Token) -> Expr:
        value = self.build(node)
        if not isinstance(value, Expr):
            raise self.error(node, f"expected a number, found the condition '{value}'")
        return value

    def condition(self, node: Tree | Token) -> Constraint:
        value = self.build(node)
        if not isinstance(value, Constraint):
            raise self.error(node, f"expected a condition, found the number '{value}'")
        return value

    def build(self, tree: Tree) -> Expr | Constraint:
        kind, args = tree.data, tree.children
        if kind == "number":
            return Const(int(args[0].replace("_", "")))
        if kind == "name":
            if args[0] not in self.scope:
                raise self.error(args[0], f"unknown name '{args[0]}'")
            return self.scope[args[0]]
        if kind in _BINOPS:
            return BinOp(_BINOPS[kind], self.number(args[0]), self.number(args[1]))
        if kind == "neg":
            return self.negative(tree)
        if kind in ("min_", "max_"):
            return MinMax(kind[:3], tuple(self.number(a) for a in args))
        if kind == "pow2":
            return PowerOfTwo(self.number(args[0]))
        if kind == "compare":
            return compare(self.number(args[0]), str(args[1]), self.number(args[2]))
        if kind in ("member", "not_member"):
            return Member(self.number(args[0]), self.domain(args[1]), kind == "not_member")
        if kind == "negate":
            return negate(self.condition(args[0]))
        if kind in ("all_of", "any_of"):
            parts = tuple(self.condition(a) for a in args)
            return And(parts) if kind == "all_of" else Or(parts)
        assert kind == "implies", kind
        return Implies(self.condition(args[0]), self.condition(args[1]))

    def negative(self, tree: Tree) -> Expr:
        """``-3`` is the literal -3; ``-(3)`` and ``-x`` are negations."""
        operand = self.number(tree.children[0])
        source = self.text[tree.meta.start_pos : tree.meta.end_pos]
        if _NEGATIVE_LITERAL.fullmatch(source):
            return Const(-operand.value)
        return Neg(operand)


def format_problem(problem: Problem) -> str:
    """Text that :func:`parse_problem` turns back into an equal Problem (named
    constants that no constraint or objective uses are not kept)."""
    consts = problem.consts()
    names = [v.name for v in problem.variables] + list(consts)
    for name in names + [c.label for c in problem.constraints]:
        if name in RESERVED:
            raise ValueError(f"'{name}' is reserved in the text form")
    if problem.objective is not None and not isinstance(problem.objective, Expr):
        raise ValueError("a callable objective has no text form")
    lines = [f"var {v.name} in {format_values(v.domain)}" for v in problem.variables]
    lines += [f"const {name} = {value}" for name, value in consts.items()]
    lines += [f"constraint {c.label}: {c}" for c in problem.constraints]
    if problem.objective is not None:
        lines.append(f"minimize: {problem.objective}")
    return "\n".join(lines) + "\n"
