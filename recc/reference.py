"""The sequential reference: the oracle every kernel is checked against.

It reads only the IR and runs the step body in a plain Python loop over time,
one sequence batch at a time, in float64 on the CPU by default. Values are
torch tensors laid out `[N, H, *shape]` (params `[1, H, *shape]`), so every
primitive sees two batch axes in front of its value's own shape.

It is differentiable: torch.autograd through it gives the exact gradients the
analysis' adjoint recurrences are checked against.
"""
from __future__ import annotations

import torch

from . import ir
from .primitives import BATCH, PRIMITIVES
from .signature import Bound, bind, pack_result


def reference(rec: ir.Recurrence, *args, dtype=torch.float64, device="cpu", **kwargs):
    """Run `rec` sequentially with the op calling convention (see `recc.signature`).
    Computes in `dtype` on `device`; returns results in that dtype."""
    call = bind(rec, args, kwargs)
    outputs, final = run(call, dtype=dtype, device=device)
    return pack_result(rec, outputs, final if call.output_final_state else None)


def run(call: Bound, dtype=torch.float64, device="cpu"):
    """Evaluate a bound call: (outputs by name [B, T, H, *shape], final states by name [N, H, *shape])."""
    rec = call.rec
    cast = lambda t: t.to(device=device, dtype=dtype)
    params = {k: cast(v).unsqueeze(0) for k, v in call.params.items()}
    shapes = {s.name: tuple(call.dims[d] if isinstance(d, str) else d for d in s.shape) for s in rec.states}
    per_output = {o.name: [] for o in rec.outputs}
    finals = {s.name: [] for s in rec.states}

    # sequences of one length run together; a packed batch runs one sequence at a time
    groups = [call.sequences] if call.cu_seqlens is None else [[seq] for seq in call.sequences]
    seq_index = 0
    for group in groups:
        rows = [b for b, _, _ in group]
        start, end = group[0][1], group[0][2]
        n = len(group)
        states = {}
        for s in rec.states:
            if call.initial_state is not None:
                states[s.name] = cast(call.initial_state[s.name][seq_index:seq_index + n])
            else:
                states[s.name] = torch.full((n, call.H) + shapes[s.name], s.init, dtype=dtype, device=device)
        steps = {o.name: [] for o in rec.outputs}
        for t in range(start, end):
            env = dict(params)
            env.update({k: cast(v[rows, t]) for k, v in call.inputs.items()})
            env.update(states)
            emitted = _step(rec, rec.body, env, call)
            for s in rec.states:
                states[s.name] = env[s.name]
            for name, value in emitted.items():
                steps[name].append(value)
        for o in rec.outputs:
            full = (n, call.H) + tuple(call.dims[d] if isinstance(d, str) else d for d in o.shape)
            if steps[o.name]:
                per_output[o.name].append(torch.stack([v.expand(full) for v in steps[o.name]], dim=1))
            else:
                per_output[o.name].append(torch.zeros((n, 0) + full[1:], dtype=dtype, device=device))
        for s in rec.states:
            finals[s.name].append(states[s.name])
        seq_index += n

    concat_axis = 0 if call.cu_seqlens is None else 1
    outputs = {k: torch.cat(v, dim=concat_axis) for k, v in per_output.items()}
    final = {k: torch.cat(v, dim=0) for k, v in finals.items()}
    return outputs, final


def _step(rec: ir.Recurrence, body: tuple, env: dict, call: Bound) -> dict:
    """Run one step's statements, updating env in place; return emitted outputs."""
    emitted = {}
    for stmt in body:
        if isinstance(stmt, ir.Let):
            env[stmt.name] = _eval(stmt.expr, env, call)
        elif isinstance(stmt, ir.Assign):
            env[stmt.target] = _eval(stmt.expr, env, call)
        elif isinstance(stmt, ir.Emit):
            emitted[stmt.output] = _eval(stmt.expr, env, call)
        elif isinstance(stmt, ir.Combine):
            monoid = rec.monoid(stmt.monoid)
            ranks = [len(rec.decl(t).shape) for t in stmt.targets]
            left = [_lift(_eval(e, env, call), r) for e, r in zip(stmt.left, ranks)]
            right = [_lift(_eval(e, env, call), r) for e, r in zip(stmt.right, ranks)]
            result = combine(monoid, left, right, call)
            env.update(zip(stmt.targets, result))
        elif isinstance(stmt, ir.For):
            for j in range(stmt.start, stmt.stop):
                env[stmt.var] = j
                emitted.update(_step(rec, stmt.body, env, call))
        else:
            raise TypeError(f"unknown statement {stmt!r}")
    return emitted


