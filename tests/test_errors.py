"""Malformed specs: every error names its file, line and column, and says what is wrong.

Each case is a small spec with one mistake; the test pins the first line of the
error exactly (`bad.rec:LINE:COL: message`). The specs are written as edits of
three well-formed ones, so each case shows only the line it breaks.
"""
import pytest

from recc.check import check
from recc.cli import main
from recc.errors import SpecError

LINEAR = """\
recurrence r
  dims   K, V
  input  q[K], k[K], v[V]
  input  g: log_gate
  state  S[K, V]
  S = exp(g) * S + outer(k, v)
  output o[V] = S^T @ q
"""

PRODUCT = """\
recurrence p
  dims   K, V, n = 2
  input  q[K], k[n, K], v[n, V]
  input  beta[n]
  state  S[K, V]
  for j in 0..n:
    S = householder(k[j], beta[j]) @ S + beta[j] * outer(k[j], v[j])
  output o[V] = S^T @ q
"""

SCAN = """\
recurrence sm
  dims   D
  input  x[D]
  monoid lse(a, b):
    elements m, s
    identity m = -inf, s = 0
    m = max(a.m, b.m)
    s = a.s * exp(a.m - m) + b.s * exp(b.m - m)
  state  m[D] = -inf, s[D]
  m, s = lse((m, s), (x, 1))
  output y[D] = m + log(s)
"""


def edit(base: str, old: str, new: str) -> str:
    assert base.count(old) == 1, old
    return base.replace(old, new)


def linear(old, new):
    return edit(LINEAR, old, new)


def product(old, new):
    return edit(PRODUCT, old, new)


def scan(old, new):
    return edit(SCAN, old, new)


def first_line(source: str) -> str:
    with pytest.raises(SpecError) as info:
        check(source, "bad.rec")
    return str(info.value).splitlines()[0]


def test_the_three_bases_are_well_formed():
    for base in (LINEAR, PRODUCT, SCAN):
        check(base, "good.rec")


