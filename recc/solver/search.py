"""Constraint propagation and depth-first branch and bound.

Propagation (to a fixpoint, per search node), for each constraint:

* all its variables fixed: evaluate it;
* one variable free: keep exactly the values for which it holds (unary
  constraints are applied once to the root domains and then dropped);
* comparisons: bounds consistency by shaving: drop end values of each free
  variable for which the interval bounds of ``lhs - rhs`` (that variable
  fixed, the others as intervals) cannot satisfy the comparison;
* divisibility, power of two, membership, ``or``/``->`` over two free
  variables: keep the values with a supporting value of the other variable
  (pairwise enumeration, used while the domains' product is small);
* ``and`` propagates each part; ``or`` (``a -> b`` is ``not a or b``) drops
  the parts its domains disentail and propagates the last one left.

Search branches on the free variable with the smallest domain (ties: first
declared), trying values in order of the objective's interval lower bound,
then value. Points are ordered by ``(objective, values)``; once ``limit``
points are known, a node is cut if ``(objective lower bound, smallest values)``
of its box does not precede the worst of them (for a callable objective the
bound is -inf, so every feasible point is visited).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from .compile import compile_bounds, compile_check, compile_value
from .model import (
    And,
    BinOp,
    Compare,
    Constraint,
    Expr,
    Implies,
    Or,
    Problem,
    negate,
)

_PAIR_LIMIT = 256  # largest domain product enumerated for pairwise support

# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Move:
    """Changing ``var`` from ``old`` to the neighbouring domain value ``new``
    would reach ``objective`` (better than the optimum) but violate ``violated``."""

    var: str
    old: int
    new: int
    objective: int | float
    violated: tuple[str, ...]


@dataclass(frozen=True)
class Solution:
    """A feasible point.

    ``binding`` lists, as ``"label: text"`` in declaration order, the
    constraints violated by some *improving move*: a change of one variable to
    an adjacent value of its declared domain that strictly lowers the
    objective. They are what keeps the objective from going lower; ``moves``
    records each such move. Tightness alone does not count (``K % BK == 0`` is
    always tight). With no objective nothing improves and ``binding`` is empty.
    """

    assignment: dict[str, int]
    objective: int | float
    binding: list[str]
    nodes: int
    moves: tuple[Move, ...] = ()

    def explain(self) -> str:
        point = ", ".join(f"{k}={v}" for k, v in self.assignment.items())
        lines = [f"objective {self.objective} at {point} ({self.nodes} search nodes)"]
        if not self.binding:
            lines.append("no binding constraints")
            return "\n".join(lines)
        lines.append("binding constraints:")
        for entry in self.binding:
            label = entry.split(":", 1)[0]
            lines.append(f"  {entry}")
            for m in self.moves:
                if label in m.violated:
                    lines.append(f"    blocks {m.var} {m.old} -> {m.new} (objective {m.objective})")
        return "\n".join(lines)


class Infeasible(Exception):
    """No assignment satisfies the constraints; ``core`` is a minimal subset of
    them that is already unsatisfiable (removing any one makes it satisfiable)."""

    def __init__(self, core: Sequence[Constraint]):
        self.core = tuple(core)
        super().__init__("no assignment satisfies: " + ", ".join(c.describe() for c in self.core))

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.core]


# ---------------------------------------------------------------------------
# Propagators


class _State:
    """Domains of one search node: sorted value tuples plus their end points."""

    __slots__ = ("doms", "lo", "hi", "changed")

    def __init__(self, doms: list[tuple[int, ...]]):
        self.doms = doms
        self.lo = [d[0] for d in doms]
        self.hi = [d[-1] for d in doms]
        self.changed: list[int] = []

    def copy(self) -> _State:
        s = _State.__new__(_State)
        s.doms, s.lo, s.hi, s.changed = self.doms[:], self.lo[:], self.hi[:], []
        return s

    def restrict(self, i: int, values: Sequence[int]) -> bool:
        """Shrink variable ``i`` to ``values`` (a sorted subset); False if empty."""
        if not values:
            return False
        if len(values) < len(self.doms[i]):
            self.doms[i] = tuple(values)
            self.lo[i], self.hi[i] = values[0], values[-1]
            self.changed.append(i)
        return True


class _Prop:
    """Propagator of one constraint; this base serves divisibility, power of
    two and membership."""

    pairwise = True  # enumerate supports when two variables are free

    def __init__(self, c: Constraint, index: dict[str, int]):
        self.constraint = c
        self.vars = tuple(index[v.name] for v in c.variables())
        self.check = compile_check(c, index)

    def free(self, s: _State) -> list[int]:
        return [i for i in self.vars if s.lo[i] != s.hi[i]]

    def support(self, s: _State, i: int) -> list[int]:
        """Values of the only free variable ``i`` for which the constraint holds."""
        v = s.lo[:]
        kept = []
        for x in s.doms[i]:
            v[i] = x
            if self.check(v):
                kept.append(x)
        return kept

    def status(self, s: _State) -> bool | None:
        """True/False: the constraint holds everywhere/nowhere in ``s``;
        None: unknown (exact when at most one variable is free)."""
        free = self.free(s)
        if not free:
            return self.check(s.lo)
        if len(free) == 1:
            n = len(self.support(s, free[0]))
            return True if n == len(s.doms[free[0]]) else False if n == 0 else None
        return self.status_wide(s)

    def prune(self, s: _State) -> bool:
        """Remove unsupported values; False on a wipe-out or violation."""
        free = self.free(s)
        if not free:
            return self.check(s.lo)
        if len(free) == 1:
            return s.restrict(free[0], self.support(s, free[0]))
        if (
            len(free) == 2
            and self.pairwise
            and len(s.doms[free[0]]) * len(s.doms[free[1]]) <= _PAIR_LIMIT
        ):
            return self.prune_pairs(s, *free)
        return self.prune_wide(s, free)

    def prune_pairs(self, s: _State, i: int, j: int) -> bool:
        v = s.lo[:]
        keep_i: set[int] = set()
        keep_j: set[int] = set()
        for x in s.doms[i]:
            v[i] = x
            for y in s.doms[j]:
                v[j] = y
                if self.check(v):
                    keep_i.add(x)
                    keep_j.add(y)
        return s.restrict(i, [x for x in s.doms[i] if x in keep_i]) and s.restrict(
            j, [y for y in s.doms[j] if y in keep_j]
        )

    def status_wide(self, s: _State) -> bool | None:
        return None

    def prune_wide(self, s: _State, free: list[int]) -> bool:
        return self.status_wide(s) is not False


# possible(lo, hi), entailed(lo, hi) for lhs - rhs in [lo, hi]
_COMPARE_TESTS: dict[str, tuple[Callable[[int, int], bool], Callable[[int, int], bool]]] = {
    "<=": (lambda l, h: l <= 0, lambda l, h: h <= 0),
    "<": (lambda l, h: l < 0, lambda l, h: h < 0),
    ">=": (lambda l, h: h >= 0, lambda l, h: l >= 0),
    ">": (lambda l, h: h > 0, lambda l, h: l > 0),
    "==": (lambda l, h: l <= 0 <= h, lambda l, h: l == h == 0),
    "!=": (lambda l, h: not l == h == 0, lambda l, h: h < 0 or l > 0),
}


class _CompareProp(_Prop):
    """Bounds consistency for ``lhs op rhs`` by shaving domain end values."""

    pairwise = False

    def __init__(self, c: Compare, index: dict[str, int]):
        super().__init__(c, index)
        self.bounds = compile_bounds(BinOp("-", c.lhs, c.rhs), index)
        self.possible, self.entailed = _COMPARE_TESTS[c.op]

    def status_wide(self, s: _State) -> bool | None:
        l, h = self.bounds(s.lo, s.hi)
        return True if self.entailed(l, h) else None if self.possible(l, h) else False

    def prune_wide(self, s: _State, free: list[int]) -> bool:
        status = self.status_wide(s)
        if status is not None:
            return status
        lo, hi, bounds, possible = s.lo, s.hi, self.bounds, self.possible
        for i in free:
            dom = s.doms[i]
            first, last = 0, len(dom) - 1
            while first <= last:
                lo[i] = hi[i] = dom[first]
                if possible(*bounds(lo, hi)):
                    break
                first += 1
            while last > first:
                lo[i] = hi[i] = dom[last]
                if possible(*bounds(lo, hi)):
                    break
                last -= 1
            lo[i], hi[i] = dom[0], dom[-1]
            if not s.restrict(i, dom[first : last + 1]):
                return False
        return True


class _AndProp(_Prop):
    pairwise = False

    def __init__(self, c: And, index: dict[str, int]):
        super().__init__(c, index)
        self.parts = [_make_prop(p, index) for p in c.items]

    def status_wide(self, s: _State) -> bool | None:
        statuses = [p.status(s) for p in self.parts]
        return False if False in statuses else None if None in statuses else True

    def prune_wide(self, s: _State, free: list[int]) -> bool:
        return all(p.prune(s) for p in self.parts)


class _OrProp(_Prop):
    def __init__(self, c: Or | Implies, index: dict[str, int]):
        super().__init__(c, index)
        items = c.items if isinstance(c, Or) else (negate(c.premise), c.conclusion)
        self.parts = [_make_prop(p, index) for p in items]

    def status_wide(self, s: _State) -> bool | None:
        statuses = [p.status(s) for p in self.parts]
        return True if True in statuses else None if None in statuses else False

    def prune_wide(self, s: _State, free: list[int]) -> bool:
        undecided = []
        for p in self.parts:
            status = p.status(s)
            if status is True:
                return True
            if status is None:
                undecided.append(p)
        if len(undecided) == 1:
            return undecided[0].prune(s)
        return bool(undecided)


def _make_prop(c: Constraint, index: dict[str, int]) -> _Prop:
    if isinstance(c, Compare):
        return _CompareProp(c, index)
    if isinstance(c, And):
        return _AndProp(c, index)
    if isinstance(c, (Or, Implies)):
        return _OrProp(c, index)
    return _Prop(c, index)


# ---------------------------------------------------------------------------
# Search

_Key = tuple  # (objective, values): the total order of points


class _Engine:
    """A problem lowered to propagators; searches any subset of its constraints."""

    def __init__(self, problem: Problem):
        self.problem = problem
        index = {v.name: i for i, v in enumerate(problem.variables)}
        self.props = [_make_prop(c, index) for c in problem.constraints]
        objective = problem.objective
        self.ordered = isinstance(objective, Expr)  # values tried by objective bound
        self.lower: Callable[[list[int], list[int]], tuple[int, int]] | None = None
        if isinstance(objective, Expr):
            self.value: Callable[[Sequence[int]], float] = compile_value(objective, index)
            self.lower = compile_bounds(objective, index)
        elif objective is None:
            self.value = lambda v: 0
            self.lower = lambda lo, hi: (0, 0)
        else:
            names = list(index)
            self.value = lambda v: objective(dict(zip(names, v)))
        self.watch: list[list[int]] = []
        self.nodes = 0

    def search(self, active: Sequence[int], limit: float, first: bool = False) -> list[_Key]:
        """The ``limit`` best points satisfying the ``active`` constraints, best
        first; with ``first``, stop at the first point found."""
        root = _State([v.domain for v in self.problem.variables])
        wide = []
        for k in active:
            prop = self.props[k]
            if len(prop.vars) > 1:
                wide.append(k)
            elif not prop.prune(root):  # exact, once and for all
                return []
        root.changed.clear()
        self.watch = [[] for _ in root.doms]
        for k in wide:
            for i in self.props[k].vars:
                self.watch[i].append(k)
        best: list[_Key] = []
        if self._propagate(root, wide):
            self._visit(root, best, limit, first)
        return best

    def _propagate(self, s: _State, queue: list[int]) -> bool:
        pending, queued = deque(queue), set(queue)
        while pending:
            k = pending.popleft()
            queued.discard(k)
            if not self.props[k].prune(s):
                return False
            for i in s.changed:
                for q in self.watch[i]:
                    if q not in queued:
                        queued.add(q)
                        pending.append(q)
            s.changed.clear()
        return True

    def _visit(self, s: _State, best: list[_Key], limit: float, first: bool) -> bool:
        """Explore the propagated node ``s``; True asks to stop."""
        self.nodes += 1
        if len(best) >= limit:
            lower = self.lower(s.lo, s.hi)[0] if self.lower else -math.inf
            if (lower, tuple(s.lo)) >= best[-1]:
                return False
        free = [i for i, d in enumerate(s.doms) if len(d) > 1]
        if not free:
            bisect.insort(best, (self.value(s.lo), tuple(s.lo)))
            if len(best) > limit:
                best.pop()
            return first
        i = min(free, key=lambda j: (len(s.doms[j]), j))
        for bound, x in self._branches(s, i):
            # (bound, values so far) only grows along the branches: cut the rest
            if len(best) >= limit and (bound, (*s.lo[:i], x, *s.lo[i + 1 :])) >= best[-1]:
                break
            child = s.copy()
            child.restrict(i, (x,))
            child.changed.clear()  # its watchers are queued below
            if self._propagate(child, self.watch[i]) and self._visit(child, best, limit, first):
                return True
        return False

    def _branches(self, s: _State, i: int) -> list[tuple[float, int]]:
        """``(objective lower bound, value)`` for each value of variable ``i``, best first."""
        dom = s.doms[i]
        if not self.ordered:
            return [(-math.inf, x) for x in dom]
        lo, hi = s.lo, s.hi
        branches = []
        for x in dom:
            lo[i] = hi[i] = x
            branches.append((self.lower(lo, hi)[0], x))
        lo[i], hi[i] = dom[0], dom[-1]
        branches.sort()
        return branches

    def solution(self, key: _Key) -> Solution:
        objective, values = key
        moves = self._improving_moves(objective, values)
        blocked = {label for m in moves for label in m.violated}
        return Solution(
            assignment={v.name: x for v, x in zip(self.problem.variables, values)},
            objective=objective,
            binding=[f"{c.label}: {c}" for c in self.problem.constraints if c.label in blocked],
            nodes=self.nodes,
            moves=tuple(moves),
        )

    def _improving_moves(self, objective: float, values: tuple[int, ...]) -> list[Move]:
        moves = []
        for i, var in enumerate(self.problem.variables):
            at = var.domain.index(values[i])
            for new in var.domain[max(at - 1, 0) : at + 2]:
                point = list(values)
                point[i] = new
                value = self.value(point)
                if value < objective:
                    violated = tuple(p.constraint.label for p in self.props if not p.check(point))
                    moves.append(Move(var.name, values[i], new, value, violated))
        return moves

    def core(self) -> list[Constraint]:
        """A minimal unsatisfiable subset, by deletion filtering in declaration order."""
        core = list(range(len(self.props)))
        for k in list(core):
            rest = [j for j in core if j != k]
            if not self.search(rest, 1, first=True):
                core = rest
        return [self.props[k].constraint for k in core]


def feasible_points(problem: Problem, limit: int | None = None) -> list[Solution]:
    """The ``limit`` best feasible points (all if None), best first: ordered by
    objective, ties by the lexicographically smallest values in variable
    declaration order. Raises :class:`Infeasible` if there are none."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    engine = _Engine(problem)
    keys = engine.search(range(len(problem.constraints)), math.inf if limit is None else limit)
    if not keys:
        raise Infeasible(engine.core())
    return [engine.solution(key) for key in keys]


def solve(problem: Problem) -> Solution:
    """The best feasible point; raises :class:`Infeasible` if there is none."""
    return feasible_points(problem, 1)[0]