def combine(monoid: ir.Monoid, left: list, right: list, call: Bound | None = None) -> list:
    """Apply a monoid's combine elementwise to two tuples of tensors of one layout
    (`call` supplies const values, if the combine reads any)."""
    env = {}
    operands = {monoid.left: dict(zip(monoid.elements, left)), monoid.right: dict(zip(monoid.elements, right))}
    for stmt in monoid.body:
        target = stmt.name if isinstance(stmt, ir.Let) else stmt.target
        env[target] = _eval(stmt.expr, env, call, operands)
    return [env[e] for e in monoid.elements]


def _rank(x: torch.Tensor) -> int:
    return x.dim() - BATCH


def _lift(x, rank: int) -> torch.Tensor:
    """Append unit axes so a scalar [N, H] broadcasts against a value of `rank`."""
    return x.reshape(tuple(x.shape) + (1,) * (rank - _rank(x)))


def _eval(expr: ir.Expr, env: dict, call: Bound | None, operands: dict | None = None) -> torch.Tensor:
    ev = lambda e: _eval(e, env, call, operands)
    dtype = next((v.dtype for v in env.values() if isinstance(v, torch.Tensor)), torch.float64)
    if isinstance(expr, ir.Num):
        return torch.full((1, 1), expr.value, dtype=dtype)
    if isinstance(expr, ir.Field):
        return operands[expr.operand][expr.name]
    if isinstance(expr, ir.Ref):
        if expr.kind == "const":
            return torch.full((1, 1), call.consts[expr.name], dtype=dtype)
        if expr.kind == "dim":
            return torch.full((1, 1), float(call.dims[expr.name]), dtype=dtype)
        return env[expr.name]
    if isinstance(expr, ir.Unary):
        x = ev(expr.operand)
        return -x if expr.op == "-" else x.transpose(-1, -2)
    if isinstance(expr, ir.Index):
        i = int(expr.index.value) if isinstance(expr.index, ir.Num) else env[expr.index.name]
        return ev(expr.base).select(BATCH, i)
    if isinstance(expr, ir.Call):
        args = [ev(a) for a in expr.args]
        prim = PRIMITIVES[expr.fn]
        if prim.elementwise and len(args) == 2:
            rank = max(_rank(a) for a in args)
            args = [_lift(a, rank) for a in args]
        return prim.torch(*args)
    if isinstance(expr, ir.Binary):
        a, b = ev(expr.lhs), ev(expr.rhs)
        if expr.op == "@":
            return _matmul(a, b)
        rank = max(_rank(a), _rank(b))
        a, b = _lift(a, rank), _lift(b, rank)
        if expr.op == "+":
            return a + b
        if expr.op == "-":
            return a - b
        if expr.op == "*":
            return a * b
        if expr.op == "/":
            return a / b
        if expr.op == "**":
            return a ** b
    raise TypeError(f"unknown expression {expr!r}")


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`@` on values: matrix-vector, vector-matrix and (stacked) matrix-matrix,
    with stacked dims lined up after the two batch axes."""
    ra, rb = _rank(a), _rank(b)
    if rb == 1:
        b = b.reshape(b.shape[:BATCH] + (1,) * (ra - 2) + (b.shape[-1], 1))
        return torch.matmul(a, b).squeeze(-1)
    if ra == 1:
        a = a.reshape(a.shape[:BATCH] + (1,) * (rb - 2) + (1, a.shape[-1]))
        return torch.matmul(a, b).squeeze(-2)
    if ra < rb:
        a = a.reshape(a.shape[:BATCH] + (1,) * (rb - ra) + a.shape[BATCH:])
    elif rb < ra:
        b = b.reshape(b.shape[:BATCH] + (1,) * (ra - rb) + b.shape[BATCH:])
    return torch.matmul(a, b)
