"""The adjoint of a recurrence: its backward pass, derived as IR.

`adjoint(rec)` differentiates one step of the body in reverse mode, at the IR
level, for any step body (affine or not). The result is itself a recurrence,
run backward in time, whose state is the cotangent of the forward state:

    given   the forward step's values: inputs x_t, params, states S_{t-1}
            (read as inputs named like the states), recomputed lets;
            d_S   the cotangent of S_t (the state after the step) coming from
                  the steps after t (and from the loss on the final state);
            d_o   the cotangent of each output o emitted at step t;
    compute d_S   for S_{t-1}   (the backward recurrence's state update),
            d_x   for every input x at step t,
            d_p   for every param p: this step's increment, summed over time
                  and batch by the caller.

Everything is ordinary `recc.ir`: `Adjoint.forward` (Let statements: the step
recomputed in SSA form, only what the backward reads), `Adjoint.backward`
(Let statements over forward values and cotangents) and
`Adjoint.recurrence` (the same as a reverse-time `ir.Recurrence`, runnable by
`recc.reference` and lowerable like any recurrence). In these statements a
forward state `S` is read as `Ref(S, "input")` (its value at the step's
start); `d_S` is `Ref(d_S, "state")`; `d_o` is `Ref(d_o, "input")`.

Matrix products are reassociated before differentiating so that nothing
K x K is formed where the forward had none: `householder(k, b) @ S` becomes
`S - b * outer(k, k @ S)`, `outer(a, b) @ S` becomes `outer(a, b @ S)`,
`diag(d) @ x` becomes `d * x`, and products of stacked operands
(`R[4, D, D] @ h`) become a `stack` of per-slice products. Derivatives use
three helper primitives (`step`, `rowsum`, `stack`; see `recc.primitives`),
and `x ** 0` where a scalar cotangent must take the shape of `x`.

The transition is explicit: the backward is linear in the cotangents, and for
every state `Adjoint.transposed[S]` is the part of d_S(before) that comes from
the state cotangents d_S(after) -- A_t^T(d_S) for an affine state, the
transposed Jacobian in general -- while `Adjoint.local[S]` is the part that
comes from the step's outputs, so d_S(before) = transposed + local.

`adjoint_reference(rec, *args, grad_outputs=..., ...)` evaluates the adjoint
with the float64 reference: the forward recording S_{t-1}, then the backward
recurrence over reversed time. It is the oracle for backward kernels.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from . import ir
from .primitives import PRIMITIVES, ShapeMismatch

__all__ = ["Adjoint", "adjoint", "adjoint_reference", "VJP"]


@dataclass(frozen=True)
class Adjoint:
    """The backward step of `rec` (see the module docstring for the conventions)."""
    rec: ir.Recurrence
    forward: tuple               # ir.Let: the step recomputed (SSA), only what `backward` reads
    backward: tuple              # ir.Let: cotangents, in order
    state_cotangents: dict       # state -> name of the cotangent of its value after the step (given)
    output_cotangents: dict      # output -> name of the cotangent of its value (given)
    state_gradients: dict        # state -> Expr: cotangent of its value before the step
    gradients: dict              # input or param -> Expr: its cotangent from this step
    gradient_names: dict         # input or param -> name of its gradient (an output of `recurrence`)
    transposed: dict             # state -> Expr: the part of state_gradients[S] linear in the d_S's
    local: dict                  # state -> Expr: the part from the outputs' cotangents
    recurrence: ir.Recurrence    # the backward as a recurrence over reversed time

    def text(self) -> str:
        """The backward step, readably."""
        from .analysis.show import show, show_stmt
        lines = [f"adjoint of {self.rec.name}"]
        lines += ["  given   " + ", ".join(f"{v} (of {k} after the step)" for k, v in self.state_cotangents.items())]
        if self.output_cotangents:
            lines += ["          " + ", ".join(f"{v} (of output {k})" for k, v in self.output_cotangents.items())]
        lines += ["  recompute"] + ["    " + show_stmt(s) for s in self.forward]
        lines += ["  backward"] + ["    " + show_stmt(s) for s in self.backward]
        lines += [f"    {self.gradient_names[k]} = {show(e)}" for k, e in self.gradients.items()]
        lines += [f"    {self.state_cotangents[k]} = {show(e)}" for k, e in self.state_gradients.items()]
        for s, e in self.transposed.items():
            text = f"{show(e)}  +  {show(self.local[s])}"
            lines.append(f"  {self.state_cotangents[s]} <- " + (text if len(text) < 300 else "(see backward)"))
        return "\n".join(lines)


# ---- building expressions (shapes filled in, trivial cases folded) ------------

def num(v: float) -> ir.Num:
    return ir.Num(float(v))


def _is_num(e, v=None) -> bool:
    return isinstance(e, ir.Num) and (v is None or e.value == v)


def _zero(e) -> bool:
    return _is_num(e, 0.0)


def _ew_shape(a, b) -> tuple:
    return a.shape if a.shape != () else b.shape


def add(a, b):
    if _zero(a) and (a.shape == () or a.shape == b.shape):
        return b
    if _zero(b) and (b.shape == () or a.shape == b.shape):
        return a
    if isinstance(b, ir.Unary) and b.op == "-":
        return sub(a, b.operand)
    return ir.Binary("+", a, b, _ew_shape(a, b))


def sub(a, b):
    if _zero(b):
        return a
    if _zero(a) and a.shape == ():
        return neg(b)
    return ir.Binary("-", a, b, _ew_shape(a, b))


def mul(a, b):
    if _is_num(a) and _is_num(b):
        return num(a.value * b.value)
    if _is_num(a, 1.0):
        return b
    if _is_num(b, 1.0):
        return a
    if _is_num(a, -1.0):
        return neg(b)
    if _is_num(b, -1.0):
        return neg(a)
    return ir.Binary("*", a, b, _ew_shape(a, b))


def div(a, b):
    if _is_num(b, 1.0):
        return a
    return ir.Binary("/", a, b, _ew_shape(a, b))


def power(a, b):
    return ir.Binary("**", a, b, a.shape)


def neg(a):
    if isinstance(a, ir.Num):
        return num(-a.value)
    if isinstance(a, ir.Unary) and a.op == "-":
        return a.operand
    return ir.Unary("-", a, a.shape)


def transpose(a):
    if isinstance(a, ir.Unary) and a.op == "T":
        return a.operand
    if isinstance(a, ir.Call) and a.fn in ("diag", "householder"):
        return a
    if isinstance(a, ir.Call) and a.fn == "outer":
        return call("outer", a.args[1], a.args[0])
    s = a.shape
    return ir.Unary("T", a, s[:-2] + (s[-1], s[-2]))


def _mm_shape(a: tuple, b: tuple) -> tuple:
    if len(b) == 1:
        return a[:-1]
    if len(a) == 1:
        return b[:-2] + b[-1:]
    return (a[:-2] or b[:-2]) + a[-2:-1] + b[-1:]


def raw_matmul(a, b):
    """`a @ b` as written, no rewriting."""
    return ir.Binary("@", a, b, _mm_shape(a.shape, b.shape))


def call(fn: str, *args):
    shapes = [a.shape for a in args]
    try:
        shape = PRIMITIVES[fn].shape(shapes)
    except ShapeMismatch:  # names vs fixed sizes of one dim: take the non-scalar argument's
        shape = next((s for s in shapes if s), ())
    return ir.Call(fn, tuple(args), tuple(shape))


def index(base, j: int):
    if isinstance(base, ir.Call) and base.fn == "stack":
        return base.args[j]
    return ir.Index(base, num(j), base.shape[1:])


def total(terms: list):
    """The sum of cotangent terms (None if there are none)."""
    out = None
    for t in terms:
        out = t if out is None else add(out, t)
    return out


# ---- rebuilding trees -----------------------------------------------------------

def _with_children(e, kids: tuple):
    """`e` with new children and its shape recomputed from them."""
    if isinstance(e, ir.Binary):
        a, b = kids
        if e.op in _BUILD:
            return _BUILD[e.op](a, b)
        shape = _mm_shape(a.shape, b.shape) if e.op == "@" else a.shape
        return replace(e, lhs=a, rhs=b, shape=shape)
    if isinstance(e, ir.Unary):
        (a,) = kids
        shape = a.shape if e.op == "-" else a.shape[:-2] + (a.shape[-1], a.shape[-2])
        return replace(e, operand=a, shape=shape)
    if isinstance(e, ir.Call):
        return replace(e, args=tuple(kids), shape=call(e.fn, *kids).shape)
    if isinstance(e, ir.Index):
        base, i = kids
        return replace(e, base=base, index=i, shape=base.shape[1:])
    if isinstance(e, ir.Tuple):
        return replace(e, items=tuple(kids))
    return e


_BUILD = {"+": add, "-": sub, "*": mul, "/": div}


def rewrite(e, fn):
    """Rebuild `e` bottom-up, applying `fn` to every rebuilt node."""
    kids = ir.children(e)
    if kids:
        new = tuple(rewrite(k, fn) for k in kids)
        if any(n is not k for n, k in zip(new, kids)):
            e = _with_children(e, new)
    return fn(e)


def refs(e) -> set:
    return {n.name for n in ir.walk(e) if isinstance(n, ir.Ref)}


# ---- VJP rules of the primitives -------------------------------------------------
#
# One entry per primitive: (diff, args, out, cot) -> a cotangent per argument
# (None: no gradient). `out` is the call itself (its value, recomputed), `cot`
# its cotangent, of the call's shape; `diff.bind(expr)` names a value used twice.

def _vjp_householder(d, args, out, cot):
    k, beta = args
    cot = d.bind(cot)
    k = d.bind(k)
    return [neg(mul(beta, add(raw_matmul(cot, k), raw_matmul(k, cot)))),
            neg(call("dot", k, raw_matmul(cot, k)))]


def _vjp_l2norm(d, args, out, cot):
    (x,) = args
    y, cot = d.bind(out), d.bind(cot)
    return [div(sub(cot, mul(y, call("dot", y, cot))), call("sqrt", call("dot", x, x)))]


def _vjp_sigmoid(d, args, out, cot):
    s = d.bind(out)
    return [mul(mul(cot, s), sub(num(1), s))]


def _vjp_silu(d, args, out, cot):
    (x,) = args
    s = d.bind(call("sigmoid", x))
    return [mul(cot, mul(s, add(num(1), mul(x, sub(num(1), s)))))]


def _vjp_tanh(d, args, out, cot):
    t = d.bind(out)
    return [mul(cot, sub(num(1), mul(t, t)))]


def _vjp_max(d, args, out, cot):
    a, b = args
    cot = d.bind(cot)
    first = d.bind(call("step", sub(a, b)))
    return [mul(cot, first), mul(cot, sub(num(1), first))]


def _vjp_min(d, args, out, cot):
    a, b = args
    cot = d.bind(cot)
    first = d.bind(call("step", sub(b, a)))
    return [mul(cot, first), mul(cot, sub(num(1), first))]


VJP: dict = {
    "exp": lambda d, a, out, cot: [mul(cot, out)],
    "log": lambda d, a, out, cot: [div(cot, a[0])],
    "sigmoid": _vjp_sigmoid,
    "logsigmoid": lambda d, a, out, cot: [mul(cot, call("sigmoid", neg(a[0])))],
    "tanh": _vjp_tanh,
    "softplus": lambda d, a, out, cot: [mul(cot, call("sigmoid", a[0]))],
    "relu": lambda d, a, out, cot: [mul(cot, call("step", a[0]))],
    "silu": _vjp_silu,
    "sqrt": lambda d, a, out, cot: [div(cot, mul(num(2), out))],
    "abs": lambda d, a, out, cot: [mul(cot, sub(call("step", a[0]), call("step", neg(a[0]))))],
    "max": _vjp_max,
    "min": _vjp_min,
    "sum": lambda d, a, out, cot: [cot],                      # broadcast back by Differentiator.backprop
    "dot": lambda d, a, out, cot: [mul(cot, a[1]), mul(cot, a[0])],
    "outer": lambda d, a, out, cot: [raw_matmul(cot, a[1]), raw_matmul(a[0], cot)],
    "householder": _vjp_householder,
    "diag": lambda d, a, out, cot: [call("rowsum", mul(cot, call("diag", power(a[0], num(0)))))],
    "l2norm": _vjp_l2norm,
    "step": lambda d, a, out, cot: [None],
    "rowsum": lambda d, a, out, cot: [raw_matmul(call("diag", cot), power(a[0], num(0)))],
    "stack": lambda d, a, out, cot: [index(cot, j) for j in range(len(a))],
}


# ---- the step in SSA form -----------------------------------------------------------

class _Names:
    """Fresh names that collide with nothing in the spec."""

    def __init__(self, rec: ir.Recurrence):
        taken = {d.name for d in rec.dims} | {c.name for c in rec.consts} | {m.name for m in rec.monoids}
        taken |= {d.name for d in rec.inputs + rec.params + rec.states + rec.outputs}
        for stmt in ir.unrolled(rec.body):
            if isinstance(stmt, ir.Let):
                taken.add(stmt.name)
        self.taken = taken | set(PRIMITIVES)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


class _Step:
    """The step body unrolled, in SSA form, with products reassociated.

    `program`: ("let", name, expr) and ("emit", output, expr) in order; states
    read as `Ref(S, "input")` at the step's start; `final[S]`: the name of S's
    value after the step.
    """

    def __init__(self, rec: ir.Recurrence, names: _Names):
        self.rec, self.names = rec, names
        self.fixed = rec.fixed_dims
        self.program = []
        env = {s.name: ir.Ref(s.name, "input", s.shape) for s in rec.states}
        defined = set()

        def subst(e):
            return rewrite(e, lambda n: env.get(n.name, n) if isinstance(n, ir.Ref) and n.kind in ("let", "state")
                           else self.canon(n))

        def define(base, expr, first_ok):
            name = base if first_ok and base not in defined else names.fresh(base)
            defined.add(name)
            self.program.append(("let", name, expr))
            return ir.Ref(name, "let", expr.shape)

        version = defaultdict(int)
        for stmt in ir.unrolled(rec.body):
            if isinstance(stmt, ir.Let):
                env[stmt.name] = define(stmt.name, subst(stmt.expr), True)
            elif isinstance(stmt, ir.Assign):
                version[stmt.target] += 1
                env[stmt.target] = define(f"{stmt.target}_{version[stmt.target]}", subst(stmt.expr), False)
            elif isinstance(stmt, ir.Combine):
                values = self.inline_monoid(stmt, [subst(e) for e in stmt.left], [subst(e) for e in stmt.right],
                                            define)
                for target, value in zip(stmt.targets, values):
                    version[target] += 1
                    env[target] = define(f"{target}_{version[target]}", value, False)
            elif isinstance(stmt, ir.Emit):
                self.program.append(("emit", stmt.output, subst(stmt.expr)))
            else:
                raise TypeError(f"unexpected statement {stmt!r}")
        self.final = {s.name: env[s.name].name for s in rec.states}

    def inline_monoid(self, stmt: ir.Combine, left: list, right: list, define) -> list:
        m = self.rec.monoid(stmt.monoid)
        operands = {m.left: dict(zip(m.elements, left)), m.right: dict(zip(m.elements, right))}
        local = {}

        def sub_field(n):
            if isinstance(n, ir.Field):
                return operands[n.operand][n.name]
            if isinstance(n, ir.Ref) and n.name in local:
                return local[n.name]
            return self.canon(n)

        for s in m.body:
            target = s.name if isinstance(s, ir.Let) else s.target
            value = rewrite(s.expr, sub_field)
            local[target] = define(f"{m.name}_{target}", value, False) if not isinstance(value, (ir.Ref, ir.Num)) \
                else value
        return [local[e] for e in m.elements]

    # -- reassociating products -------------------------------------------------

    def size(self, dim):
        return dim if isinstance(dim, int) else self.fixed.get(dim)

    def canon(self, e):
        return self.matmul(e.lhs, e.rhs) if isinstance(e, ir.Binary) and e.op == "@" else e

    def matmul(self, a, b):
        """`a @ b` rewritten so that no K x K operator is formed where one can be applied instead."""
        ra, rb = len(a.shape), len(b.shape)
        if ra > 2 or rb > 2:                       # stacked operands: one product per slice
            n = self.size((a if ra > 2 else b).shape[0])
            if n is None:
                return raw_matmul(a, b)
            pick = lambda x, r, j: index(x, j) if r > 2 else x
            return call("stack", *[self.matmul(pick(a, ra, j), pick(b, rb, j)) for j in range(n)])
        # structure in the left operand, applied to b
        if isinstance(a, ir.Binary) and a.op == "*" and a.lhs.shape == ():
            return mul(a.lhs, self.matmul(a.rhs, b))
        if isinstance(a, ir.Binary) and a.op in "*/" and a.rhs.shape == ():
            return (mul if a.op == "*" else div)(self.matmul(a.lhs, b), a.rhs)
        if isinstance(a, ir.Unary) and a.op == "-":
            return neg(self.matmul(a.operand, b))
        if isinstance(a, ir.Binary) and a.op in "+-" and a.lhs.shape and a.rhs.shape:
            return (add if a.op == "+" else sub)(self.matmul(a.lhs, b), self.matmul(a.rhs, b))
        if isinstance(a, ir.Binary) and a.op == "@" and rb == 1:
            return self.matmul(a.lhs, self.matmul(a.rhs, b))
        if isinstance(a, ir.Unary) and a.op == "T" and isinstance(a.operand, ir.Call) \
                and a.operand.fn in ("householder", "diag", "outer"):
            return self.matmul(transpose(a.operand), b)
        if isinstance(a, ir.Call) and a.fn == "householder":
            k, beta = a.args
            if rb == 1:                             # x - beta (k.x) k
                return sub(b, mul(mul(beta, call("dot", k, b)), k))
            return sub(b, mul(beta, call("outer", k, self.matmul(k, b))))      # S - beta k (k^T S)
        if isinstance(a, ir.Call) and a.fn == "diag" and rb == 1:
            return mul(a.args[0], b)
        if isinstance(a, ir.Call) and a.fn == "outer":
            u, w = a.args
            return mul(u, call("dot", w, b)) if rb == 1 else call("outer", u, self.matmul(w, b))
        # structure in the right operand, applied to a from the left
        if isinstance(b, ir.Binary) and b.op == "*" and b.lhs.shape == ():
            return mul(b.lhs, self.matmul(a, b.rhs))
        if isinstance(b, ir.Binary) and b.op in "*/" and b.rhs.shape == ():
            return (mul if b.op == "*" else div)(self.matmul(a, b.lhs), b.rhs)
        if isinstance(b, ir.Unary) and b.op == "-":
            return neg(self.matmul(a, b.operand))
        if isinstance(b, ir.Binary) and b.op in "+-" and b.lhs.shape and b.rhs.shape:
            return (add if b.op == "+" else sub)(self.matmul(a, b.lhs), self.matmul(a, b.rhs))
        if isinstance(b, ir.Binary) and b.op == "@" and ra == 1:
            return self.matmul(self.matmul(a, b.lhs), b.rhs)
        if isinstance(b, ir.Unary) and b.op == "T" and isinstance(b.operand, ir.Call) \
                and b.operand.fn in ("householder", "diag", "outer"):
            return self.matmul(a, transpose(b.operand))
        if isinstance(b, ir.Call) and b.fn == "householder":
            k, beta = b.args
            if ra == 1:
                return sub(a, mul(mul(beta, call("dot", a, k)), k))
            return sub(a, mul(beta, call("outer", self.matmul(a, k), k)))        # S - beta (S k) k^T
        if isinstance(b, ir.Call) and b.fn == "diag" and ra == 1:
            return mul(a, b.args[0])
        if isinstance(b, ir.Call) and b.fn == "outer":
            u, w = b.args
            return mul(call("dot", a, u), w) if ra == 1 else call("outer", self.matmul(a, u), w)
        return raw_matmul(a, b)


# ---- reverse mode -------------------------------------------------------------------

class _Reverse:
    """One reverse sweep over a `_Step`: cotangents as Let statements."""

    def __init__(self, step: _Step, names: _Names, seeds: dict, outputs: dict):
        self.step, self.names = step, names
        self.stmts = []
        self.whole = defaultdict(list)                       # name -> cotangent terms
        self.parts = defaultdict(lambda: defaultdict(list))  # name -> slice -> terms (from x[j])
        self.shapes = {}
        rec = step.rec
        for d in rec.inputs + rec.params + rec.states:
            self.shapes[d.name] = d.shape
        self.active = {d.name for d in rec.inputs + rec.params + rec.states}
        for kind, name, expr in step.program:
            if kind == "let":
                self.shapes[name] = expr.shape
                if refs(expr) & self.active:
                    self.active.add(name)
        for state, cot in seeds.items():
            self.whole[step.final[state]].append(cot)
        for kind, name, expr in reversed(step.program):
            if kind == "emit":
                if name in outputs:
                    self.backprop(expr, outputs[name])
            elif kind == "let":
                cot = self.total(name)
                if cot is not None:
                    self.backprop(expr, self.bind(cot, f"d_{name}"))

    def bind(self, expr, base: str = "t"):
        """A name for `expr` if it is not one already (it is about to be used more than once)."""
        if isinstance(expr, (ir.Ref, ir.Num)):
            return expr
        name = self.names.fresh(base)
        self.stmts.append(ir.Let(name, expr))
        return ir.Ref(name, "let", expr.shape)

    def total(self, name: str):
        terms = list(self.whole.get(name, ()))
        if name in self.parts:
            n = self.step.size(self.shapes[name][0])
            slices = [total(self.parts[name].get(j, [])) or num(0) for j in range(n)]
            terms.append(call("stack", *slices))
        return total(terms)

    def backprop(self, e, cot):
        """Add the cotangents that `cot`, the cotangent of `e`, sends to e's leaves."""
        if _zero(cot) or not (refs(e) & self.active):
            return
        if e.shape == () and cot.shape != ():       # e was broadcast
            cot = call("sum", cot)
        elif e.shape != () and cot.shape == ():     # a scalar cotangent (from sum): give it e's shape
            cot = mul(cot, power(e, num(0)))
        if isinstance(e, ir.Ref):
            self.whole[e.name].append(cot)
        elif isinstance(e, ir.Index):
            j = int(e.index.value)
            if isinstance(e.base, ir.Ref):
                self.parts[e.base.name][j].append(cot)
            else:
                n = self.step.size(e.base.shape[0])
                self.backprop(e.base, call("stack", *[cot if i == j else num(0) for i in range(n)]))
        elif isinstance(e, ir.Unary):
            self.backprop(e.operand, neg(cot) if e.op == "-" else transpose(cot))
        elif isinstance(e, ir.Binary):
            getattr(self, "_binary_" + {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul",
                                        "**": "pow"}[e.op])(e, e.lhs, e.rhs, cot)
        elif isinstance(e, ir.Call):
            rule = VJP.get(e.fn)
            if rule is None:
                raise NotImplementedError(f"no derivative for primitive '{e.fn}': add it to recc.adjoint.VJP")
            for arg, c in zip(e.args, rule(self, e.args, e, cot)):
                if c is not None:
                    self.backprop(arg, c)
        else:
            raise TypeError(f"cannot differentiate {e!r}")

    def _binary_add(self, e, a, b, cot):
        cot = self.bind(cot) if self._both(a, b) else cot
        self.backprop(a, cot)
        self.backprop(b, cot)

    def _binary_sub(self, e, a, b, cot):
        cot = self.bind(cot) if self._both(a, b) else cot
        self.backprop(a, cot)
        self.backprop(b, neg(cot))

    def _both(self, a, b) -> bool:
        return bool(refs(a) & self.active) and bool(refs(b) & self.active)

    def _scale(self, cot, other, this):
        """The cotangent of `this` in `this * other`."""
        if this.shape == () and other.shape != () and isinstance(other, ir.Call) and other.fn == "outer":
            u, w = other.args                       # sum(cot * outer(u, w)) = u . (cot @ w)
            return call("dot", u, raw_matmul(cot, w))
        return mul(cot, other)

    def _binary_mul(self, e, a, b, cot):
        if refs(a) & self.active and refs(b) & self.active:
            cot = self.bind(cot)
        self.backprop(a, self._scale(cot, b, a))
        self.backprop(b, self._scale(cot, a, b))

    def _binary_div(self, e, a, b, cot):
        if refs(b) & self.active:
            cot = self.bind(cot)
            b_ = self.bind(b) if refs(a) & self.active else b
            self.backprop(a, div(cot, b_))
            self.backprop(b, neg(div(mul(cot, a), mul(b_, b_))))
        else:
            self.backprop(a, div(cot, b))

    def _binary_pow(self, e, a, b, cot):
        if refs(b) & self.active:
            cot = self.bind(cot)
            self.backprop(b, mul(mul(cot, e), call("log", a)))
        exponent = num(b.value - 1) if isinstance(b, ir.Num) else sub(b, num(1))
        self.backprop(a, mul(mul(cot, b), power(a, exponent)))

    def _binary_matmul(self, e, a, b, cot):
        ra, rb = len(a.shape), len(b.shape)
        if ra > 2 or rb > 2:
            raise NotImplementedError(f"cannot differentiate a product of stacked operands whose stacked dim "
                                      f"has no fixed size ({a.shape} @ {b.shape}); give the dim a size")
        if refs(a) & self.active and refs(b) & self.active:
            cot = self.bind(cot)
        if isinstance(a, ir.Call) and a.fn == "diag" and rb == 2:      # row scaling
            self.backprop(b, raw_matmul(a, cot))
            self.backprop(a.args[0], call("rowsum", mul(cot, b)))
            return
        if isinstance(b, ir.Call) and b.fn == "diag" and ra == 2:      # column scaling
            self.backprop(a, raw_matmul(cot, b))
            self.backprop(b.args[0], call("rowsum", transpose(mul(cot, a))))
            return
        if rb == 1:                                  # [M, K] @ [K]
            self.backprop(a, call("outer", cot, b))
            self.backprop(b, raw_matmul(transpose(a), cot))
        elif ra == 1:                                # [K] @ [K, N]
            self.backprop(a, raw_matmul(b, cot))
            self.backprop(b, call("outer", a, cot))
        else:                                        # [M, K] @ [K, N]
            self.backprop(a, raw_matmul(cot, transpose(b)))
            self.backprop(b, raw_matmul(transpose(a), cot))


