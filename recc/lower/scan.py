"""Strategy `scan`: elementwise states as a parallel associative scan over time.

For recurrences whose states are vectors over one channel dim D and whose step
acts on each channel independently (`scan_form` recognises them):

* a **linear** state: `x = <expr>` affine in x, `x_t = A_t * x_{t-1} + B_t`, A_t
  and B_t elementwise in the step's inputs, params and consts (first-order scan,
  Mamba1-style diagonal SSMs, HGRN); the scan element is the pair (A, B), composed
  as (A1, B1), (A2, B2) -> (A1 A2, A2 B1 + B2) (a cumulative sum is A = 1);
* a **monoid** state tuple: `m, s = M((m, s), (x, 1))` (or the states on the
  right), a fold over a user-declared combine, emitted from the monoid's IR body
  as a `@triton.jit` function over tuples.

Layout: inputs [B, T, H, D] (D contiguous). A program owns (sequence, head, BD
channels) and walks its sequence ([bos, eos) of `cu_seqlens`, or row b) in
blocks, carrying the state from block to block. Three kernel families are
generated; the `tile` kernels run unless `_SCAN_TILES["variant"]` in the generated
module (or `lower_scan(tiles=...)`) names another. Their launch parameters come
from the solver at each call shape (`recc.tiles`, family `scan`), the forward's
(BT, BD, num_warps) and the backward's (BT_bwd, BD_bwd, num_warps_bwd) apart: at
B=4 T=4096 H=16 D=128 fp32 on an H200, forward 128 x 32 and backward 64 x 32, 4
warps each, the fastest forward and the fastest backward of 31 configs measured
(`benchmarks/bench.py --ops scan --sweep`: 0.107 / 0.175 ms; accelerated-scan
0.102 / 0.279 fwd / fwd+bwd; on an H100 64 x 32 both ways):

* `chunks`: a block is W chunks of R consecutive steps; a thread owns
  one chunk (of 16-byte vectors of channels) and steps through it sequentially.
  Pass 1 composes the elements of each chunk's predecessor (the carry stands in
  for the predecessor of chunk 0), one `tl.associative_scan` over the W chunks
  gives every chunk's starting state, pass 2 steps through the chunk again
  (loads hit L1/L2), emitting outputs. R loads per thread are in flight in
  pass 1; no shuffles per step; few registers.
* `tile` (default): one `tl.associative_scan` over axis 0 of a [BT, BD] tile per block
  (the next block's tiles loaded before scanning the current one).
* `lookback` (experimental, not used by default): the `tile` block with time split
  over the grid: a program per (block, sequence, head, BD channels), ids taken from a
  counter at start (so a block's predecessor is resident); the carry goes from program
  to program as a 64-bit word per channel (flag << 32 | fp32 bits) and a ready word per
  program (the consumer spins on that scalar alone). Correct on an H200 for every tile
  swept (outputs and gradients on 4 fresh inputs each), but 1.4-3x slower than `tile`
  there (`bench.py --sweep --sweep-set lookback`): a program's single tile leaves its
  loads unpipelined. (The earlier hand-off, which spun on a reduction over the channels'
  flags, gave wrong results at BD = 64 on an H100; this one has not, at BD 16 to 64.)
  Varlen batches use `tile`.

Backward: the adjoint of a scan is a reverse-time affine scan. With
S_t = F(S_{t-1}, u_t), J_t = dF/dS_{t-1} at step t and g_t the cotangent the
outputs of step t put on S_t,

    lam_t = g_t + J_{t+1}^T lam_{t+1},   lam_end = d_final,
    d u_t = (dF/du at (S_{t-1}, u_t))^T lam_t + (d outputs / d u)^T dy_t,
    d S_init = J_start^T lam_start.

J is block-diagonal over the groups (a linear state: the scalar A; a monoid of
k elements: the k x k Jacobian of its combine in the state operand, only its
structurally non-zero entries scanned), so the same kernels run it with the
affine-map combine (M1, g1), (M2, g2) -> (M2 M1, M2 g1 + g2), blocks in reverse
time. J_{t+1} and S_{t-1} come from loads shifted by one step. Every derivative
is taken symbolically on the IR (`derivative`), nothing is written per spec.
This is exact for any differentiable combine, so a monoid needs no fallback.

Saved for the backward: the states after each step, [B, T, H, D] float32, and
only when the call needs gradients (`call.requires_grad`). A state equal to an
output (`output y = x`) is taken from that output when the wrapper saves it
(`_SAVED_OUTPUTS`, `_WRAPPER_SAVES_OUTPUTS` in the template), so the first-order
forward moves a, b and y only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import jinja2

from .. import ir
from ..errors import ReccError
from ..primitives import PRIMITIVES
from ..resources import templates_dir
from ..tiles import described, launch_shape, reference_tiles, spec_key
from . import Lowered, literal

__all__ = ["lower_scan", "scan_form", "derivative", "ScanForm", "NotScannable", "VARIANTS"]


class NotScannable(ReccError):
    """The recurrence is outside what the scan strategy lowers; says why."""


# ---- the scan form of a recurrence -------------------------------------------------

@dataclass(frozen=True)
class LinearGroup:
    """x_t = coef * x_{t-1} + bias; coef and bias read inputs, params, consts only."""
    state: str
    coef: ir.Expr
    bias: ir.Expr

    @property
    def states(self) -> tuple:
        return (self.state,)


@dataclass(frozen=True)
class MonoidGroup:
    """states_t = combine(states_{t-1}, elements_t) (or combine(elements_t, states_{t-1})
    when `state_left` is False)."""
    monoid: ir.Monoid
    states: tuple
    elements: tuple              # Expr per monoid element, reading inputs/params/consts
    state_left: bool


@dataclass(frozen=True)
class ScanForm:
    dim: object                  # the channel dim of every state (name or fixed size)
    groups: tuple                # LinearGroup | MonoidGroup, in body order
    step: dict                   # state -> F(S_{t-1}, u_t): state Refs are previous values
    outputs: dict                # output -> expr: state Refs are values after the step


_STATE_PREV_PENDING = "pending_state"   # an output reading a state before its update


def scan_form(rec: ir.Recurrence) -> ScanForm:
    """Recognise the scan form of `rec`, or raise NotScannable saying which line is outside it."""
    if rec.topology != "sequence":
        raise NotScannable(f"{rec.name}: the scan strategy lowers sequences, not '{rec.topology}'")
    if not rec.states:
        raise NotScannable(f"{rec.name}: no state to scan")
    shapes = {s.shape for s in rec.states}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        listed = ", ".join(f"{s.name}[{', '.join(map(str, s.shape))}]" for s in rec.states)
        raise NotScannable(f"{rec.name}: the scan strategy needs every state to be a vector over one "
                           f"channel dim; states are {listed}")
    dim = next(iter(shapes))[0]
    names = {s.name for s in rec.states}

    prev_env, post_env = {}, {}       # let / state name -> expression
    for s in rec.states:
        prev_env[s.name] = ir.Ref(s.name, "state", s.shape)
        post_env[s.name] = ir.Ref(s.name, _STATE_PREV_PENDING, s.shape)
    step, groups, outputs = {}, [], {}

    def where(stmt) -> str:
        return f"{rec.file}:{stmt.pos}" if stmt.pos.line else rec.file

    for stmt in ir.unrolled(rec.body):
        if isinstance(stmt, ir.Let):
            prev_env[stmt.name] = _inline(stmt.expr, prev_env)
            post_env[stmt.name] = _inline(stmt.expr, post_env)
        elif isinstance(stmt, ir.Assign):
            x = stmt.target
            if x in step:
                raise NotScannable(f"{where(stmt)}: state '{x}' is assigned twice in one step")
            f = _inline(stmt.expr, prev_env)
            _check_elementwise(f, rec, dim, where(stmt))
            others = _state_refs(f) - {x}
            if others:
                raise NotScannable(f"{where(stmt)}: the update of '{x}' reads state '{sorted(others)[0]}': "
                                   f"coupled states are not elementwise-diagonal; use the recurrent strategy")
            split = affine_split(f, x)
            if split is None:
                raise NotScannable(f"{where(stmt)}: the update of '{x}' is not affine in '{x}' "
                                   f"(no parallel scan); use the recurrent strategy")
            groups.append(LinearGroup(x, *split))
            step[x] = f
            prev_env[x] = f
            post_env[x] = ir.Ref(x, "state", stmt.expr.shape)
        elif isinstance(stmt, ir.Combine):
            monoid = rec.monoid(stmt.monoid)
            targets = tuple(stmt.targets)
            for x in targets:
                if x in step:
                    raise NotScannable(f"{where(stmt)}: state '{x}' is assigned twice in one step")
            left = tuple(_inline(e, prev_env) for e in stmt.left)
            right = tuple(_inline(e, prev_env) for e in stmt.right)
            state_refs = tuple(ir.Ref(x, "state") for x in targets)
            if _same_refs(left, state_refs):
                state_left, elements = True, right
            elif _same_refs(right, state_refs):
                state_left, elements = False, left
            else:
                raise NotScannable(f"{where(stmt)}: a scan over '{monoid.name}' needs the states "
                                   f"({', '.join(targets)}) as one operand, in order")
            for e in elements:
                _check_elementwise(e, rec, dim, where(stmt))
                if _state_refs(e):
                    raise NotScannable(f"{where(stmt)}: the elements combined into ({', '.join(targets)}) "
                                       f"read state '{sorted(_state_refs(e))[0]}'")
            _check_monoid(monoid, rec)
            groups.append(MonoidGroup(monoid, targets, elements, state_left))
            a, b = (state_refs, elements) if state_left else (elements, state_refs)
            for x, fx in zip(targets, combine_exprs(monoid, a, b)):
                step[x] = fx
                prev_env[x] = fx
                post_env[x] = ir.Ref(x, "state")
        elif isinstance(stmt, ir.Emit):
            e = _inline(stmt.expr, post_env)
            _check_elementwise(e, rec, dim, where(stmt))
            pending = {n.name for n in ir.walk(e) if isinstance(n, ir.Ref) and n.kind == _STATE_PREV_PENDING}
            if pending:
                raise NotScannable(f"{where(stmt)}: output '{stmt.output}' reads state '{sorted(pending)[0]}' "
                                   f"before its update; the scan emits outputs from the state after the step")
            outputs[stmt.output] = e
        else:
            raise NotScannable(f"{where(stmt)}: unsupported statement for the scan strategy")
    missing = [s.name for s in rec.states if s.name not in step]
    if missing:
        raise NotScannable(f"{rec.name}: state '{missing[0]}' is never updated")
    for o in rec.outputs:
        if o.name not in outputs:
            raise NotScannable(f"{rec.name}: output '{o.name}' is never emitted")
        if tuple(o.shape) != (dim,):
            raise NotScannable(f"{rec.name}: output '{o.name}' must have the states' shape [{dim}]")
    return ScanForm(dim, tuple(groups), step, outputs)


def _same_refs(exprs: tuple, refs: tuple) -> bool:
    return len(exprs) == len(refs) and all(
        isinstance(e, ir.Ref) and e.kind == "state" and e.name == r.name for e, r in zip(exprs, refs))


def _state_refs(e: ir.Expr) -> set:
    return {n.name for n in ir.walk(e) if isinstance(n, ir.Ref) and n.kind == "state"}


def _inline(e: ir.Expr, env: dict) -> ir.Expr:
    """Replace let and state Refs by their expressions in `env`."""
    if isinstance(e, ir.Ref):
        if e.kind in ("let", "state") and e.name in env:
            return env[e.name]
        return e
    return _map_children(e, lambda c: _inline(c, env))


def _map_children(e: ir.Expr, fn) -> ir.Expr:
    from dataclasses import replace
    if isinstance(e, ir.Binary):
        return replace(e, lhs=fn(e.lhs), rhs=fn(e.rhs))
    if isinstance(e, ir.Unary):
        return replace(e, operand=fn(e.operand))
    if isinstance(e, ir.Call):
        return replace(e, args=tuple(fn(a) for a in e.args))
    if isinstance(e, ir.Index):
        return replace(e, base=fn(e.base), index=fn(e.index))
    if isinstance(e, ir.Tuple):
        return replace(e, items=tuple(fn(a) for a in e.items))
    return e


def _check_elementwise(e: ir.Expr, rec: ir.Recurrence, dim, where: str) -> None:
    for n in ir.walk(e):
        if isinstance(n, ir.Binary) and n.op == "@":
            raise NotScannable(f"{where}: '@' is not elementwise; the scan strategy lowers elementwise steps")
        if isinstance(n, ir.Unary) and n.op == "T":
            raise NotScannable(f"{where}: a transpose is not elementwise")
        if isinstance(n, (ir.Index, ir.Tuple, ir.Field)):
            raise NotScannable(f"{where}: indexing and tuples are not lowered by the scan strategy")
        if isinstance(n, ir.Call):
            prim = PRIMITIVES.get(n.fn)
            if prim is None or not prim.elementwise:
                raise NotScannable(f"{where}: '{n.fn}' is not elementwise; the scan strategy lowers elementwise steps")
        if isinstance(n, ir.Ref) and n.kind in ("input", "param"):
            shape = tuple(rec.decl(n.name).shape)
            if shape not in ((), (dim,)):
                raise NotScannable(f"{where}: {n.kind} '{n.name}' has shape [{', '.join(map(str, shape))}]; "
                                   f"the scan strategy reads scalars or vectors over [{dim}]")


def _check_monoid(monoid: ir.Monoid, rec: ir.Recurrence) -> None:
    for stmt in monoid.body:
        for n in ir.walk(stmt.expr):
            if isinstance(n, ir.Ref) and n.kind in ("const", "dim", "input", "param", "state"):
                raise NotScannable(f"{rec.file}:{stmt.pos}: the combine of '{monoid.name}' reads '{n.name}'; "
                                   f"the scan strategy emits combines over their operands and numbers only")
            if isinstance(n, ir.Call) and not PRIMITIVES[n.fn].elementwise:
                raise NotScannable(f"{rec.file}:{stmt.pos}: '{n.fn}' in a combine is not elementwise")
            if isinstance(n, ir.Num) and math.isnan(n.value):
                raise NotScannable(f"{rec.file}:{stmt.pos}: NaN in a combine")


def combine_exprs(monoid: ir.Monoid, left: tuple, right: tuple) -> tuple:
    """The monoid's combine of two tuples of expressions, inlined: one expression per element."""
    operands = {monoid.left: dict(zip(monoid.elements, left)), monoid.right: dict(zip(monoid.elements, right))}
    env = {}

    def sub(e):
        if isinstance(e, ir.Field):
            return operands[e.operand][e.name]
        if isinstance(e, ir.Ref) and e.kind in ("element", "let") and e.name in env:
            return env[e.name]
        return _map_children(e, sub)

    for stmt in monoid.body:
        env[stmt.name if isinstance(stmt, ir.Let) else stmt.target] = sub(stmt.expr)
    return tuple(env[el] for el in monoid.elements)


