"""Property: the parser and checker never crash.

Whatever text they are given (an example spec mutated by deleting, duplicating
or swapping characters, tokens or lines, inserting tokens, re-indenting; or
random text), the outcome is either a checked recurrence or a `SpecError` with
a position inside the text and a message. Any other exception is a bug in
`recc.parse` / `recc.check`.
"""
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recc.check import check
from recc.errors import SpecError
from recc.ir import Recurrence
from recc.primitives import ANNOTATIONS, PRIMITIVES

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.rec"))
TEXTS = [p.read_text(encoding="utf-8") for p in SPECS]

TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|\^T|\*\*|\.\.|\s+|.", re.S)

VOCAB = sorted(set(
    ["recurrence", "over", "grid2d", "dag", "dims", "input", "param", "state", "const", "let", "output", "for",
     "in", "monoid", "elements", "identity", "inf", "-inf", "0", "1", "2", "0.5", "1e9", "1e999", "0..n", "n = 2",
     "K", "V", "D", "n", "j", "a", "b", "a.m", "b.s", "S", "x", "q", "k", "v", "g", "T", "B", "_x", "lambda",
     "=", "+", "-", "*", "/", "@", "**", "^T", ".", ",", ":", "..", "(", ")", "[", "]", "(x, 1)", "#", "\\",
     "\n", "\n  ", "\n    ", "\n\t", "  ", "\t", " ", "\r\n", "$", "é", "\x00", "\f"]
    + list(PRIMITIVES) + list(ANNOTATIONS)))


def assert_outcome(text: str) -> None:
    """Either a Recurrence or a positioned SpecError; anything else fails the test."""
    try:
        rec = check(text, "fuzz.rec")
    except SpecError as err:
        assert err.line >= 1 and err.col >= 1, (err.line, err.col, err.message)
        assert err.line <= text.count("\n") + 2, (err.line, err.message)
        assert err.message.strip(), "empty message"
        assert str(err).splitlines()[0] == f"fuzz.rec:{err.line}:{err.col}: {err.message}"
    else:
        assert isinstance(rec, Recurrence)


# ---- mutations ------------------------------------------------------------------

def _tokens(text):
    return TOKEN.findall(text)


def _lines(text):
    return text.split("\n")


@st.composite
def mutated_spec(draw):
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["char", "token", "line", "insert", "indent"]))
        if kind == "char":
            units, joiner = list(text), ""
        elif kind in ("token", "insert"):
            units, joiner = _tokens(text), ""
        elif kind == "line":
            units, joiner = _lines(text), "\n"
        else:  # re-indent one line
            lines = _lines(text)
            i = draw(st.integers(0, len(lines) - 1))
            body = lines[i].lstrip(" \t")
            indent = draw(st.sampled_from(["", " ", "  ", "   ", "    ", "\t", "  \t", "      "]))
            lines[i] = indent + body
            text = "\n".join(lines)
            continue
        if not units:
            continue
        i = draw(st.integers(0, len(units) - 1))
        if kind == "insert":
            units.insert(i, draw(st.sampled_from(VOCAB)))
        else:
            op = draw(st.sampled_from(["delete", "duplicate", "swap"]))
            if op == "delete":
                del units[i]
            elif op == "duplicate":
                units.insert(i, units[i])
            elif len(units) > 1:
                j = draw(st.integers(0, len(units) - 1))
                units[i], units[j] = units[j], units[i]
        text = joiner.join(units)
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_spec())
def test_mutated_specs_check_or_fail_with_a_position(text):
    assert_outcome(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(VOCAB), max_size=40).map("".join))
def test_token_soup_checks_or_fails_with_a_position(text):
    assert_outcome(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_random_text_checks_or_fails_with_a_position(text):
    assert_outcome(text)


def test_every_example_spec_checks():
    for path, text in zip(SPECS, TEXTS):
        assert check(text, str(path)).name == path.stem


def test_found_by_fuzzing():
    """Inputs that once crashed the checker, kept as regressions."""
    bad = [
        # an infinite or fractional index (int(inf) raised OverflowError)
        "recurrence r\n  dims n = 2, K\n  input k[n, K]\n  state s[K]\n  s = k[inf]\n  output y = s\n",
        "recurrence r\n  dims n = 2, K\n  input k[n, K]\n  state s[K]\n  s = k[1e999]\n  output y = s\n",
        # deep nesting (RecursionError in the checker)
        "recurrence r\n  dims K\n  input x[K]\n  state s[K]\n  s = " + "-" * 3000 + "x\n  output y = s\n",
        "recurrence r\n  dims K\n  input x[K]\n  state s[K]\n  s = x" + " + x" * 2000 + "\n  output y = s\n",
    ]
    for text in bad:
        assert_outcome(text)