CASES = [
    # ---- names ------------------------------------------------------------------------------
    ("undefined name, did you mean", linear("exp(g)", "exp(gg)"),
     "bad.rec:6:11: 'gg' is not declared; did you mean 'g'?"),
    ("undefined name, nothing close", linear("exp(g)", "exp(zzz)"),
     "bad.rec:6:11: 'zzz' is not declared"),
    ("assignment to an undeclared name", linear("  S = exp", "  W = exp"),
     "bad.rec:6:3: 'W' is not declared; declare it with `state W[...]`"),
    ("loop variable used after its loop", product("S^T @ q", "S^T @ k[j]"),
     "bad.rec:8:25: 'j' is not declared"),
    ("a let inside a loop is local to it",
     product("    S = householder", "    let w = beta[j]\n    S = householder").replace("S^T @ q", "S^T @ q * w"),
     "bad.rec:9:27: 'w' is not declared"),
    # ---- shapes -----------------------------------------------------------------------------
    ("shape mismatch in '+' shows both shapes", linear("outer(k, v)", "outer(k, k)"),
     "bad.rec:6:18: shapes [K, V] and [K, K] do not match for '+'"),
    ("shape mismatch between vectors", linear("S^T @ q", "q + v"),
     "bad.rec:7:19: shapes [K] and [V] do not match for '+'"),
    ("output shape differs from its definition", linear("output o[V]", "output o[K]"),
     "bad.rec:7:17: output 'o' has shape [K] but the right side has shape [V]"),
    ("primitive's shape rule", linear("outer(k, v)", "outer(k, S)"),
     "bad.rec:6:20: outer needs two vectors, got [K] and [K, V]"),
    ("dot of vectors of different dims", linear("S^T @ q", "dot(q, v) * v"),
     "bad.rec:7:17: dot needs two vectors of one shape, got [K] and [V]"),
    ("householder with a vector beta", product("beta[j]) @ S", "k[j]) @ S"),
     "bad.rec:7:9: householder needs a scalar beta, got [K]"),
    ("vector exponent", linear("exp(g)", "exp(g ** q)"),
     "bad.rec:6:16: the exponent of '**' must be a scalar, got [K]"),
    ("'@' of two vectors", linear("S^T @ q", "q @ k"),
     "bad.rec:7:19: '@' of two vectors ([K] @ [K]) is ambiguous; use dot(x, y) for the inner product or "
     "outer(x, y) for the outer product"),
    ("'@' with a scalar", linear("S^T @ q", "g @ S"),
     "bad.rec:7:19: '@' needs vectors or matrices, got a scalar @ [K, V]; use '*' for scalars"),
    ("'@' inner dims differ", linear("S^T @ q", "S @ q"),
     "bad.rec:7:19: cannot multiply [K, V] @ [K]: inner dims V and K differ"),
    ("'@' of stacked matrices with different stacks",
     "recurrence r\n  dims D\n  input x[D]\n  param R[3, D, D], Q[4, D, D]\n  state h[D]\n  h = x\n"
     "  output o = R @ Q\n",
     "bad.rec:7:16: cannot multiply [3, D, D] @ [4, D, D]: stacked dims differ"),
    ("transpose of a vector", linear("S^T @ q", "v^T"),
     "bad.rec:7:17: '^T' needs a matrix, got a vector [V]; '@' takes a vector on either side as it is"),
    ("a const must be a scalar", linear("  state", "  const c = K * 2\n  const d = outer(c, c)\n  state"),
     "bad.rec:6:13: outer needs two vectors, got a scalar and a scalar"),
    ("a const reads no inputs", linear("  state", "  const c = q\n  state"),
     "bad.rec:5:13: a const can use only numbers, dims and earlier consts, not input 'q'"),
    # ---- functions --------------------------------------------------------------------------
    ("wrong arity", linear("exp(g)", "exp(g, g)"),
     "bad.rec:6:7: exp takes 1 argument, got 2"),
    ("no arguments", linear("exp(g)", "exp()"),
     "bad.rec:6:7: exp takes 1 argument, got 0"),
    ("unknown function, did you mean", linear("exp(g)", "expo(g)"),
     "bad.rec:6:7: unknown function 'expo'; did you mean 'exp'?"),
    ("unknown function, nothing close", linear("exp(g)", "frobnicate(g)"),
     "bad.rec:6:7: unknown function 'frobnicate'"),
    # ---- completeness -----------------------------------------------------------------------
    ("a state never updated", linear("state  S[K, V]", "state  S[K, V], Z[K]"),
     "bad.rec:5:19: state 'Z' is never updated; add `Z = ...` to the step"),
    ("an output never defined", linear("output o[V] = S^T @ q", "output o[V]"),
     "bad.rec:7:10: output 'o' is never defined; add `o = ...` to the step"),
    ("an output with neither shape nor definition", linear("output o[V] = S^T @ q", "output o"),
     "bad.rec:7:10: output 'o' needs a shape or a definition, like `output o[V] = ...`"),
    ("an output defined twice", linear("  output o[V] = S^T @ q", "  output o[V]\n  o = S^T @ q\n  o = S^T @ q"),
     "bad.rec:9:3: output 'o' is defined twice"),
    ("no state", "recurrence r\n  dims K\n  input x[K]\n  output y[K] = x\n",
     "bad.rec:1:12: recurrence 'r' declares no state; add one like `state S[K, V]`"),
    ("no output", "recurrence r\n  dims K\n  input x[K]\n  state s[K]\n  s = x\n",
     "bad.rec:1:12: recurrence 'r' declares no output; add one like `output o[V] = S^T @ q`"),
    # ---- dims -------------------------------------------------------------------------------
    ("a dim that cannot be inferred",
     linear("dims   K, V", "dims   K, V, W").replace("S[K, V]", "S[K, V], Z[W]").replace(
         "  output", "  Z = Z\n  output"),
     "bad.rec:2:16: dim 'W' cannot be inferred: no input or param has it in its shape; give it a size "
     "(`W = 64`) or use it in an input"),
    ("unknown dim in a shape", linear("state  S[K, V]", "state  S[K, W]"),
     "bad.rec:5:15: unknown dim 'W' in shape; declared dims: K, V"),
    ("a dim of size 0", linear("dims   K, V", "dims   K, V, n = 0"),
     "bad.rec:2:20: dim 'n' must have a positive size, got 0"),
    ("a shape of size 0", linear("state  S[K, V]", "state  S[K, 0]"),
     "bad.rec:5:15: a shape's sizes must be positive, got 0"),
    # ---- declarations -----------------------------------------------------------------------
    ("duplicate input", linear("input  q[K], k[K]", "input  q[K], q[K]"),
     "bad.rec:3:16: 'q' is already declared as an input at 3:10"),
    ("duplicate dim", linear("dims   K, V", "dims   K, V, K"),
     "bad.rec:2:16: 'K' is already declared as a dim at 2:10"),
    ("an input named like a dim", linear("input  g: log_gate", "input  K"),
     "bad.rec:4:10: 'K' is already declared as a dim at 2:10"),
    ("a let named like a state", linear("  S = exp", "  let S = g\n  S = exp"),
     "bad.rec:6:7: 'S' is already declared as a state at 5:10"),
    ("a let declared twice", linear("  S = exp", "  let a = g\n  let a = g\n  S = exp"),
     "bad.rec:7:7: 'a' is already declared as a let at 6:7"),
    ("reserved: an axis name", linear("input  g: log_gate", "input  T: log_gate"),
     "bad.rec:4:10: 'T' is a reserved name: B, T and H are the implicit batch, time and head axes"),
    ("reserved: a dim named B", linear("dims   K, V", "dims   K, V, B = 2"),
     "bad.rec:2:16: 'B' is a reserved name: B, T and H are the implicit batch, time and head axes"),
    ("reserved: torch", linear("input  g: log_gate", "input  torch"),
     "bad.rec:4:10: 'torch' is a reserved name: the generated module imports it"),
    ("reserved: inf", linear("input  g: log_gate", "input  inf"),
     "bad.rec:4:10: 'inf' is a reserved name: it means infinity"),
    ("reserved: leading underscore", linear("  S = exp", "  let _a = g\n  S = exp"),
     "bad.rec:6:7: '_a' is a reserved name: names starting with '_' belong to the generated code"),
    ("reserved: Python keyword", linear("  S = exp", "  let lambda = g\n  S = exp"),
     "bad.rec:6:7: 'lambda' is a reserved name: it is a Python keyword"),
    ("reserved: a built-in function", linear("input  g: log_gate", "input  exp"),
     "bad.rec:4:10: 'exp' is a built-in function and cannot be declared"),
    ("reserved: the recurrence's name", linear("recurrence r", "recurrence reference"),
     "bad.rec:1:12: 'reference' cannot name a recurrence: the generated op and its module use it"),
    # ---- assignments ------------------------------------------------------------------------
    ("assigning an input", linear("  S = exp", "  q = k\n  S = exp"),
     "bad.rec:6:3: cannot assign to input 'q': only states and outputs are assigned"),
    ("assigning a param", linear("input  g: log_gate", "input  g: log_gate\n  param  w").replace(
        "  S = exp", "  w = g\n  S = exp"),
     "bad.rec:7:3: cannot assign to param 'w': only states and outputs are assigned"),
    ("assigning a dim", linear("  S = exp", "  K = g\n  S = exp"),
     "bad.rec:6:3: cannot assign to dim 'K': only states and outputs are assigned"),
    ("assigning a let", linear("  S = exp", "  let a = g\n  a = g\n  S = exp"),
     "bad.rec:7:3: cannot assign to let 'a': only states and outputs are assigned"),
    ("reading an output", linear("  output o[V] = S^T @ q", "  output o[V] = S^T @ q\n  output p[V] = o"),
     "bad.rec:8:17: 'o' is an output; outputs cannot be read"),
    # ---- annotations ------------------------------------------------------------------------
    ("unknown annotation", linear("log_gate", "loggate"),
     "bad.rec:4:13: unknown annotation 'loggate'; did you mean 'log_gate'? annotations: gate, log_gate, "
     "positive, range, unit"),
    ("annotation with too few numbers", linear("log_gate", "range(0)"),
     "bad.rec:4:13: annotation 'range' takes 2 numbers, got 1"),
    ("annotation that takes no numbers", linear("log_gate", "unit(1)"),
     "bad.rec:4:13: annotation 'unit' takes no numbers, got 1"),
    ("empty range", linear("log_gate", "range(2, 1)"),
     "bad.rec:4:13: range(2, 1) is empty: the low end must be below the high end"),
    ("infinite range", linear("log_gate", "range(-inf, 1)"),
     "bad.rec:4:13: range(-inf, 1) needs finite bounds"),
    # ---- indexing ---------------------------------------------------------------------------
    ("index out of range", product("k[j], beta[j])", "k[2], beta[j])"),
     "bad.rec:7:23: index 2 is out of range for a dim of size 2"),
    ("negative index", product("k[j], beta[j])", "k[-1], beta[j])"),
     "bad.rec:7:23: index -1 is out of range for a dim of size 2"),
    ("fractional index", product("k[j], beta[j])", "k[0.5], beta[j])"),
     "bad.rec:7:23: an index must be an integer, got 0.5"),
    ("infinite index", product("k[j], beta[j])", "k[inf], beta[j])"),
     "bad.rec:7:23: an index must be an integer, got inf"),
    ("index by a value", product("k[j], beta[j])", "k[beta[0]], beta[j])"),
     "bad.rec:7:23: an index must be an integer or a loop variable"),
    ("indexing a free dim", linear("S^T @ q", "S[0]"),
     "bad.rec:7:17: indexing needs a dim of fixed size, but 'K' is set at call time; declare it like `K = 2`"),
    ("indexing a scalar", linear("exp(g)", "exp(g[0])"),
     "bad.rec:6:11: only a stacked value can be indexed, this is a scalar"),
    # ---- loops ------------------------------------------------------------------------------
    ("loop variable used as a value", product("beta[j] * outer", "j * outer"),
     "bad.rec:7:42: loop variable 'j' can only be used as an index, like k[j]"),
    ("loop range beyond the indexed dim", product("0..n", "0..3"),
     "bad.rec:7:23: loop variable 'j' runs over 0..3, out of range for a dim of size 2"),
    ("loop bound of free size", product("0..n", "0..K"),
     "bad.rec:6:15: a loop bound must be an integer or a dim of fixed size, got 'K'"),
    ("empty loop", product("0..n", "2..1"),
     "bad.rec:6:12: the loop 2..1 is empty"),
    ("loop variable shadows a name", product("for j in", "for q in"),
     "bad.rec:6:7: 'q' is already declared as an input at 3:10"),
    ("output defined inside a loop",
     product("  output o[V] = S^T @ q\n", "").replace("  for j", "  output o[V]\n  for j").replace(
         "    S = householder", "    o = S^T @ q\n    S = householder"),
     "bad.rec:8:5: output 'o' cannot be defined inside a for loop"),
    # ---- monoids ----------------------------------------------------------------------------
    ("monoid element never assigned", scan("    s = a.s * exp(a.m - m) + b.s * exp(b.m - m)\n", ""),
     "bad.rec:4:10: monoid 'lse' never assigns its element s; add `s = ...` to its body"),
    ("monoid element assigned twice", scan("    m = max(a.m, b.m)\n", "    m = max(a.m, b.m)\n    m = max(a.m, b.m)\n"),
     "bad.rec:8:5: element 'm' of monoid 'lse' is assigned twice"),
    ("unknown field", scan("max(a.m, b.m)", "max(a.m, b.z)"),
     "bad.rec:7:20: 'z' is not an element of monoid 'lse' (elements: m, s)"),
    ("operand read without a field", scan("max(a.m, b.m)", "max(a, b.m)"),
     "bad.rec:7:13: read an element of 'a' with a field, like a.m"),
    ("assigning a non-element", scan("    m = max", "    z = max"),
     "bad.rec:7:5: 'z' is not an element of monoid 'lse' (elements: m, s)"),
    ("identity misses an element", scan("identity m = -inf, s = 0", "identity m = -inf"),
     "bad.rec:6:5: the identity of monoid 'lse' misses s"),
    ("identity of a non-element", scan("identity m = -inf, s = 0", "identity m = -inf, s = 0, z = 1"),
     "bad.rec:6:31: 'z' is not an element of monoid 'lse' (elements: m, s)"),
    ("identity gives an element twice", scan("identity m = -inf, s = 0", "identity m = -inf, s = 0, m = 1"),
     "bad.rec:6:31: the identity of monoid 'lse' gives 'm' twice"),
    ("two identity lines",
     scan("    identity m = -inf, s = 0\n", "    identity m = -inf, s = 0\n    identity m = 0, s = 0\n"),
     "bad.rec:7:5: monoid 'lse' declares its identity twice"),
    ("a let named like an element", scan("    m = max(a.m, b.m)\n", "    let m = a.m\n    m = max(a.m, b.m)\n"),
     "bad.rec:7:9: 'm' is an element of monoid 'lse'; a let needs another name"),
    ("monoid without elements", scan("    elements m, s\n", ""),
     "bad.rec:5:5: monoid 'lse' must start with `elements ...`"),
    ("monoid operands of one name", scan("lse(a, b)", "lse(a, a)"),
     "bad.rec:4:17: a monoid's two operands need different names"),
    ("monoid repeats an element", scan("elements m, s", "elements m, m"),
     "bad.rec:5:5: monoid 'lse' repeats an element"),
    ("'@' in a monoid", scan("max(a.m, b.m)", "a.m @ b.m"),
     "bad.rec:7:13: '@' cannot be used in a monoid: elements are scalars"),
    ("non-elementwise function in a monoid", scan("max(a.m, b.m)", "sum(a.m)"),
     "bad.rec:7:9: sum is not elementwise and cannot be used in a monoid"),
    ("monoid reads an input", scan("max(a.m, b.m)", "max(a.m, x)"),
     "bad.rec:7:18: a monoid reads only its operands' elements (a.m, b.m, ...), the elements it assigned "
     "before, its lets and consts; not input 'x'"),
    ("field outside a monoid", linear("exp(g)", "exp(g.x)"),
     "bad.rec:6:11: '.x' reads a monoid operand's element and is only allowed inside a monoid"),
    ("monoid called like a function", scan("output y[D] = m + log(s)", "output y[D] = lse(m, s)"),
     "bad.rec:11:17: monoid 'lse' can only be applied in a tuple assignment, like `m, s = lse((...), (...))`"),
    ("monoid read as a value", scan("output y[D] = m + log(s)", "output y[D] = lse"),
     "bad.rec:11:17: 'lse' is a monoid; call it as lse((...), (...))"),
    ("tuple outside a monoid combine", scan("output y[D] = m + log(s)", "output y[D] = (m, s)"),
     "bad.rec:11:17: a tuple is only allowed as an operand of a monoid combine"),
    ("operand tuple of the wrong arity", scan("lse((m, s), (x, 1))", "lse((m, s, s), (x, 1))"),
     "bad.rec:10:14: each operand of monoid 'lse' needs 2 items, got 3"),
    ("wrong number of combined states", scan("  m, s = lse", "  m, s, m = lse"),
     "bad.rec:10:3: monoid 'lse' has 2 elements (m, s) but 3 states are assigned"),
    ("one operand", scan("lse((m, s), (x, 1))", "lse((m, s))"),
     "bad.rec:10:10: monoid 'lse' combines 2 operands, got 1"),
    ("a state combined twice", scan("  m, s = lse", "  m, m = lse"),
     "bad.rec:10:6: 'm' is assigned twice in one tuple assignment"),
    ("combining an input", scan("  m, s = lse", "  m, x = lse"),
     "bad.rec:10:6: cannot assign to input 'x': a monoid combine updates states"),
    ("combined states of different shapes", scan("state  m[D] = -inf, s[D]", "state  m[D] = -inf, s[D, D]"),
     "bad.rec:10:3: states combined by a monoid need one shape (or a scalar): 's' is [D, D], 'm' is [D]"),
    ("operand item of the wrong shape", scan("(x, 1))", "(x, outer(x, x)))"),
     "bad.rec:10:26: an operand item of monoid 'lse' must be a scalar or have its state's shape [D], "
     "got [D, D]"),
    ("tuple assignment without a monoid", scan("lse((m, s), (x, 1))", "max(m, s)"),
     "bad.rec:10:10: a tuple assignment needs a monoid combine on the right, like `m, s = lse((m, s), (x, 1))`"),
    ("tuple assignment of a bare tuple", scan("lse((m, s), (x, 1))", "(x, 1)"),
     "bad.rec:10:10: a tuple assignment needs a monoid combine on the right, like `m, s = lse((m, s), (x, 1))`"),
    # ---- topology ---------------------------------------------------------------------------
    ("over grid2d", linear("recurrence r", "recurrence r over grid2d"),
     "bad.rec:1:19: recurrences over grid2d are not supported yet (pLSTM line graphs come in a later release); "
     "remove 'over grid2d' for a sequence recurrence"),
    ("over dag", linear("recurrence r", "recurrence r over dag"),
     "bad.rec:1:19: recurrences over dag are not supported yet (pLSTM line graphs come in a later release); "
     "remove 'over dag' for a sequence recurrence"),
    ("unknown topology", linear("recurrence r", "recurrence r over torus"),
     "bad.rec:1:19: unknown topology 'torus', expected one of: grid2d, dag"),
    # ---- syntax -----------------------------------------------------------------------------
    ("unexpected token lists what was expected", linear("exp(g) * S", "exp(g) * * S"),
     "bad.rec:6:16: unexpected '*', expected '(', '-', a name, a number"),
    ("missing colon before an annotation", linear("input  g: log_gate", "input  g log_gate"),
     "bad.rec:4:12: unexpected name 'log_gate', expected ',', ':', '[', end of line"),
    ("unexpected character", linear("exp(g) * S", "exp(g) $ S"),
     "bad.rec:6:14: unexpected character '$'"),
    ("a line indented too far", linear("  S = exp", "    S = exp"),
     "bad.rec:6:5: unexpected indent: this line is indented more than the one before"),
    ("an unindent to no outer level", linear("  output", " output"),
     "bad.rec:7:2: unindent does not match any outer indentation level"),
    ("missing body", "recurrence r\n",
     "bad.rec:1:13: unexpected end of file, expected an indented block"),
    ("missing body, trailing comments", "# a comment\nrecurrence r\n\n# nothing\n",
     "bad.rec:2:13: unexpected end of file, expected an indented block"),
    ("a loop without a body", product("    S = householder(k[j], beta[j]) @ S + beta[j] * outer(k[j], v[j])\n", ""),
     "bad.rec:7:3: unexpected 'output', expected an indented block"),
    ("unexpected end of file in an expression", LINEAR.rstrip("\n").replace("S^T @ q", "S^T @ (q"),
     "bad.rec:7:25: unexpected end of file, expected '(', ')', '*', '**', '+', ',', '-', '.', ... "
     "('(' at 7:23 is never closed)"),
    ("a parenthesis never closed", linear("outer(k, v)", "outer(k, v"),
     "bad.rec:7:3: unexpected 'output', expected '(', ')', '*', '**', '+', ',', '-', '.', ... "
     "('(' at 6:25 is never closed)"),
    ("nothing after '='", LINEAR + "  output o2[V] =",
     "bad.rec:8:17: unexpected end of line, expected '(', '-', a name, a number"),
    ("empty file", "",
     "bad.rec:1:1: unexpected end of file, expected 'recurrence'"),
    ("empty dims", linear("dims   K, V", "dims"),
     "bad.rec:2:7: unexpected end of line, expected a name"),
    ("a negative size in a shape", linear("state  S[K, V]", "state  S[K, -1]"),
     "bad.rec:5:15: unexpected '-', expected a name, an integer"),
    ("a state initialised with a name", linear("state  S[K, V]", "state  S[K, V] = x"),
     "bad.rec:5:20: unexpected name 'x', expected '+', '-', 'inf', a number"),
    ("an expression nested too deeply", linear("exp(g)", "exp(" + "-" * 500 + "g)"),
     "bad.rec:6:108: expression nested more than 100 levels deep; split it with `let`"),
]