# ---- building and differentiating expressions (shapes are not tracked) -------------

def num(v: float) -> ir.Num:
    return ir.Num(float(v))


def _is(e, v) -> bool:
    return isinstance(e, ir.Num) and e.value == v


def add(a, b):
    if isinstance(a, ir.Num) and isinstance(b, ir.Num):
        return num(a.value + b.value)
    if _is(a, 0.0):
        return b
    if _is(b, 0.0):
        return a
    if isinstance(b, ir.Unary) and b.op == "-":
        return sub(a, b.operand)
    return ir.Binary("+", a, b)


def sub(a, b):
    if isinstance(a, ir.Num) and isinstance(b, ir.Num):
        return num(a.value - b.value)
    if _is(b, 0.0):
        return a
    if _is(a, 0.0):
        return neg(b)
    return ir.Binary("-", a, b)


def mul(a, b):
    if isinstance(a, ir.Num) and isinstance(b, ir.Num):
        return num(a.value * b.value)
    if _is(a, 0.0) or _is(b, 0.0):
        return num(0.0)
    if _is(a, 1.0):
        return b
    if _is(b, 1.0):
        return a
    if _is(a, -1.0):
        return neg(b)
    if _is(b, -1.0):
        return neg(a)
    return ir.Binary("*", a, b)


