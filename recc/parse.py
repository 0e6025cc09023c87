"""Stage 1: spec text -> lark syntax tree with positions.

Every failure becomes a `SpecError` with line, column and a message that says
what was expected; no lark exception escapes.
"""
from __future__ import annotations

import functools

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken
from lark.indenter import DedentError, Indenter

from .errors import SpecError
from .resources import grammar_path


class _RecurrenceIndenter(Indenter):
    NL_type = "_NL"
    OPEN_PAREN_types = ["LPAR", "LSQB"]
    CLOSE_PAREN_types = ["RPAR", "RSQB"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8

    def handle_NL(self, token):
        try:
            yield from super().handle_NL(token)
        except DedentError:
            col = len(token.rsplit("\n", 1)[1]) + 1
            raise _PositionedError("unindent does not match any outer indentation level",
                                   token.end_line, col) from None


class _PositionedError(Exception):
    def __init__(self, message, line, col):
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


@functools.lru_cache(maxsize=None)
def parser() -> Lark:
    with open(grammar_path("recurrence.lark"), encoding="utf-8") as f:
        grammar = f.read()
    return Lark(grammar, parser="lalr", postlex=_RecurrenceIndenter(), propagate_positions=True,
                maybe_placeholders=True)


# How expected terminals are named in messages.
_TERMINAL_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "INF": "'inf'",
    "_NL": "end of line", "_INDENT": "an indented block", "_DEDENT": "end of block",
    "$END": "end of file", "TRANSPOSE": "'^T'",
}


def _describe_expected(names) -> str:
    p = parser()
    shown = set()
    for name in names:
        if name in _TERMINAL_NAMES:
            shown.add(_TERMINAL_NAMES[name])
            continue
        try:
            pattern = p.get_terminal(name).pattern
        except KeyError:
            shown.add(name)
            continue
        shown.add(f"'{pattern.value}'" if pattern.type == "str" else name)
    items = sorted(shown)
    if len(items) > 8:
        items = items[:8] + ["..."]
    return ", ".join(items)


def _at_end(tok: Token, text: str) -> bool:
    """Whether a token stands at the end of the text (a dedent there is the end of file)."""
    if tok.type == "$END":
        return True
    if tok.type != "_DEDENT":
        return False
    return tok.end_pos is None or not text[tok.end_pos:].strip()


def _end_position(source: str) -> tuple[int, int]:
    """Just after the last line that holds more than blanks and comments."""
    lines = source.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        content = lines[i].split("#", 1)[0].rstrip()
        if content.strip():
            return i + 1, len(content) + 1
    return 1, 1


def _describe_token(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "_INDENT":
        return "indent"
    if tok.type == "_DEDENT":
        return "end of block"
    if tok.type == "$END":
        return "end of file"
    if tok.type == "NAME":
        return f"name '{tok.value}'"
    if tok.type in ("NUMBER", "INT"):
        return f"number {tok.value}"
    return f"'{tok.value}'"


def _token_position(tok: Token, source: str) -> tuple[int, int]:
    if tok.type in ("_INDENT", "_DEDENT") and tok.end_line is not None:
        return tok.end_line, tok.end_column
    if tok.line is None:
        return _end_position(source)
    return tok.line, tok.column


def _expected(e: UnexpectedToken) -> set:
    """The terminals the parser accepts where it stopped. `e.expected` can be
    stale when the error comes from the contextual lexer right after a newline
    (it then lists only the newline), so ask the parser itself when we can."""
    if e.interactive_parser is not None:
        try:
            return e.interactive_parser.accepts()
        except LarkError:  # pragma: no cover - fall back to lark's own list
            pass
    return e.expected


def _unclosed_bracket(text: str, line: int) -> Token | None:
    """The innermost '(' or '[' opened on a line before `line` and still open
    there. Newlines inside brackets do not end a statement, so a missing ')'
    shows up lines later; the hint names the bracket."""
    stack = []
    try:
        for tok in parser().lex(text):
            if tok.line is None or tok.line >= line:
                break
            if tok.type in _RecurrenceIndenter.OPEN_PAREN_types:
                stack.append(tok)
            elif tok.type in _RecurrenceIndenter.CLOSE_PAREN_types and stack:
                stack.pop()
    except (LarkError, _PositionedError, AssertionError):  # lark's Indenter asserts on an unmatched ')'
        pass
    return stack[-1] if stack else None


def parse(source: str, file: str = "<spec>") -> Tree:
    """Parse spec text into a syntax tree; raise SpecError on any syntax error."""
    text = source if source.endswith("\n") else source + "\n"
    try:
        return parser().parse(text)
    except _PositionedError as e:
        raise SpecError(e.message, e.line, e.col, file, source) from None
    except UnexpectedCharacters as e:
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        raise SpecError(f"unexpected character {char!r}", e.line, e.column, file, source) from None
    except UnexpectedToken as e:
        if e.token.type == "_INDENT":
            line, col = _token_position(e.token, source)
            raise SpecError("unexpected indent: this line is indented more than the one before",
                            line, col, file, source) from None
        at_end = _at_end(e.token, text)
        if at_end:
            line, col = _end_position(source)
            msg = "unexpected end of file"
        else:
            line, col = _token_position(e.token, source)
            msg = f"unexpected {_describe_token(e.token)}"
        expected = _describe_expected(_expected(e))
        if expected:
            msg += f", expected {expected}"
        bracket = _unclosed_bracket(text, line + 1 if at_end else line)
        if bracket is not None:
            msg += f" ('{bracket}' at {bracket.line}:{bracket.column} is never closed)"
        raise SpecError(msg, line, col, file, source) from None
    except UnexpectedEOF as e:
        line, col = _end_position(source)
        expected = _describe_expected(e.expected)
        raise SpecError(f"unexpected end of file, expected {expected}", line, col, file, source) from None
    except LarkError as e:  # any other parser failure still gets a position
        raise SpecError(f"syntax error: {e}", 1, 1, file, source) from None
