"""Problems whose objective is a sum of terms over few variables each, solved term by term, exactly.

    split_points(problem, terms, limit=1) -> list[Solution]
    sum_of(terms) -> objective                      the callable objective of such a problem
    term_points(problem, terms) -> (shared, points, by term)   every feasible point, term by term

A :class:`Term` names the variables it reads and its cost. A variable read by exactly
one term is that term's own; the others are shared. A constraint may read the shared
variables and the own variables of at most one term. For a fixed assignment s of the
shared variables the terms' own variables are then independent, and

    best = min over feasible s of  sum over terms t of  min over t's own values o  cost_t(s, o)

is found with one enumeration per term (its own variables and the shared ones it reads
or is constrained with; a depth-first walk that checks each constraint as soon as its
variables are set) instead of one over the product of all the variables: seven kernels of
three launch parameters each, sharing a chunk size, cost 7 * 48 * 4 points instead of
48^7 * 4. The result is that of `feasible_points(problem, limit)` for `problem.objective =
sum_of(terms)`: the same points in the same order (objective, then values in declaration
order; different points whose sums tie exactly in floating point aside), the same binding
constraints and moves.
"""
from __future__ import annotations

import heapq
import math
import operator
from dataclasses import dataclass
from typing import Callable, Sequence

from .compile import compile_check
from .model import Problem, all_of
from .search import Infeasible, Solution, _Engine


@dataclass(frozen=True)
class Term:
    """One summand of the objective: `cost` takes {name: value} of `variables` (and only those)."""
    name: str
    variables: tuple
    cost: Callable[[dict], float]


def sum_of(terms: Sequence[Term]) -> Callable[[dict], float]:
    """The objective `split_points` minimises: the terms' costs summed in order."""
    terms = tuple(terms)
    return lambda a: sum(t.cost({v: a[v] for v in t.variables}) for t in terms)