def div(a, b):
    if _is(a, 0.0):
        return num(0.0)
    if _is(b, 1.0):
        return a
    return ir.Binary("/", a, b)


def neg(a):
    if isinstance(a, ir.Num):
        return num(-a.value)
    if isinstance(a, ir.Unary) and a.op == "-":
        return a.operand
    return ir.Unary("-", a)


def call(fn: str, *args):
    return ir.Call(fn, tuple(args))


def is_zero(e) -> bool:
    return _is(e, 0.0)


def _mentions(e: ir.Expr, key: tuple) -> bool:
    return any(isinstance(n, ir.Ref) and (n.kind, n.name) == key for n in ir.walk(e))


def affine_split(e: ir.Expr, x: str):
    """(A, B) with e == A * x + B and A, B free of state x; None when e is not affine in x."""
    key = ("state", x)
    if not _mentions(e, key):
        return num(0.0), e
    if isinstance(e, ir.Ref):
        return num(1.0), num(0.0)
    if isinstance(e, ir.Unary) and e.op == "-":
        s = affine_split(e.operand, x)
        return None if s is None else (neg(s[0]), neg(s[1]))
    if isinstance(e, ir.Binary) and e.op in "+-":
        l, r = affine_split(e.lhs, x), affine_split(e.rhs, x)
        if l is None or r is None:
            return None
        op = add if e.op == "+" else sub
        return op(l[0], r[0]), op(l[1], r[1])
    if isinstance(e, ir.Binary) and e.op == "*":
        if not _mentions(e.rhs, key):
            s = affine_split(e.lhs, x)
            return None if s is None else (mul(s[0], e.rhs), mul(s[1], e.rhs))
        if not _mentions(e.lhs, key):
            s = affine_split(e.rhs, x)
            return None if s is None else (mul(e.lhs, s[0]), mul(e.lhs, s[1]))
        return None
    if isinstance(e, ir.Binary) and e.op == "/" and not _mentions(e.rhs, key):
        s = affine_split(e.lhs, x)
        return None if s is None else (div(s[0], e.rhs), div(s[1], e.rhs))
    return None


