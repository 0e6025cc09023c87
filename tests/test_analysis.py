"""The analysis: affine detection, transition classes, associativity proofs, stability facts, strategies."""
import math
import time
from pathlib import Path

import pytest
import torch

from recc.analysis import TRANSITIONS, analyse, facts_json, facts_text, prove
from recc.analysis.monoid import _empty
from recc.check import check, load
from recc.reference import combine

SPECS = {p.stem: p for p in sorted(Path(__file__).resolve().parent.parent.glob("specs/*.rec"))}

CHUNKED = ["chunked", "recurrent"]
# spec -> the facts `recc check --json` must report
EXPECTED = {
    "first_order": dict(affine={"x": True}, transition={"x": "diagonal"}, householder_count={},
                        input_term={"x": "elementwise"}, associative="proved", strategies=["scan", "recurrent"]),
    "simple_gla": dict(affine={"S": True}, transition={"S": "scalar"}, householder_count={},
                       input_term={"S": "rank1"}, associative="proved", strategies=CHUNKED),
    "retnet": dict(affine={"S": True}, transition={"S": "scalar"}, householder_count={},
                   input_term={"S": "rank1"}, associative="proved", strategies=CHUNKED),
    "mamba2": dict(affine={"h": True}, transition={"h": "scalar"}, householder_count={},
                   input_term={"h": "rank1"}, associative="proved", strategies=CHUNKED),
    "gla": dict(affine={"S": True}, transition={"S": "diagonal"}, householder_count={},
                input_term={"S": "rank1"}, associative="proved", strategies=CHUNKED),
    "mlstm": dict(affine={"C": True, "n": True}, transition={"C": "scalar", "n": "scalar"}, householder_count={},
                  input_term={"C": "rank1", "n": "elementwise"}, associative="proved", strategies=CHUNKED),
    "delta_net": dict(affine={"S": True}, transition={"S": "householder_product"}, householder_count={"S": 1},
                      input_term={"S": "rank1"}, associative="proved", strategies=CHUNKED),
    "gated_delta_net": dict(affine={"S": True}, transition={"S": "householder_product"}, householder_count={"S": 1},
                            input_term={"S": "rank1"}, associative="proved", strategies=CHUNKED),
    "delta_product": dict(affine={"S": True}, transition={"S": "householder_product"}, householder_count={"S": 2},
                          input_term={"S": "rank2"}, associative="proved", strategies=CHUNKED),
    "lstm": dict(affine={"h": False, "c": False}, transition={"h": "nonlinear", "c": "nonlinear"},
                 householder_count={}, associative="unknown", strategies=["recurrent"]),
    "gru": dict(affine={"h": False}, transition={"h": "nonlinear"}, householder_count={}, associative="unknown",
                strategies=["recurrent"]),
    "slstm": dict(affine={"c": False, "n": False, "h": False, "m": False},
                  transition={"c": "nonlinear", "n": "nonlinear", "h": "nonlinear", "m": "nonlinear"},
                  householder_count={}, associative="unknown", strategies=["recurrent"]),
    "softmax_scan": dict(affine={"m": False, "s": False}, transition={"m": "nonlinear", "s": "nonlinear"},
                         householder_count={}, associative="proved", strategies=["scan", "recurrent"]),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_spec_is_classified(name):
    assert name in EXPECTED, f"specs/{name}.rec has no row in the table of expected facts"
    facts = facts_json(load(SPECS[name]))
    for key, want in EXPECTED[name].items():
        assert facts[key] == want, f"{name}: {key}"
    assert set(facts["transition"].values()) <= set(TRANSITIONS)
    assert facts["strategies"][-1] == "recurrent"
    assert "counterexample" not in facts


@pytest.mark.parametrize("name", sorted(SPECS))
def test_analysis_of_a_spec_takes_under_two_seconds(name):
    from recc.analysis import _analyse
    from recc.analysis.monoid import _prove
    rec = load(SPECS[name])
    _analyse.cache_clear()
    _prove.cache_clear()
    start = time.perf_counter()
    analyse(rec)
    assert time.perf_counter() - start < 2.0


# ---- affine detection: the offending term and its position ----------------------------------------

def test_lstm_names_the_term_that_makes_it_nonlinear():
    rec = check(SPECS["lstm"].read_text(), "lstm.rec")
    f = analyse(rec)
    assert f.state("h").nonaffine_reason == "h appears inside sigmoid at lstm.rec:11:7, through let z"
    assert f.state("c").nonaffine_reason == "h appears inside sigmoid at lstm.rec:10:7, through let z"
    assert (f.state("c").nonaffine_pos.line, f.state("c").nonaffine_pos.col) == (10, 7)
    assert "state h is not affine" in f.associativity


def _one_state(update, decls="input  a[D], b[D]", state="state  h[D]", dims="D"):
    return check(f"""recurrence t
  dims {dims}
  {decls}
  {state}
  {update}
  output y = sum(h)
""", "t.rec")


@pytest.mark.parametrize("update, reason", [
    ("h = h * h + a", "h appears in a product of two state-dependent terms at t.rec:5:7"),
    ("h = a / h", "h appears in a denominator at t.rec:5:7"),
    ("h = tanh(h) + b", "h appears inside tanh at t.rec:5:7"),
    ("h = h ** 2", "h appears in a power at t.rec:5:7"),
    ("h = max(h, a)", "h appears inside max at t.rec:5:7"),
])
def test_nonaffine_update_is_reported_with_its_position(update, reason):
    s = analyse(_one_state(update)).state("h")
    assert not s.affine and s.transition == "nonlinear" and s.nonaffine_reason == reason


# ---- transition classes -------------------------------------------------------------------------------

MATRIX = dict(decls="input  k[K], v[K], g[K], c\n  param  A[K, K]", state="state  h[K, K]", dims="K")


@pytest.mark.parametrize("update, transition, count", [
    ("h = h + outer(k, v)", "identity", None),
    ("h = exp(c) * h + outer(k, v)", "scalar", None),
    ("h = -h / c", "scalar", None),
    ("h = diag(exp(g)) @ h", "diagonal", None),
    ("h = c * h^T", "dense", None),
    ("h = A @ h + outer(k, v)", "dense", None),
    ("h = h @ A", "dense", None),
    ("h = (diag(g) - outer(k, v)) @ h", "diagonal_low_rank", None),
    ("h = diag(g) @ h + outer(k, k) @ h", "diagonal_low_rank", None),
    ("h = householder(k, c) @ householder(v, c) @ householder(g, c) @ h", "householder_product", 3),
    ("h = diag(exp(g)) @ householder(k, c) @ h + outer(k, v)", "householder_product", 1),
    ("h = householder(k, c)^T @ h * exp(c)", "householder_product", 1),
])
def test_transition_class(update, transition, count):
    s = analyse(_one_state(update, **MATRIX)).state("h")
    assert s.affine and s.transition == transition and s.householder_count == count


def test_a_diagonal_gate_on_a_householder_product_is_recorded():
    s = analyse(_one_state("h = diag(exp(g)) @ householder(k, c) @ h", **MATRIX)).state("h")
    assert s.gate == "diagonal"


@pytest.mark.parametrize("update, term", [
    ("h = h", "none"),
    ("h = h + outer(k, v) * c", "rank1"),
    ("h = h + outer(k, v) + A @ outer(g, v)", "rank2"),
    ("h = h + A", "dense"),
    ("h = h + outer(k, v) * A", "dense"),
])
def test_input_term(update, term):
    assert analyse(_one_state(update, **MATRIX)).state("h").input_term == term


def test_coupled_affine_states_show_their_block():
    rec = check("""recurrence two
  dims D
  input a[D], b[D], u[D]
  state x[D], y[D]
  x = a * x + b * y + u
  y = x
  output o = x
""")
    f = analyse(rec)
    assert f.state("x").affine and f.state("y").affine
    assert f.state("x").coupled == ("y",) and f.state("y").coupled == ("x",)
    assert ("x", "y") in f.blocks and facts_json(rec)["blocks"] == [["x", "y"]]
    assert f.strategies == ("scan", "recurrent")


def test_a_nonlinear_elementwise_cell_admits_newton():
    f = analyse(_one_state("h = tanh(a * h + b)"))
    assert f.diagonal_jacobian and f.strategies == ("newton", "recurrent")


# ---- associativity of user combine operators ---------------------------------------------------------

def _monoid(elements, body, identity=""):
    src = f"""recurrence t
  dims D
  input x[D]
  monoid f(a, b):
    elements {', '.join(elements)}
    {('identity ' + identity) if identity else ''}
""" + "".join(f"    {line}\n" for line in body) + """  state h[D]
  h = h + x
  output y[D] = h
"""
    return check(src).monoids[0]


FIRST_ORDER = (["a", "x"], ["a = a.a * b.a", "x = b.a * a.x + b.x"], "a = 1, x = 0")
ATTENTION = (["m", "s", "o"], ["m = max(a.m, b.m)", "s = a.s * exp(a.m - m) + b.s * exp(b.m - m)",
                               "o = a.o * exp(a.m - m) + b.o * exp(b.m - m)"], "m = -inf, s = 0, o = 0")
MAX_PLUS = (["a", "x"], ["a = a.a + b.a", "x = max(a.x + b.a, b.x)"], "a = 0, x = -inf")
LOG_SUM_EXP = (["x"], ["x = log(exp(a.x) + exp(b.x))"], "x = -inf")
LSE_PAIR = (["m", "s"], ["m = max(a.m, b.m)", "s = a.s * exp(a.m - m) + b.s * exp(b.m - m)"], "m = -inf, s = 0")
DIFFERENCE = (["x"], ["x = a.x - b.x"], "")
MEAN = (["x"], ["x = (a.x + b.x) / 2"], "")
GATED_AVERAGE = (["g", "x"], ["g = a.g * b.g", "x = b.g * a.x + (1 - b.g) * b.x"], "")


@pytest.mark.parametrize("monoid", [FIRST_ORDER, ATTENTION, MAX_PLUS, LOG_SUM_EXP, LSE_PAIR],
                         ids=["first_order_pair", "attention_triple", "max_plus", "log_sum_exp", "lse_pair"])
def test_associative_combine_is_proved_with_its_identity(monoid):
    a = prove(_monoid(*monoid))
    assert a.status == "proved" and "sympy" in a.how and a.counterexample is None
    assert a.identity == "proved"


@pytest.mark.parametrize("monoid", [DIFFERENCE, MEAN, GATED_AVERAGE], ids=["difference", "mean", "gated_average"])
def test_nonassociative_combine_is_refuted_by_a_counterexample(monoid):
    m = _monoid(*monoid)
    a = prove(m)
    assert a.status == "refuted" and a.counterexample is not None
    cx = a.counterexample
    assert str(cx).startswith("f(f(a, b), c) = ") and " but f(a, f(b, c)) = " in str(cx)
    # the counterexample really is one
    ops = {name: [torch.tensor([[v]], dtype=torch.float64) for v in vals.values()] for name, vals in cx.operands}
    f = lambda x, y: combine(m, x, y)
    lhs, rhs = f(f(ops["a"], ops["b"]), ops["c"]), f(ops["a"], f(ops["b"], ops["c"]))
    assert any(not math.isclose(float(l), float(r), rel_tol=1e-7) for l, r in zip(lhs, rhs))


def test_max_min_identities_are_proved_case_by_case():
    a = prove(_monoid(["x"], ["x = max(a.x, b.x) + min(a.x, b.x)"]))
    assert a.status == "proved" and "case by case" in a.how


def test_an_unprovable_combine_is_unknown_and_not_associative():
    # associative (it is a + b), but neither the prover nor the random search can tell
    m = _monoid(["x"], ["x = a.x + b.x + tanh(a.x * b.x) - (exp(2 * a.x * b.x) - 1) / (exp(2 * a.x * b.x) + 1)"])
    a = prove(m)
    assert a.status == "unknown" and "treated as not associative" in a.how


def test_a_wrong_identity_is_refuted():
    a = prove(_monoid(["x"], ["x = a.x + b.x"], "x = 1"))
    assert a.status == "proved" and a.identity == "refuted"
    assert str(a.identity_counterexample).startswith("f(e, a) = ")


def test_a_refuted_combine_in_a_spec_reaches_the_json():
    rec = check("""recurrence avg
  dims D
  input x[D]
  monoid mean(a, b):
    elements v
    v = (a.v + b.v) / 2
  monoid pairs(a, b):
    elements p, q
    p = (a.p + b.p) / 2
    q = a.q + b.q
  state h[D], c[D]
  h, c = pairs((h, c), (x, 1))
  output y[D] = h
""")
    facts = facts_json(rec)
    assert facts["associative"] == "refuted"
    assert facts["counterexample"]["law"] == "associativity"
    assert facts["monoids"]["mean"]["associative"] == "refuted"
    assert facts["strategies"] == ["recurrent"]


def test_fourier_motzkin_emptiness():
    import sympy as sp
    x, y = sp.symbols("x y", real=True)
    assert _empty((x - y, y - x))
    assert not _empty((x - y, 1 - x))
    assert _empty((x - y, y - 1, 1 - x))


# ---- stability ----------------------------------------------------------------------------------------

def _kinds(name):
    return [s.kind for s in analyse(load(SPECS[name])).stability]


def test_beta_up_to_two_allows_negative_eigenvalues():
    assert "negative_eigenvalues" in _kinds("gated_delta_net")
    assert "negative_eigenvalues" in _kinds("delta_product")
    assert "negative_eigenvalues" not in _kinds("delta_net")      # beta in (0, 1)


def test_unstabilised_exp_gate_needs_a_max_state():
    facts = [s for s in analyse(load(SPECS["mlstm"])).stability if s.kind == "exp_overflow"]
    assert len(facts) == 1 and facts[0].message.startswith("exp(i) at ")
    assert "exp_overflow" not in _kinds("slstm") and "stabilised_exp" in _kinds("slstm")
    assert "exp_overflow" not in _kinds("softmax_scan")


def test_decays_that_underflow_are_recorded():
    for name in ("gla", "simple_gla", "gated_delta_net", "mamba2", "mlstm", "retnet"):
        assert "decay_underflow" in _kinds(name), name
    assert "decay_underflow" not in _kinds("delta_net")


def test_householder_with_a_free_key_can_grow():
    rec = _one_state("h = householder(k, c) @ h", decls="input k[K], c: range(0, 2)", state="state h[K]", dims="K")
    assert [s.kind for s in analyse(rec).stability] == ["growth"]


# ---- the command line's view --------------------------------------------------------------------------

def test_json_and_text_views():
    rec = load(SPECS["gated_delta_net"])
    facts = facts_json(rec)
    assert {"affine", "transition", "householder_count", "associative", "strategies"} <= set(facts)
    assert facts["stability"][0]["at"].startswith(str(rec.file))
    text = facts_text(rec)
    assert "state S: affine; transition product of generalized Householder transitions (n_h = 1)" in text
    assert "strategies: chunked, recurrent" in text