def split_points(problem: Problem, terms: Sequence[Term], limit: int | None = 1) -> list[Solution]:
    """The `limit` best feasible points (all if None) of `problem` under `sum_of(terms)`, best
    first. Raises :class:`Infeasible` (with a minimal core) if there are none, ValueError if a
    term reads an undeclared variable or a constraint reads the own variables of two terms."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    names, shared, reads, shared_cons, term_cons, own_needed = _decompose(problem, terms)
    nodes = 0
    parts = []          # per term: (term, own names, needed shared names, {shared values: [(cost, own values)]})
    for t in terms:
        own, needed = own_needed[t.name]
        buckets: dict = {}
        if own:
            variables = [v for v in problem.variables if v.name in own or v.name in needed]
            points, visited = _points(variables, term_cons[t.name], reads)
            nodes += visited
            order = [v.name for v in variables]
            key = _getter([order.index(n) for n in needed])
            own_values = _getter([order.index(n) for n in own])
            read_names, read_values = tuple(t.variables), _getter([order.index(v) for v in t.variables])
            cost = t.cost
            for values in points:
                entry = (cost(dict(zip(read_names, read_values(values)))), own_values(values))
                k = key(values)
                if k in buckets:
                    buckets[k].append(entry)
                else:
                    buckets[k] = [entry]
            for entries in buckets.values():
                entries.sort()
        parts.append((t, own, needed, buckets))

    shared_points, visited = _points([v for v in problem.variables if v.name in shared], shared_cons, reads)
    nodes += visited
    want = math.inf if limit is None else limit
    found = []          # (objective, values in declaration order)
    position = {n: i for i, n in enumerate(names)}
    for svalues in shared_points:
        s = dict(zip(shared, svalues))
        lists = []
        for t, own, needed, buckets in parts:
            if own:
                entries = buckets.get(tuple(s[n] for n in needed))
                if not entries:
                    break
                lists.append((own, entries))
            else:
                lists.append((own, [(t.cost({v: s[v] for v in t.variables}), ())]))
        else:
            for total, picks in _k_best(lists, want):
                values = [0] * len(names)
                for n, x in s.items():
                    values[position[n]] = x
                for (own, entries), k in zip(lists, picks):
                    for n, x in zip(own, entries[k][1]):
                        values[position[n]] = x
                found.append((total, tuple(values)))
            if len(found) > want:
                found.sort()
                del found[int(want):]
    found.sort()
    full = _Engine(problem)
    if not found:
        raise Infeasible(full.core())
    full.nodes = nodes
    return [full.solution(key) for key in found]


def _decompose(problem: Problem, terms: Sequence[Term]) -> tuple:
    """The separable structure `split_points` and `term_points` share: (variable names in
    declaration order, shared names (read by several terms, or by none), {constraint label:
    names it reads}, the constraints over shared variables only, {term: the constraints that
    read its own variables}, {term: (own names, needed shared names)}); `needed` are the shared
    variables a term reads or is constrained with. Raises ValueError if a term reads an
    undeclared variable or a constraint reads the own variables of two terms."""
    names = [v.name for v in problem.variables]
    readers: dict[str, list[str]] = {n: [] for n in names}
    for t in terms:
        for v in t.variables:
            if v not in readers:
                raise ValueError(f"term {t.name} reads {v}, which is not a variable of the problem")
            readers[v].append(t.name)
    own_of = {v: ts[0] for v, ts in readers.items() if len(ts) == 1}
    shared = [n for n in names if n not in own_of]
    # constraints: over shared variables only, or belonging to the one term whose own variables they read
    reads = {c.label: {v.name for v in c.variables()} for c in problem.constraints}
    shared_cons, term_cons = [], {t.name: [] for t in terms}
    for c in problem.constraints:
        owners = {own_of[v] for v in reads[c.label] if v in own_of}
        if len(owners) > 1:
            raise ValueError(f"constraint {c.label} reads the own variables of terms {sorted(owners)}")
        (term_cons[owners.pop()] if owners else shared_cons).append(c)
    own_needed = {}
    for t in terms:
        needed = {v for v in t.variables if v not in own_of}
        needed |= {v for c in term_cons[t.name] for v in reads[c.label] if v not in own_of}
        own_needed[t.name] = ([n for n in names if own_of.get(n) == t.name], [n for n in names if n in needed])
    return names, shared, reads, shared_cons, term_cons, own_needed


def _getter(positions: list) -> Callable:
    """values -> the tuple of values at `positions`."""
    if len(positions) == 1:
        i = positions[0]
        return lambda values: (values[i],)
    return operator.itemgetter(*positions) if positions else (lambda values: ())


def _points(variables: list, constraints: list, reads: dict) -> tuple:
    """(every assignment of `variables` satisfying `constraints`, in lexicographic order; nodes
    visited): a depth-first walk over the domains in declaration order that checks each
    constraint as soon as its last variable is set (`reads`: label -> names it reads)."""
    index = {v.name: i for i, v in enumerate(variables)}
    at = [[] for _ in variables]
    for c in constraints:
        last = max((index[n] for n in reads[c.label]), default=-1)
        if last < 0:
            if not c.holds({}):
                return [], 0
            continue
        at[last].append(c)
    checks = [compile_check(all_of(*cs), index) if cs else None for cs in at]
    values, out, visited = [0] * len(variables), [], 0

    def visit(i: int) -> None:
        nonlocal visited
        if i == len(variables):
            out.append(tuple(values))
            return
        check = checks[i]
        for x in variables[i].domain:
            visited += 1
            values[i] = x
            if check is None or check(values):
                visit(i + 1)

    visit(0)
    return out, visited


def _k_best(lists: list, k: float) -> list:
    """The k smallest sums picking one entry of each sorted list: [(total, indices)], smallest
    first (ties: by indices, i.e. by each list's own order). Totals add in list order."""
    total = lambda picks: sum(entries[i][0] for (_, entries), i in zip(lists, picks))
    start = (0,) * len(lists)
    heap, seen, out = [(total(start), start)], {start}, []
    while heap and len(out) < k:
        value, picks = heapq.heappop(heap)
        out.append((value, picks))
        for j, (_, entries) in enumerate(lists):
            if picks[j] + 1 < len(entries):
                nxt = picks[:j] + (picks[j] + 1,) + picks[j + 1:]
                if nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(heap, (total(nxt), nxt))
    return out


def term_points(problem: Problem, terms: Sequence[Term]) -> tuple:
    """Every feasible point of a separable problem, by term (what an exhaustive sweep of the
    terms one at a time visits): (shared names, shared points, {term name: (own names, needed
    names, {needed values: [own values, ...]})}). `needed` are the shared variables the term
    reads or is constrained with; the full feasible points are exactly the shared points s
    combined with, for each term, any of its own points listed under s's needed values (the
    same decomposition `split_points` uses). A term with no own variables maps to ((), needed, {})."""
    names, shared, reads, shared_cons, term_cons, own_needed = _decompose(problem, terms)
    out = {}
    for t in terms:
        own, needed = own_needed[t.name]
        buckets: dict = {}
        if own:
            variables = [v for v in problem.variables if v.name in own or v.name in needed]
            order = [v.name for v in variables]
            key, own_values = _getter([order.index(n) for n in needed]), _getter([order.index(n) for n in own])
            for values in _points(variables, term_cons[t.name], reads)[0]:
                buckets.setdefault(key(values), []).append(own_values(values))
        out[t.name] = (tuple(own), tuple(needed), buckets)
    shared_points = _points([v for v in problem.variables if v.name in shared], shared_cons, reads)[0]
    return tuple(shared), shared_points, out