def _step(u):
    return call("step", u)


def _sigmoid(u):
    return call("sigmoid", u)


# d f(u) / d u, as an expression of u (and of the call itself, `out`)
_UNARY_DERIVATIVE = {
    "exp": lambda u, out: out,
    "log": lambda u, out: div(num(1.0), u),
    "sigmoid": lambda u, out: mul(out, sub(num(1.0), out)),
    "logsigmoid": lambda u, out: _sigmoid(neg(u)),
    "tanh": lambda u, out: sub(num(1.0), mul(out, out)),
    "softplus": lambda u, out: _sigmoid(u),
    "relu": lambda u, out: _step(u),
    "silu": lambda u, out: mul(_sigmoid(u), add(num(1.0), mul(u, sub(num(1.0), _sigmoid(u))))),
    "sqrt": lambda u, out: div(num(0.5), out),
    "abs": lambda u, out: sub(_step(u), _step(neg(u))),
    "step": lambda u, out: num(0.0),
}


def derivative(e: ir.Expr, key: tuple) -> ir.Expr:
    """d e / d v for the Ref v = (kind, name), elementwise; an IR expression (0 folded)."""
    if not _mentions(e, key):
        return num(0.0)
    if isinstance(e, ir.Ref):
        return num(1.0)
    if isinstance(e, ir.Unary) and e.op == "-":
        return neg(derivative(e.operand, key))
    if isinstance(e, ir.Binary):
        a, b = e.lhs, e.rhs
        da, db = derivative(a, key), derivative(b, key)
        if e.op == "+":
            return add(da, db)
        if e.op == "-":
            return sub(da, db)
        if e.op == "*":
            return add(mul(da, b), mul(a, db))
        if e.op == "/":
            return sub(div(da, b), div(mul(a, db), mul(b, b)))
        if e.op == "**":
            if isinstance(b, ir.Num):
                return mul(mul(b, ir.Binary("**", a, num(b.value - 1.0))), da)
            # a ** b = exp(b log a)
            return mul(e, add(mul(db, call("log", a)), div(mul(b, da), a)))
    if isinstance(e, ir.Call):
        if e.fn in ("max", "min"):
            a, b = e.args
            pick_a = _step(sub(a, b)) if e.fn == "max" else _step(sub(b, a))
            return add(mul(pick_a, derivative(a, key)), mul(sub(num(1.0), pick_a), derivative(b, key)))
        if e.fn in _UNARY_DERIVATIVE:
            (u,) = e.args
            return mul(_UNARY_DERIVATIVE[e.fn](u, e), derivative(u, key))
    raise NotScannable(f"cannot differentiate {type(e).__name__} '{getattr(e, 'fn', getattr(e, 'op', ''))}' "
                       f"elementwise")


# ---- emitting Triton expressions ----------------------------------------------------

