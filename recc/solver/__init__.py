"""Exact integer constraint solver for tile and launch parameters (cf. FlashRNN's ConstrINT).

    solve(problem) -> Solution
    feasible_points(problem, limit=None) -> list[Solution]
    split_points(problem, terms, limit=1) -> list[Solution]   an objective summed over terms, part by part
    term_points(problem, terms) -> (shared, points, {term: ...})  every feasible point, by term (sweeps)

A :class:`Problem` has integer variables with finite domains, labelled
constraints and an objective to minimise: an :class:`Expr` (integer, Python
semantics for ``//`` and ``%``), a callable ``(dict[str, int]) -> float``, or
``None``. Returned points satisfy every constraint, are ordered by objective,
and ties go to the lexicographically smallest values in variable declaration
order, so results are deterministic and equal to brute-force enumeration.
``Solution.binding`` names the constraints that block a move to an adjacent
domain value which would lower the objective. If no point exists, both raise
:class:`Infeasible`, whose ``core`` is a minimal unsatisfiable subset of the
constraints. ``parse_problem`` / ``format_problem`` convert the text form.
"""

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
    Problem,
    Var,
    all_of,
    any_of,
    compare,
    divisible,
    eq,
    implies,
    max_of,
    member,
    min_of,
    ne,
    negate,
    power_of_two,
    powers_of_two,
)
from .search import Infeasible, Move, Solution, feasible_points, solve
from .split import Term, split_points, sum_of, term_points
from .text import ConstraintSyntaxError, format_problem, parse_problem

__all__ = [
    "And",
    "BinOp",
    "Compare",
    "Const",
    "Constraint",
    "ConstraintSyntaxError",
    "Divisible",
    "Expr",
    "Implies",
    "Infeasible",
    "Member",
    "MinMax",
    "Move",
    "Neg",
    "Or",
    "PowerOfTwo",
    "Problem",
    "Solution",
    "Term",
    "Var",
    "all_of",
    "any_of",
    "compare",
    "divisible",
    "eq",
    "feasible_points",
    "format_problem",
    "implies",
    "max_of",
    "member",
    "min_of",
    "ne",
    "negate",
    "parse_problem",
    "power_of_two",
    "powers_of_two",
    "solve",
    "split_points",
    "sum_of",
    "term_points",
]