# ---- assembling the adjoint ---------------------------------------------------------

def _inline(expr, stmts: list):
    lets = {s.name: s.expr for s in stmts}

    def sub(n):
        if isinstance(n, ir.Ref) and n.kind == "let" and n.name in lets:
            return rewrite(lets[n.name], sub)
        return n
    return rewrite(expr, sub)


def _cse_expr(e, known: dict):
    """`e` with every subexpression that a statement already computes replaced by that statement's name."""
    hit = known.get(e)
    if hit is not None:
        return hit
    kids = ir.children(e)
    if not kids:
        return e
    new = tuple(_cse_expr(k, known) for k in kids)
    return _with_children(e, new) if any(n is not k for n, k in zip(new, kids)) else e


def _cse(stmts: list, known: dict, alias: dict) -> tuple:
    """Common subexpressions and copies removed from Let statements: (statements, expr -> Ref, name -> Expr)."""
    out = []
    for s in stmts:
        expr = rewrite(s.expr, lambda n: alias.get(n.name, n) if isinstance(n, ir.Ref) else n)
        expr = _cse_expr(expr, known)
        if isinstance(expr, (ir.Ref, ir.Num)):
            alias[s.name] = expr
            continue
        out.append(ir.Let(s.name, expr, s.pos))
        known[expr] = ir.Ref(s.name, "let", expr.shape)
    return out, known, alias