@dataclass
class Emitter:
    """IR expression -> Triton expression text. `names` maps (kind, name) of a Ref
    (and ('field', operand, name) inside a combine) to a variable; `inf` is the
    name of the module's infinity constant."""
    names: dict
    inf: str
    used: set = field(default_factory=set)

    def __call__(self, e: ir.Expr) -> str:
        return self.emit(e)

    def number(self, v: float) -> str:
        if math.isinf(v):
            return self.inf if v > 0 else f"(-{self.inf})"
        if math.isnan(v):
            raise NotScannable("NaN in an expression")
        return repr(float(v))

    def ref(self, key) -> str:
        if key not in self.names:
            raise NotScannable(f"no value for {key[0]} '{key[-1]}' where it is read")
        self.used.add(key)
        return self.names[key]

    def emit(self, e: ir.Expr) -> str:
        ev = self.emit
        if isinstance(e, ir.Num):
            return self.number(e.value)
        if isinstance(e, ir.Ref):
            return self.ref((e.kind, e.name))
        if isinstance(e, ir.Field):
            return self.ref(("field", e.operand, e.name))
        if isinstance(e, ir.Unary) and e.op == "-":
            return f"(-{ev(e.operand)})"
        if isinstance(e, ir.Binary):
            if e.op in "+-*/":
                return f"({ev(e.lhs)} {e.op} {ev(e.rhs)})"
            if e.op == "**":
                return self.power(e.lhs, e.rhs)
        if isinstance(e, ir.Call):
            args = [ev(a) for a in e.args]
            return _CALLS[e.fn](*args)
        raise NotScannable(f"cannot emit {type(e).__name__} in an elementwise kernel")

    def power(self, base: ir.Expr, exponent: ir.Expr) -> str:
        a = self.emit(base)
        if isinstance(exponent, ir.Num) and exponent.value == int(exponent.value) and abs(exponent.value) <= 4:
            n = int(exponent.value)
            if n == 0:
                return f"({a} * 0.0 + 1.0)"
            body = " * ".join([a] * abs(n))
            return f"({body})" if n > 0 else f"(1.0 / ({body}))"
        if isinstance(exponent, ir.Num) and exponent.value == 0.5:
            return f"tl.sqrt({a})"
        return f"tl.exp({self.emit(exponent)} * tl.log({a}))"


_CALLS = {
    "exp": lambda x: f"tl.exp({x})",
    "log": lambda x: f"tl.log({x})",
    "sigmoid": lambda x: f"(1.0 / (1.0 + tl.exp(-({x}))))",
    "logsigmoid": lambda x: f"(tl.minimum({x}, 0.0) - tl.log(1.0 + tl.exp(-tl.abs({x}))))",
    "tanh": lambda x: f"(2.0 / (1.0 + tl.exp(-2.0 * ({x}))) - 1.0)",
    "softplus": lambda x: f"(tl.maximum({x}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({x}))))",
    "relu": lambda x: f"tl.maximum({x}, 0.0)",
    "silu": lambda x: f"(({x}) / (1.0 + tl.exp(-({x}))))",
    "sqrt": lambda x: f"tl.sqrt({x})",
    "abs": lambda x: f"tl.abs({x})",
    "step": lambda x: f"tl.where(({x}) > 0.0, 1.0, 0.0)",
    "max": lambda x, y: f"tl.maximum({x}, {y})",
    "min": lambda x, y: f"tl.minimum({x}, {y})",
}


# ---- lowering ---------------------------------------------------------------------------

VARIANTS = ("tile", "chunks", "lookback")


def lower_scan(rec: ir.Recurrence, *, prefetch: bool = True, loop_stages: int | None = None,
               tiles: dict | None = None) -> Lowered:
    """Lower a scan-form recurrence (see `scan_form`) to Triton forward and backward kernels.

    `prefetch` (tile kernels) loads the next block's tiles before scanning the current one
    (register double-buffering); `loop_stages` asks Triton's pipeliner for that many stages on
    the block loop (`tl.range(..., num_stages=...)`; tile kernels only: the chunks kernels'
    unrolled loads would all be buffered in shared memory).

    Tiles: the generated host code asks the solver (`recc.tiles.launch_tiles`, family `scan`:
    BT, BD, num_warps of the `tile` kernels, templates/scan.constraints) at each call shape;
    `tiles` overrides it (rendered into `_SCAN_TILES`, which a test or benchmark may also
    update): `variant` ("tile", "chunks" or "lookback", see the module docstring), BT, BD,
    num_warps; for `chunks`, R steps per chunk and W chunks per block (default: W fills the
    warps, `fill`, and R = BT // W)."""
    form = scan_form(rec)
    overrides = dict(tiles or {})
    ctx = _Context(rec, form, prefetch, loop_stages, overrides)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    source = env.get_template("scan.py.jinja").render(**ctx.values())
    kinds = ", ".join(f"{'linear' if isinstance(g, LinearGroup) else g.monoid.name}({', '.join(g.states)})"
                      for g in form.groups)
    variant = overrides.get("variant", "tile")
    if variant == "chunks":
        block = "blocks of W chunks x R steps (sequential in a thread, parallel scan across chunks)"
    elif variant == "lookback":
        block = ("a tl.associative_scan over blocks of BT steps, a program per block "
                 "(carry passed between programs; varlen: blocks walked in one program)")
    else:
        block = "a tl.associative_scan over blocks of BT steps"
    example = described(reference_tiles(rec, "scan"))
    why = (f"elementwise states over [{form.dim}] ({kinds}): {block}, carry across blocks; BD channels per "
           f"program; BT, BD, num_warps from the solver per call (H100, main shape: {example})")
    return Lowered("scan", source, why, {"chosen": "per call (recc.tiles)", **overrides,
                                         "prefetch": prefetch, "loop_stages": loop_stages})