@pytest.mark.parametrize("source, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_position_and_message(source, expected):
    assert first_line(source) == expected


def test_at_least_25_malformed_specs():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


# ---- the caret line points at the column -------------------------------------------------------

@pytest.mark.parametrize("source, under", [
    (linear("exp(g)", "exp(gg)"), "gg"),
    (linear("outer(k, v)", "outer(k, k)"), "+ outer"),
    (linear("exp(g) * S", "exp(g) $ S"), "$"),
    (linear("S^T @ q", "q @ k"), "@ k"),
    (linear("  output", " output"), "output"),
    (product("beta[j] * outer", "j * outer"), "j * outer"),
    (scan("max(a.m, b.m)", "max(a.m, b.z)"), "z)"),
])
def test_caret_points_at_the_column(source, under):
    """The error shows its line, indented by four, and a caret under the character at fault."""
    with pytest.raises(SpecError) as info:
        check(source, "bad.rec")
    err = info.value
    head, text, mark = str(err).split("\n")
    assert text == "    " + source.split("\n")[err.line - 1]
    assert mark == " " * text.index(under) + "^"


def test_caret_keeps_tabs_aligned():
    source = LINEAR.replace("  S = exp(g)", "\tS = exp(gg)").replace("  ", "\t")
    with pytest.raises(SpecError) as info:
        check(source, "bad.rec")
    err = info.value
    head, text, mark = str(err).split("\n")
    assert (err.line, err.col) == (6, 10)
    assert text == "    \tS = exp(gg) * S + outer(k, v)"
    assert mark == "    \t        ^"


def test_no_caret_when_there_is_no_line_to_show():
    with pytest.raises(SpecError) as info:
        check("", "bad.rec")
    assert str(info.value) == "bad.rec:1:1: unexpected end of file, expected 'recurrence'"


def test_error_carries_its_parts():
    with pytest.raises(SpecError) as info:
        check(linear("exp(g)", "exp(gg)"), "specs/x.rec")
    err = info.value
    assert (err.file, err.line, err.col, err.location) == ("specs/x.rec", 6, 11, "specs/x.rec:6:11")
    assert err.message == "'gg' is not declared; did you mean 'g'?"


# ---- files that cannot be read: one line, exit status 1, no traceback -----------------------------

def run_cli(args, capsys):
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_check_a_missing_file(tmp_path, capsys):
    path = tmp_path / "missing.rec"
    status, out, err = run_cli(["check", str(path)], capsys)
    assert status == 1 and out == ""
    assert err == f"recc: {path}: no such file\n"


def test_check_a_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.rec"
    path.write_bytes(LINEAR.encode() + "  # caf\xe9\n".encode("latin-1"))
    status, out, err = run_cli(["check", str(path)], capsys)
    assert status == 1 and out == ""
    assert err == f"recc: {path}: not UTF-8 text (byte {len(LINEAR) + len('  # caf')})\n"


def test_check_a_directory(tmp_path, capsys):
    status, out, err = run_cli(["check", str(tmp_path)], capsys)
    assert status == 1
    assert err == f"recc: {tmp_path}: is a directory, not a spec file\n"


def test_check_a_malformed_file_prints_the_error_and_caret(tmp_path, capsys):
    path = tmp_path / "bad.rec"
    path.write_text(linear("exp(g)", "exp(gg)"), encoding="utf-8")
    status, out, err = run_cli(["check", str(path)], capsys)
    assert status == 1 and out == ""
    assert err.splitlines() == [
        f"{path}:6:11: 'gg' is not declared; did you mean 'g'?",
        "      S = exp(gg) * S + outer(k, v)",
        "              ^",
    ]