def _live(forward: list, backward: list, roots) -> tuple:
    """Drop statements nothing in `roots` reads."""
    need = set()
    for r in roots:
        need |= refs(r)
    keep = []
    for s in reversed(forward + backward):
        if s.name in need:
            keep.append(s)
            need |= refs(s.expr)
    keep.reverse()
    fwd_names = {s.name for s in forward}
    return tuple(s for s in keep if s.name in fwd_names), tuple(s for s in keep if s.name not in fwd_names)


def adjoint(rec: ir.Recurrence) -> Adjoint:
    """The backward step of `rec` (any step body): see the module docstring."""
    return _adjoint(rec, rec.file)


@functools.lru_cache(maxsize=64)
def _adjoint(rec: ir.Recurrence, file: str) -> Adjoint:
    names = _Names(rec)
    d_state = {s.name: names.fresh(f"d_{s.name}") for s in rec.states}
    d_output = {o.name: names.fresh(f"d_{o.name}") for o in rec.outputs}
    d_grad = {d.name: names.fresh(f"d_{d.name}") for d in rec.inputs + rec.params}
    step = _Step(rec, names)
    forward = [ir.Let(name, expr) for kind, name, expr in step.program if kind == "let"]
    state_seeds = {s.name: ir.Ref(d_state[s.name], "state", s.shape) for s in rec.states}
    output_seeds = {o.name: ir.Ref(d_output[o.name], "input", o.shape) for o in rec.outputs}

    sweep = _Reverse(step, names, state_seeds, output_seeds)
    gradients = {d.name: sweep.total(d.name) or num(0) for d in rec.inputs + rec.params}
    prev = {}
    for s in rec.states:
        cot = sweep.total(s.name)
        prev[s.name] = sweep.bind(cot, f"d_{s.name}_prev") if cot is not None else \
            mul(num(0), state_seeds[s.name])          # zeros of the state's shape
    transposed, local = {}, {}
    for part, seeds, outs in ((transposed, state_seeds, {}), (local, {}, output_seeds)):
        one = _Reverse(step, names, seeds, outs)
        for s in rec.states:
            cot = one.total(s.name)
            part[s.name] = _inline(cot, one.stmts) if cot is not None else num(0)
    forward, known, alias = _cse(forward, {}, {})
    backward, known_b, alias_b = _cse(sweep.stmts, dict(known), dict(alias))
    tidy = lambda e, kn, al: _cse_expr(rewrite(e, lambda n: al.get(n.name, n) if isinstance(n, ir.Ref) else n), kn)
    gradients = {k: tidy(e, known_b, alias_b) for k, e in gradients.items()}
    prev = {k: tidy(e, known_b, alias_b) for k, e in prev.items()}
    transposed = {k: tidy(e, known, alias) for k, e in transposed.items()}
    local = {k: tidy(e, known, alias) for k, e in local.items()}
    roots = list(gradients.values()) + list(prev.values()) + list(transposed.values()) + list(local.values())
    fwd, bwd = _live(forward, backward, roots)
    recurrence = _backward_recurrence(rec, fwd, bwd, d_state, d_output, d_grad, gradients, prev)
    return Adjoint(rec, fwd, bwd, d_state, d_output, prev, gradients, d_grad, transposed, local, recurrence)