class _Context:
    """Everything the scan template needs, computed from the scan form."""

    def __init__(self, rec, form: ScanForm, prefetch, loop_stages, tiles):
        self.rec, self.form = rec, form
        self.prefetch, self.loop_stages, self.tiles = prefetch, loop_stages, tiles
        self.name = rec.name
        self.inf = f"_{rec.name}_INF"
        self.states = [s.name for s in rec.states]
        self.inputs = [d.name for d in rec.inputs]
        self.params = [d.name for d in rec.params]
        self.outputs = [o.name for o in rec.outputs]
        self.vector = {d.name: tuple(d.shape) != () for d in rec.inputs + rec.params}

    # -- names of values inside kernels
    def names(self, state_var: str, input_var: str) -> dict:
        n = {}
        for s in self.states:
            n[("state", s)] = state_var.format(s)
        for u in self.inputs:
            n[("input", u)] = input_var.format(u)
        for p in self.params:
            n[("param", p)] = f"p_{p}"
        for c in self.rec.consts:
            n[("const", c.name)] = f"c_{c.name}"
        for d in self.rec.dims:
            n[("dim", d.name)] = f"n_{d.name}"
        return n

    def emitter(self, state_var="s_{}", input_var="u_{}") -> Emitter:
        return Emitter(self.names(state_var, input_var), self.inf)

    def full(self, e: ir.Expr, code: str) -> str:
        """`code` (the emission of `e`) as a full tile of the block ([BT, BD] or [W, BD]): a state
        or a vector input spans both axes; a scalar input spans steps only, a vector param
        channels only; numbers and consts neither."""
        steps = chans = False
        for n in ir.walk(e):
            if isinstance(n, ir.Ref) and n.kind == "state":
                steps = chans = True
            elif isinstance(n, ir.Ref) and n.kind in ("input", "param"):
                steps |= n.kind == "input"
                chans |= self.vector[n.name]
        return code if steps and chans else f"({code}) + zero"

    def values(self) -> dict:
        form, rec = self.form, self.rec
        # saved states: an output that is exactly a state stands for it
        alias = {}
        for o in self.outputs:
            e = form.outputs[o]
            if isinstance(e, ir.Ref) and e.kind == "state" and e.name not in alias:
                alias[e.name] = o
        fwd = self.forward()
        bwd = self.backward()
        # saved states, those equal to an output first (see _SAVED_OUTPUTS in the template)
        saved = [s for s in self.states if s in bwd["states_read"] and s in alias]
        saved += [s for s in self.states if s in bwd["states_read"] and s not in alias]
        inits = {s.name: s.init for s in rec.states}
        em = self.emitter()
        combines = self.combine_functions()
        uses_inf = (any(math.isinf(v) for v in inits.values()) or fwd["uses_inf"] or bwd["uses_inf"]
                    or any(f["uses_inf"] for f in combines))
        fwd_args = ([f"in_{u}" for u in self.inputs] + [f"pr_{p}" for p in self.params]
                    + [f"out_{o}" for o in self.outputs] + [f"st_{s}" for s in saved]
                    + [a for s in self.states for a in (f"h0_{s}", f"ht_{s}")])
        bwd_args = ([f"in_{u}" for u in self.inputs] + [f"pr_{p}" for p in self.params]
                    + [f"sv_{s}" for s in saved] + [f"gy_{o}" for o in self.outputs]
                    + [a for s in self.states for a in (f"h0_{s}", f"dht_{s}", f"dh0_{s}")]
                    + [f"du_{u}" for u, _, _ in bwd["grads"]] + [f"dp_{p}" for p, _, _ in bwd["pgrads"]])
        scalar_args = [f"c_{c.name}" for c in rec.consts] + [f"n_{d.name}" for d in rec.dims]
        return dict(
            fwd_args=fwd_args, bwd_args=bwd_args, scalar_args=scalar_args,
            name=self.name, inf=self.inf, uses_inf=uses_inf,
            dim=repr(form.dim), tiles=literal(self.tiles, {"variant": VARIANTS}), prefetch=self.prefetch,
            launch_shape=literal(launch_shape(rec, "scan")[1]), spec_key=spec_key(rec),
            loop_header=(f"tl.range(0, nblk, num_stages={int(self.loop_stages)})" if self.loop_stages
                         else "range(0, nblk)"),
            inputs=self.inputs, params=self.params, outputs=self.outputs, states=self.states,
            vector=self.vector,
            consts=[c.name for c in rec.consts], dims=[d.name for d in rec.dims],
            init={s: em.number(v) for s, v in inits.items()},
            init_py={s: repr(float(v)) for s, v in inits.items()},
            alias=alias, saved=saved,
            saved_outputs=[alias[s] for s in saved if s in alias],
            fwd=fwd, bwd=bwd,
            combines=combines,
            spec_file=rec.file,
        )

    # -- combine functions
    def combine_functions(self) -> list:
        """@triton.jit functions: each user monoid's combine, the forward scan's combine over all
        groups, and the backward scan's combine (affine maps with block-sparse matrices)."""
        out = []
        for g in self.form.groups:
            if isinstance(g, MonoidGroup) and g.monoid.name not in [f["monoid"] for f in out]:
                out.append(self.monoid_function(g.monoid))
        return out

    def monoid_function(self, m: ir.Monoid) -> dict:
        names = {("field", m.left, e): f"a_{e}" for e in m.elements}
        names.update({("field", m.right, e): f"b_{e}" for e in m.elements})
        lines = []
        for stmt in m.body:
            em = Emitter(dict(names), self.inf)
            target = stmt.name if isinstance(stmt, ir.Let) else stmt.target
            code = em(stmt.expr)
            var = f"l_{target}" if isinstance(stmt, ir.Let) else f"e_{target}"
            lines.append(f"{var} = {code}")
            if isinstance(stmt, ir.Let):
                names[("let", target)] = var
            else:
                names[("element", target)] = var
        args = [f"a_{e}" for e in m.elements] + [f"b_{e}" for e in m.elements]
        return dict(monoid=m.name, fn=f"_{self.name}_{m.name}", args=args, body=lines,
                    result=", ".join(f"e_{e}" for e in m.elements),
                    uses_inf=any(self.inf in line for line in lines))

    def forward(self) -> dict:
        """The forward block: scan elements per group, the combine, the states after the
        carry, the outputs."""
        form = self.form
        em = self.emitter(state_var="s_{}", input_var="u_{}")
        elements, combine_left, combine_right, combine_body, results = [], [], [], [], []
        apply, carries, state_vars = [], [], {}
        k = 0
        for g in form.groups:
            if isinstance(g, LinearGroup):
                a, b = f"e{k}", f"e{k + 1}"
                elements += [(a, self.full(g.coef, em(g.coef))), (b, self.full(g.bias, em(g.bias)))]
                la, lb, ra, rb = f"l{k}", f"l{k + 1}", f"r{k}", f"r{k + 1}"
                combine_left += [la, lb]
                combine_right += [ra, rb]
                results += [f"{la} * {ra}", f"{ra} * {lb} + {rb}"]
                apply.append(f"s_{g.state} = {a} * h_{g.state}[None, :] + {b}")
                carries += ["1.0", f"h_{g.state}[None, :]"]      # the map x -> 1 * x + carry
                state_vars[g.state] = f"a{k + 1}"
                k += 2
            else:
                n = len(g.states)
                vars_ = [f"e{k + i}" for i in range(n)]
                elements += [(v, self.full(e, em(e))) for v, e in zip(vars_, g.elements)]
                ls = [f"l{k + i}" for i in range(n)]
                rs = [f"r{k + i}" for i in range(n)]
                combine_left += ls
                combine_right += rs
                fn = f"_{self.name}_{g.monoid.name}"
                tmp = [f"t{k + i}" for i in range(n)]
                # scan order is time order; for a right fold combine(e_t, S_{t-1}) swap the operands
                first, second = (ls, rs) if g.state_left else (rs, ls)
                combine_body.append(f"{', '.join(tmp)} = {fn}({', '.join(first + second)})")
                results += tmp
                carry = [f"h_{s}[None, :]" for s in g.states]
                args = carry + vars_ if g.state_left else vars_ + carry
                apply.append(f"{', '.join('s_' + s for s in g.states)} = {fn}({', '.join(args)})")
                carries += [f"h_{s}[None, :]" for s in g.states]
                state_vars.update({s: f"a{k + i}" for i, s in enumerate(g.states)})
                k += n
        outputs = [(o, self.full(form.outputs[o], em(form.outputs[o]))) for o in self.outputs]
        return dict(
            elements=elements, scan_vars=[v for v, _ in elements],
            combine_args=combine_left + combine_right, combine_body=combine_body, combine_result=results,
            apply=apply, outputs=outputs, state_vars=state_vars,
            acc=[f"a{i}" for i in range(len(elements))],
            acc_carries=[(f"a{i}", c) for i, c in enumerate(carries)],
            loads=self.loads(em),
            uses_inf=self.inf in "".join(c for _, c in elements) + "".join(c for _, c in outputs),
        )

    def loads(self, em: Emitter, shift: int = 0) -> list:
        """A load per input the emitted code read: var, pointer, [BT, BD] or [BT] per step, row shift."""
        return [dict(var=em.names[k], ptr=f"in_{k[1]}", vector=self.vector[k[1]], shift=shift, h0=None)
                for k in sorted(em.used) if k[0] == "input"]

    def backward(self) -> dict:
        form, states = self.form, self.states
        pairs = [(i, j) for i in states for j in states]
        # J[i][j] = dF_i / dS_j (previous values); block-diagonal over the groups
        jac = {(i, j): derivative(form.step[i], ("state", j)) for i, j in pairs}
        groups = []
        for g in form.groups:
            idx = list(g.states)
            pattern = {(j, i) for i in idx for j in idx if not is_zero(jac[(i, j)])} | {(i, i) for i in idx}
            pattern = _product_closure(pattern, idx)
            groups.append((idx, sorted(pattern, key=lambda p: (idx.index(p[0]), idx.index(p[1])))))
        # g_t: cotangent on S_t from the outputs of step t
        direct = {s: [(o, derivative(form.outputs[o], ("state", s))) for o in self.outputs] for s in states}
        # emitters for the three contexts
        em_next = self.emitter(state_var="s_{}", input_var="un_{}")     # J_{t+1}: (S_t, u_{t+1})
        em_here = self.emitter(state_var="sp_{}", input_var="u_{}")     # dF/du: (S_{t-1}, u_t)
        em_out = self.emitter(state_var="s_{}", input_var="u_{}")      # outputs: (S_t, u_t)
        em_g = self.emitter(state_var="s_{}", input_var="u_{}")        # the same, for g_t only
        em_init = self.emitter(state_var="sp_{}", input_var="u_{}")     # J_start: (S_init, u_start)

        # scan elements in reverse time: M = J_{t+1}^T (identity past the end), g
        elements, m_entries = [], []
        k = 0
        for idx, pattern in groups:
            for (r, c) in pattern:        # M[r][c] = J[c][r]
                code = em_next(jac[(c, r)])
                ident = "1.0" if r == c else "0.0"
                elements.append((f"e{k}", f"tl.where(nxt, {self.full(jac[(c, r)], code)}, {ident})"))
                m_entries.append((r, c, f"e{k}"))
                k += 1
        g_terms = {}
        for s in states:
            terms = [f"dy_{o} * ({em_g(d)})" if not _is(d, 1.0) else f"dy_{o}"
                     for o, d in direct[s] if not is_zero(d)]
            g_terms[s] = " + ".join(terms) if terms else "zero"
        g_vars = {}
        for s in states:
            g_vars[s] = f"e{k}"
            elements.append((f"e{k}", g_terms[s]))      # dy_* tiles: [BT, BD]
            k += 1

        # the backward combine: per group, (M1, g1), (M2, g2) -> (M2 M1, M2 g1 + g2)
        n_el = len(elements)
        left = [f"l{i}" for i in range(n_el)]
        right = [f"r{i}" for i in range(n_el)]
        m_var = {(r, c): int(v[1:]) for r, c, v in m_entries}
        g_index = {s: int(v[1:]) for s, v in g_vars.items()}
        result = [None] * n_el
        for idx, pattern in groups:
            pat = set(pattern)
            for (r, c) in pattern:
                terms = [f"r{m_var[(r, q)]} * l{m_var[(q, c)]}" for q in idx if (r, q) in pat and (q, c) in pat]
                result[m_var[(r, c)]] = " + ".join(terms)
            for r in idx:
                terms = [f"r{m_var[(r, q)]} * l{g_index[q]}" for q in idx if (r, q) in pat]
                result[g_index[r]] = " + ".join(terms + [f"r{g_index[r]}"])
        # the chunk kernel: lam_t is the g part of the running map; a chunk before the first: the carry
        lam_chunks = [f"lt_{s} = a{g_index[s]}" for s in states]
        carries = [None] * n_el
        for (r, c), i in m_var.items():
            carries[i] = "1.0" if r == c else "0.0"
        for s, i in g_index.items():
            carries[i] = f"lam_{s}[None, :]"
        # lam after the carry
        lam = []
        for idx, pattern in groups:
            pat = set(pattern)
            for r in idx:
                terms = [f"e{m_var[(r, q)]} * lam_{q}[None, :]" for q in idx if (r, q) in pat]
                lam.append(f"lt_{r} = {' + '.join(terms)} + e{g_index[r]}")
        # gradients of inputs: dF/du at (S_{t-1}, u_t) against lam_t, plus the outputs' dy
        def gradients(kind, names):
            """(name, expression, vector?) of d name: dF/d name against lam_t, plus the outputs' dy."""
            out = []
            for u in names:
                terms = []
                for s in states:
                    d = derivative(form.step[s], (kind, u))
                    if not is_zero(d):
                        terms.append(f"lt_{s}" if _is(d, 1.0) else f"lt_{s} * ({em_here(d)})")
                for o in self.outputs:
                    d = derivative(form.outputs[o], (kind, u))
                    if not is_zero(d):
                        terms.append(f"dy_{o}" if _is(d, 1.0) else f"dy_{o} * ({em_out(d)})")
                if terms:
                    out.append((u, " + ".join(terms), self.vector[u]))
            return out

        grads = gradients("input", self.inputs)
        pgrads = gradients("param", self.params)
        # d S_init[j] = sum_i J_start[i][j] lam_start[i]
        dh0 = []
        for idx, pattern in groups:
            for j in idx:
                terms = []
                for i in idx:
                    d = jac[(i, j)]
                    if not is_zero(d):
                        terms.append(f"lam_{i}[None, :]" if _is(d, 1.0)
                                     else f"lam_{i}[None, :] * ({em_init(d)})")
                dh0.append((j, " + ".join(terms) if terms else "zero"))

        def used(em, kind):
            return [k[1] for k in sorted(em.used) if k[0] == kind]

        # loads per block: inputs at t and t+1, states S_t and S_{t-1} (saved), output cotangents
        here = self.loads(em_here) + [l for l in self.loads(em_out) + self.loads(em_g) if l not in self.loads(em_here)]
        here = [l for i, l in enumerate(here) if l not in here[:i]]
        cur = sorted(set(used(em_next, "state")) | set(used(em_out, "state")) | set(used(em_g, "state")),
                     key=states.index)
        prev = sorted(set(used(em_here, "state")), key=states.index)
        state_loads = [dict(var=f"s_{s}", ptr=f"sv_{s}", vector=True, shift=0, h0=None) for s in cur]
        dy_loads = [dict(var=f"dy_{o}", ptr=f"gy_{o}", vector=True, shift=0, h0=None) for o in self.outputs]
        loads = here + self.loads(em_next, shift=1) + state_loads
        loads += [dict(var=f"sp_{s}", ptr=f"sv_{s}", vector=True, shift=-1, h0=f"hp_{s}") for s in prev]
        loads += dy_loads
        # what the scan elements alone read (the chunk kernel's first pass)
        element_states = set(used(em_next, "state")) | set(used(em_g, "state"))
        loads_elements = self.loads(em_g) + self.loads(em_next, shift=1) + \
            [l for l in state_loads if l["var"][2:] in element_states] + dy_loads
        codes = "".join(c for _, c in elements) + "".join(c for _, c, _ in grads + pgrads) + \
            "".join(c for _, c in dh0)
        return dict(
            elements=elements, scan_vars=[v for v, _ in elements],
            combine_args=left + right, combine_result=result,
            lam=lam, grads=grads, pgrads=pgrads, dh0=dh0, lam_chunks=lam_chunks,
            acc=[f"a{i}" for i in range(n_el)], acc_carries=[(f"a{i}", c) for i, c in enumerate(carries)],
            loads=loads, loads_elements=loads_elements, loads_init=self.loads(em_init),
            states_read=set(cur) | set(prev),
            uses_inf=self.inf in codes,
        )


def _product_closure(pattern: set, idx: list) -> set:
    """The sparsity pattern of all products of matrices with `pattern` (and the identity)."""
    pat = set(pattern)
    while True:
        new = {(r, c) for (r, q) in pat for (q2, c) in pat if q == q2} | pat
        if new == pat:
            return pat
        pat = new
