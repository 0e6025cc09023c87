"""IR expressions and statements printed back as spec text, for messages and `recc check`."""
from __future__ import annotations

from .. import ir

# binding strength, as in grammar/recurrence.lark: sum < product < unary < power < postfix
_SUM, _PRODUCT, _UNARY, _POWER, _POSTFIX = 1, 2, 3, 4, 5
_LEVEL = {"+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT, "@": _PRODUCT, "**": _POWER}


def show(expr: ir.Expr) -> str:
    """`expr` as it would be written in a spec (parenthesised only where needed)."""
    return _show(expr)[0]


def _num(v: float) -> str:
    if v == float("inf"):
        return "inf"
    if v == -float("inf"):
        return "-inf"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def _show(e) -> tuple:
    """(text, binding level)."""
    if isinstance(e, ir.Num):
        text = _num(e.value)
        return text, _UNARY if e.value < 0 else _POSTFIX
    if isinstance(e, ir.Ref):
        return e.name, _POSTFIX
    if isinstance(e, ir.Field):
        return f"{e.operand}.{e.name}", _POSTFIX
    if isinstance(e, ir.Call):
        return f"{e.fn}({', '.join(show(a) for a in e.args)})", _POSTFIX
    if isinstance(e, ir.Tuple):
        return "(" + ", ".join(show(a) for a in e.items) + ")", _POSTFIX
    if isinstance(e, ir.Index):
        return f"{_at(e.base, _POSTFIX)}[{show(e.index)}]", _POSTFIX
    if isinstance(e, ir.Unary):
        if e.op == "T":
            return f"{_at(e.operand, _POSTFIX)}^T", _POSTFIX
        return f"-{_at(e.operand, _UNARY)}", _UNARY
    if isinstance(e, ir.Binary):
        level = _LEVEL[e.op]
        if e.op == "**":
            return f"{_at(e.lhs, _POSTFIX)} ** {_at(e.rhs, _UNARY)}", _POWER
        return f"{_at(e.lhs, level)} {e.op} {_at(e.rhs, level + 1)}", level
    raise TypeError(f"cannot show {e!r}")


def _at(e, level: int) -> str:
    text, own = _show(e)
    return text if own >= level else f"({text})"


def show_stmt(stmt) -> str:
    if isinstance(stmt, ir.Let):
        return f"let {stmt.name} = {show(stmt.expr)}"
    if isinstance(stmt, ir.Assign):
        return f"{stmt.target} = {show(stmt.expr)}"
    if isinstance(stmt, ir.Emit):
        return f"output {stmt.output} = {show(stmt.expr)}"
    if isinstance(stmt, ir.Combine):
        left = ", ".join(show(e) for e in stmt.left)
        right = ", ".join(show(e) for e in stmt.right)
        return f"{', '.join(stmt.targets)} = {stmt.monoid}(({left}), ({right}))"
    if isinstance(stmt, ir.For):
        body = "\n".join("  " + show_stmt(s) for s in stmt.body)
        return f"for {stmt.var} in {stmt.start}..{stmt.stop}:\n{body}"
    raise TypeError(f"cannot show {stmt!r}")
