"""recc.solver: exactness against brute force, text form, errors, speed."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recc.solver import (
    And,
    Compare,
    Const,
    ConstraintSyntaxError,
    Infeasible,
    Problem,
    Var,
    all_of,
    any_of,
    compare,
    divisible,
    feasible_points,
    format_problem,
    implies,
    max_of,
    member,
    min_of,
    negate,
    parse_problem,
    power_of_two,
    powers_of_two,
    solve,
)
from recc.solver.compile import compile_bounds
from recc.solver.model import interval_floordiv, interval_mod, interval_mul
from recc.solver.search import _make_prop, _State

# ---------------------------------------------------------------------------
# Brute force: the specification the solver must match


def brute_force(problem: Problem) -> list[tuple[float, tuple[int, ...]]]:
    """All feasible points as (objective, values), best first."""
    names = [v.name for v in problem.variables]
    points = []
    for values in itertools.product(*(v.domain for v in problem.variables)):
        assignment = dict(zip(names, values))
        if problem.is_feasible(assignment):
            points.append((problem.cost(assignment), values))
    return sorted(points)


def brute_binding(problem: Problem, values: tuple[int, ...]) -> list[str]:
    """Labels violated by a one-variable move to an adjacent, improving value."""
    names = [v.name for v in problem.variables]
    here = problem.cost(dict(zip(names, values)))
    blocked = set()
    for i, var in enumerate(problem.variables):
        at = var.domain.index(values[i])
        for j in (at - 1, at + 1):
            if 0 <= j < len(var.domain):
                moved = dict(zip(names, values))
                moved[var.name] = var.domain[j]
                if problem.cost(moved) < here:
                    blocked |= {c.label for c in problem.constraints if not c.holds(moved)}
    return [c.label for c in problem.constraints if c.label in blocked]


def key(solution) -> tuple[float, tuple[int, ...]]:
    return solution.objective, tuple(solution.assignment.values())


# ---------------------------------------------------------------------------
# Random small problems


# Plain functions of ``draw`` (not nested composites): generation is the
# bulk of these tests' time.


def pick(draw, items):
    return items[draw(st.integers(0, len(items) - 1))]


def draw_var(draw, name: str) -> Var:
    kind = pick(draw, ["positive", "mixed", "pow2"])
    if kind == "pow2":
        values = draw(st.sets(st.sampled_from(powers_of_two(1, 64)), min_size=2, max_size=7))
    else:
        lo = 1 if kind == "positive" else -5
        values = draw(st.sets(st.integers(lo, 12), min_size=1, max_size=7))
    return Var(name, tuple(values))


def draw_const(draw) -> Const:
    value = draw(st.integers(-4, 20))
    return Const(value, f"k{value}" if value >= 0 and draw(st.booleans()) else None)


def draw_expr(draw, variables, depth: int = 2):
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return pick(draw, variables) if draw(st.booleans()) else draw_const(draw)
    op = pick(draw, ["+", "-", "*", "*", "//", "%", "min", "max", "neg"])
    left = draw_expr(draw, variables, depth - 1)
    if op == "neg":
        return -left
    if op in ("//", "%"):  # a divisor whose interval excludes zero
        positive = [v for v in variables if v.domain[0] > 0]
        divisor = pick(draw, positive) if positive else Const(draw(st.integers(1, 5)))
        divisor = divisor + draw(st.integers(0, 3)) if draw(st.booleans()) else divisor
        divisor = -divisor if draw(st.integers(0, 3)) == 0 else divisor
        return left // divisor if op == "//" else left % divisor
    right = draw_expr(draw, variables, depth - 1)
    if op in ("min", "max"):
        return (min_of if op == "min" else max_of)(left, right)
    return {"+": left + right, "-": left - right, "*": left * right}[op]


COMPARISONS = ["<=", "<", ">=", ">", "==", "!="]


def draw_condition(draw, variables, depth: int = 2):
    atoms = ["compare", "compare", "divisible", "pow2", "member"]
    kind = pick(draw, atoms + (["not", "implies", "or", "and"] if depth else []))
    if kind == "compare":
        lhs = draw_expr(draw, variables)
        return compare(lhs, pick(draw, COMPARISONS), draw_expr(draw, variables))
    if kind == "divisible":
        positive = [v for v in variables if v.domain[0] > 0] or [Const(draw(st.integers(1, 6)))]
        dividend = pick(draw, variables) if draw(st.booleans()) else draw(st.integers(0, 64))
        return divisible(dividend, pick(draw, positive))
    if kind == "pow2":
        return power_of_two(draw_expr(draw, variables, 1))
    if kind == "member":
        values = draw(st.sets(st.integers(-5, 40), min_size=1, max_size=4))
        return member(draw_expr(draw, variables, 1), values)
    if kind == "not":
        return negate(draw_condition(draw, variables, depth - 1))
    parts = [draw_condition(draw, variables, depth - 1) for _ in range(draw(st.integers(2, 3)))]
    if kind == "implies":
        return implies(parts[0], parts[1])
    return any_of(*parts) if kind == "or" else all_of(*parts)


def _weighted_mod(names):
    return lambda a: float(sum((i + 1) * a[n] for i, n in enumerate(names)) % 5)


@st.composite
def problems(draw, callable_objective: bool = True) -> Problem:
    names = ["a", "b", "c", "d"][: draw(st.integers(2, 4))]
    variables = [draw_var(draw, n) for n in names]
    # Plant a point and mostly keep it feasible, so that most problems are
    # satisfiable but tightly constrained.
    planted = {v.name: pick(draw, v.domain) for v in variables}
    constraints = []
    for _ in range(draw(st.integers(1, 6))):
        c = draw_condition(draw, variables)
        constraints.append(negate(c) if not c.holds(planted) and draw(st.integers(0, 4)) else c)
    kind = pick(draw, ["expr", "expr", "none"] + (["callable"] if callable_objective else []))
    objective = None
    if kind == "expr":
        objective = draw_expr(draw, variables)
        objective = objective if objective.variables() else objective + variables[0]
    elif kind == "callable":
        objective = _weighted_mod(names)
    return Problem(tuple(variables), tuple(constraints), objective)


RANDOM = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RANDOM
@given(problems())
def test_matches_brute_force(problem: Problem) -> None:
    expected = brute_force(problem)
    if not expected:
        with pytest.raises(Infeasible) as raised:
            solve(problem)
        core = raised.value.core
        assert core and set(core) <= set(problem.constraints)
        assert not brute_force(Problem(problem.variables, core))
        for dropped in core:
            rest = tuple(c for c in core if c != dropped)
            assert brute_force(Problem(problem.variables, rest)), "core is not minimal"
        return
    best = solve(problem)
    assert key(best) == expected[0]
    assert problem.is_feasible(best.assignment)
    assert [b.split(":")[0] for b in best.binding] == brute_binding(problem, expected[0][1])
    assert [key(s) for s in feasible_points(problem, 3)] == expected[:3]
    assert [key(s) for s in feasible_points(problem)] == expected


@RANDOM
@given(problems(callable_objective=False))
def test_text_round_trip(problem: Problem) -> None:
    text = format_problem(problem)
    assert parse_problem(text) == problem, text


# ---------------------------------------------------------------------------
# White box: interval arithmetic and single propagators


@st.composite
def with_box(draw, make):
    """Three variables, ``make(draw, variables)``, and a sub-box of their
    domains that mostly leaves two values or more."""
    variables = [draw_var(draw, n) for n in ["a", "b", "c"]]
    box = [
        tuple(sorted(draw(st.sets(st.sampled_from(v.domain), min_size=min(2, len(v.domain))))))
        for v in variables
    ]
    return variables, make(draw, variables), box


def draw_compound(draw, variables):
    """A condition; half are 'or', 'and' or '->' of two parts, which are often
    comparisons over all three variables."""
    if draw(st.booleans()):
        return draw_condition(draw, variables)

    def part():
        if draw(st.booleans()):
            return draw_condition(draw, variables, 1)
        x, y, z = draw(st.permutations(variables))
        xy = x * y if draw(st.booleans()) else x + y
        return compare(xy, pick(draw, COMPARISONS), z + draw(st.integers(-3, 3)))

    return pick(draw, [any_of, all_of, implies])(part(), part())


def test_interval_arithmetic_exhaustive() -> None:
    """Sound on all small intervals; exact for '*' and '//'."""
    spans = [(lo, hi) for lo in range(-6, 7) for hi in range(lo, 7)]
    divisors = [(lo, hi) for lo, hi in spans if not lo <= 0 <= hi and hi - lo < 4]
    ops = [
        (interval_mul, lambda a, b: a * b, spans, True),
        (interval_floordiv, lambda a, b: a // b, divisors, True),
        (interval_mod, lambda a, b: a % b, divisors, False),
    ]
    for interval, apply, rights, exact in ops:
        for (al, ah), (bl, bh) in itertools.product(spans, rights):
            values = [apply(a, b) for a in range(al, ah + 1) for b in range(bl, bh + 1)]
            lo, hi = interval(al, ah, bl, bh)
            assert lo <= min(values) and max(values) <= hi
            assert not exact or (lo, hi) == (min(values), max(values))


@RANDOM
@given(with_box(draw_expr))
def test_bounds_are_sound(case) -> None:
    variables, expr, box = case
    index = {v.name: i for i, v in enumerate(variables)}
    lo, hi = compile_bounds(expr, index)([d[0] for d in box], [d[-1] for d in box])
    assert (lo, hi) == expr.bounds({v.name: d for v, d in zip(variables, box)})
    for values in itertools.product(*box):
        assert lo <= expr.evaluate(dict(zip(index, values))) <= hi


@RANDOM
@given(with_box(draw_compound))
def test_propagation_is_sound(case) -> None:
    """A propagator never removes a solution, decides only what holds, and is
    exact with one free variable (two, except for comparisons and 'and')."""
    variables, constraint, box = case
    index = {v.name: i for i, v in enumerate(variables)}
    prop = _make_prop(constraint, index)
    solutions = [
        values
        for values in itertools.product(*box)
        if constraint.holds(dict(zip(index, values)))
    ]
    status = prop.status(_State(list(box)))
    if status is True:
        assert len(solutions) == len(list(itertools.product(*box)))
    if status is False:
        assert not solutions
    state = _State(list(box))
    if not prop.prune(state):
        assert not solutions
        return
    for values in solutions:
        assert all(x in d for x, d in zip(values, state.doms))
    free = [index[v.name] for v in constraint.variables() if len(box[index[v.name]]) > 1]
    if len(free) == 1 or (len(free) == 2 and not isinstance(constraint, (Compare, And))):
        for i in free:
            assert set(state.doms[i]) == {values[i] for values in solutions}


# ---------------------------------------------------------------------------
# The example from the brief

TILES = """
# chunked forward tiles
var C in {16, 32, 64, 128}
var BK in pow2(16, 256)
var BV in pow2(16, 256)
var num_warps in {2, 4, 8}
var num_stages in 1..4
const K = 128
const V = 128
const smem = 232448
constraint k_tiles: K % BK == 0
constraint v_tiles: V % BV == 0
constraint smem_budget: (C*BK + C*BV + BK*BV) * 2 * num_stages <= smem
constraint big_tiles_need_warps: BK*BV >= 16384 -> num_warps >= 4
constraint either: C >= 64 or num_stages >= 2
minimize: K/BK * V/BV + num_warps
"""


def tiles_by_api() -> Problem:
    C = Var.one_of("C", [16, 32, 64, 128])
    BK = Var.powers_of_two("BK", 16, 256)
    BV = Var.powers_of_two("BV", 16, 256)
    warps = Var.one_of("num_warps", [2, 4, 8])
    stages = Var.range("num_stages", 1, 4)
    K, V, smem = Const(128, "K"), Const(128, "V"), Const(232448, "smem")
    return Problem(
        (C, BK, BV, warps, stages),
        (
            divisible(K, BK).named("k_tiles"),
            divisible(V, BV).named("v_tiles"),
            ((C * BK + C * BV + BK * BV) * 2 * stages <= smem).named("smem_budget"),
            implies(BK * BV >= 16384, warps >= 4).named("big_tiles_need_warps"),
            any_of(C >= 64, stages >= 2).named("either"),
        ),
        K // BK * V // BV + warps,
    )


def test_text_equals_api() -> None:
    problem = parse_problem(TILES)
    assert problem == tiles_by_api()
    assert solve(problem) == solve(tiles_by_api())
    assert parse_problem(format_problem(problem)) == problem


def test_tiles_solution_and_explanation() -> None:
    best = solve(parse_problem(TILES))
    assert best.assignment == {"C": 16, "BK": 64, "BV": 128, "num_warps": 2, "num_stages": 2}
    assert best.objective == 4
    assert best.binding == [
        "v_tiles: V % BV == 0",
        "big_tiles_need_warps: BK * BV >= 16384 -> num_warps >= 4",
    ]
    assert best.explain().splitlines()[2:5] == [
        "  v_tiles: V % BV == 0",
        "    blocks BV 128 -> 256 (objective 3)",
        "  big_tiles_need_warps: BK * BV >= 16384 -> num_warps >= 4",
    ]


def test_callable_objective_and_consts() -> None:
    text = "var BK in pow2(16, 256)\nconstraint fits: BK * 4 <= smem"
    problem = parse_problem(text, consts={"smem": 512})
    cost = Problem(problem.variables, problem.constraints, lambda a: abs(a["BK"] - 100))
    assert solve(cost).assignment == {"BK": 128}
    assert [s.assignment["BK"] for s in feasible_points(cost, 2)] == [128, 64]


def test_infeasible_core_message() -> None:
    text = """
    var BK in pow2(16, 256)
    var BV in pow2(16, 256)
    constraint min_dot: BK >= 16
    constraint wide: BV >= 64
    constraint smem_budget: BK*BV*4 <= 2048
    """
    with pytest.raises(Infeasible) as raised:
        solve(parse_problem(text))
    assert str(raised.value) == (
        "no assignment satisfies: wide (BV >= 64), smem_budget (BK * BV * 4 <= 2048)"
    )
    assert raised.value.labels == ["wide", "smem_budget"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("var x in {}", "1:11: unexpected '}', expected an expression"),
        ("var x in 1..3\nconstraint a: x <", "2:18: unexpected end of text"),
        ("var x in 1..3\nconstraint big: y > 2", "2:17: unknown name 'y'"),
        (
            "var x in 1..3\nconstraint a: x + (x < 2) <= 1",
            "2:20: expected a number, found the condition 'x < 2'",
        ),
        ("var x in 1..3\nconstraint a: x $ 2", "2:17: unexpected character '$'"),
        ("var x in 0..3\nminimize: 6 // x", "2:11: divisor x may be zero in 6 // x"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ConstraintSyntaxError) as raised:
        parse_problem(text)
    assert str(raised.value) == message
    assert (raised.value.line, raised.value.col) == tuple(map(int, message.split(":")[:2]))


# Six variables of eight values each (262144 points), ten constraints.
SIX_TILES = """
var BT in pow2(16, 2048)
var BK in pow2(16, 2048)
var BV in pow2(16, 2048)
var num_warps in pow2(1, 128)
var num_stages in 1..8
var split in pow2(1, 128)
const K = 256
const V = 512
const T = 4096
const smem = 232448
constraint k_tiles: K % BK == 0
constraint v_tiles: V % BV == 0
constraint t_tiles: T % (BT * split) == 0
constraint min_dot: BK >= 16 and BV >= 16 and BT >= 16
constraint smem_budget: (BT*BK + BT*BV + BK*BV) * 2 * num_stages <= smem
constraint regs: BT*BV // (32 * num_warps) <= 128
constraint warps_fit: num_warps * 32 <= BT * BV // 16
constraint big_tiles_need_warps: BK*BV >= 16384 -> num_warps >= 4
constraint pipeline: num_stages >= 2 or BK * BT <= 4096
constraint occupancy: split * (T // BT) >= 16
minimize: (K/BK) * (V/BV) * (T/BT) * 100 // split + num_warps * num_stages
"""


@pytest.mark.parametrize("text", [TILES, SIX_TILES], ids=["brief_example", "six_variables"])
def test_solve_time(text: str) -> None:
    problem = parse_problem(text)
    solve(problem)  # warm up
    runs = []
    for _ in range(20):
        start = time.perf_counter()
        best = solve(problem)
        runs.append(time.perf_counter() - start)
    median = sorted(runs)[len(runs) // 2] * 1e3
    print(f"\n{len(problem.variables)} variables: median solve {median:.2f} ms, {best.nodes} nodes")
    assert median < 50


# ---------------------------------------------------------------------------
# Objectives summed over terms: split_points solves them part by part, exactly

SPLIT = """
var BT in {16, 32, 64}
var a_BV in pow2(16, 128)
var a_w in {1, 2, 4, 8}
var b_BV in pow2(16, 128)
var b_w in {1, 2, 4, 8}
var unused in 1..3
constraint shared: BT >= 32 or a_BV >= 32
constraint a_regs: a_BV * BT // (32 * a_w) <= 64
constraint b_regs: b_BV * BT // (32 * b_w) <= 32
constraint b_fit: b_BV <= 2 * BT
constraint u: unused != 2
"""


def split_terms():
    from recc.solver import Term
    return [Term("a", ("BT", "a_BV", "a_w"), lambda v: abs(v["a_BV"] * v["a_w"] - v["BT"] * 3) + v["a_w"] / 7),
            Term("b", ("BT", "b_BV", "b_w"), lambda v: 100.0 / (v["b_BV"] * v["b_w"]) + v["BT"] / 16),
            Term("s", ("BT", "unused"), lambda v: (v["BT"] - 40) ** 2 / 100)]


def test_split_points_equal_the_whole_enumeration() -> None:
    from recc.solver import split_points, sum_of
    terms = split_terms()
    base = parse_problem(SPLIT)
    problem = Problem(base.variables, base.constraints, sum_of(terms))
    whole = feasible_points(problem)
    split = split_points(problem, terms, None)
    assert [s.assignment for s in split] == [s.assignment for s in whole]
    assert [s.objective for s in split] == [s.objective for s in whole]
    best = split_points(problem, terms, 1)[0]
    assert best.assignment == whole[0].assignment and best.binding == whole[0].binding
    assert [s.assignment for s in split_points(problem, terms, 7)] == [s.assignment for s in whole[:7]]


def test_split_points_refuse_a_constraint_across_two_terms() -> None:
    from recc.solver import split_points, sum_of
    terms = split_terms()
    base = parse_problem(SPLIT + "constraint both: a_BV == b_BV\n")
    with pytest.raises(ValueError, match="constraint both reads the own variables of terms \\['a', 'b'\\]"):
        split_points(Problem(base.variables, base.constraints, sum_of(terms)), terms)


def test_split_points_name_a_core_when_infeasible() -> None:
    from recc.solver import split_points, sum_of
    terms = split_terms()
    base = parse_problem(SPLIT + "constraint short: BT <= 32\nconstraint wide: b_BV >= 128\n")
    with pytest.raises(Infeasible) as raised:
        split_points(Problem(base.variables, base.constraints, sum_of(terms)), terms)
    assert raised.value.labels == ["b_fit", "short", "wide"]


def test_term_points_are_the_feasible_points():
    """term_points: the shared points times each term's own points under them are exactly the
    feasible points (benchmarks/tile_sweep.py enumerates its sweep from them)."""
    from recc.solver.split import split_points as split, term_points
    from recc.tiles import _setup
    problem, terms, *_ = _setup("recurrent", {"T": 1024, "K": 64, "V": 64}, "h200", {})   # CHUNK shared
    shared, points, per = term_points(problem, terms)
    joint = set()
    for sv in points:
        s = dict(zip(shared, sv))
        combos = [dict(s)]
        for t in terms:
            own, needed, buckets = per[t.name]
            if own:
                combos = [{**c, **dict(zip(own, o))} for c in combos for o in buckets.get(tuple(s[n] for n in needed), [])]
        joint |= {tuple(c[v.name] for v in problem.variables) for c in combos}
    every = {tuple(x.assignment[v.name] for v in problem.variables) for x in split(problem, terms, None)}
    assert joint == every and len(every) > 100