def _backward_recurrence(rec, fwd, bwd, d_state, d_output, d_grad, gradients, prev) -> ir.Recurrence:
    decl = lambda name, d: ir.TensorDecl(name, d.shape, d.pos)
    inputs = tuple(decl(d.name, d) for d in rec.inputs) + tuple(decl(s.name, s) for s in rec.states) \
        + tuple(decl(d_output[o.name], o) for o in rec.outputs)
    body = list(fwd) + list(bwd)
    body += [ir.Emit(d_grad[d.name], gradients[d.name]) for d in rec.inputs + rec.params]
    body += [ir.Assign(d_state[s.name], prev[s.name]) for s in rec.states]   # all read before any is assigned
    return ir.Recurrence(
        name=f"{rec.name}_adjoint", topology=rec.topology, dims=rec.dims, inputs=inputs, params=rec.params,
        consts=rec.consts, states=tuple(ir.TensorDecl(d_state[s.name], s.shape, s.pos) for s in rec.states),
        outputs=tuple(decl(d_grad[d.name], d) for d in rec.inputs + rec.params), body=tuple(body),
        source=rec.source, file=f"{rec.file} (adjoint)")


# ---- the oracle: the adjoint run by the reference evaluator ---------------------------

def adjoint_reference(rec: ir.Recurrence, *args, grad_outputs, grad_final_state=None, dtype=torch.float64,
                      **kwargs) -> dict:
    """Gradients of  sum(grad_outputs * outputs) + sum(grad_final_state * final_state)  with respect to
    every input, param and initial state, by running `adjoint(rec).recurrence` backward in time with
    `recc.reference`. Arguments as for `reference(rec, *args, **kwargs)`; `grad_outputs` (and
    `grad_final_state`) like the op's outputs (and final state): a tensor, or a tuple in declaration
    order; None for zeros. Returns {name: gradient} for inputs ([B, T, H, ...]), params ([H, ...]) and
    states (the initial state's gradient, [N, H, ...])."""
    from .reference import reference
    from .signature import bind

    adj = adjoint(rec)
    call_ = bind(rec, args, kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "output_final_state"}
    # the forward, recording each step's starting state
    names = _Names(rec)
    trace = {s.name: names.fresh(f"{s.name}_start") for s in rec.states}
    traced = replace(rec, outputs=rec.outputs + tuple(ir.TensorDecl(trace[s.name], s.shape) for s in rec.states),
                     body=tuple(ir.Emit(trace[s.name], ir.Ref(s.name, "state", s.shape)) for s in rec.states)
                     + rec.body)
    outs, _ = reference(traced, *args, dtype=dtype, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    starts = outs[len(rec.outputs):]

    def as_tuple(x, decls, lead):
        xs = (None,) * len(decls) if x is None else (x,) if isinstance(x, torch.Tensor) else tuple(x)
        return [torch.zeros(lead + tuple(call_.dims.get(d, d) if isinstance(d, str) else d for d in t.shape),
                            dtype=dtype) if v is None else v.to(dtype) for v, t in zip(xs, decls)]
    B, T, H, N = call_.B, call_.T, call_.H, call_.N
    d_out = as_tuple(grad_outputs, rec.outputs, (B, T, H))
    d_final = as_tuple(grad_final_state, rec.states, (N, H))

    flip = lambda t: t.flip(1)
    n_in = len(rec.inputs)
    inputs = [flip(a.to(dtype)) for a in args[:n_in]] + [flip(s) for s in starts] + [flip(d) for d in d_out]
    params = [a.to(dtype) for a in args[n_in:]]
    extra = {k: v for k, v in kwargs.items() if k not in ("initial_state", "cu_seqlens")}
    if call_.cu_seqlens is not None:
        extra["cu_seqlens"] = (T - call_.cu_seqlens.flip(0)).to(call_.cu_seqlens.dtype)
        d_final = [d.flip(0) for d in d_final]       # sequences run in reverse order too
    grads, d_initial = reference(adj.recurrence, *inputs, *params, dtype=dtype,
                                 initial_state=tuple(d_final) if len(d_final) > 1 else d_final[0],
                                 output_final_state=True, **extra)
    grads = grads if isinstance(grads, tuple) else (grads,)
    d_initial = d_initial if isinstance(d_initial, tuple) else (d_initial,)
    result = {}
    for d, g in zip(rec.inputs, grads[:n_in]):
        result[d.name] = flip(g)
    for d, g in zip(rec.params, grads[n_in:]):
        result[d.name] = g.sum(dim=(0, 1))
    for s, g in zip(rec.states, d_initial):
        result[s.name] = g.flip(0) if call_.cu_seqlens is not None else g
    return result
