"""The calling convention of every op recc generates, and its argument checks.

    outputs, final_state = op(*inputs, *params, *, <consts>=None,
                              initial_state=None, output_final_state=False,
                              cu_seqlens=None)

* inputs, in declaration order: `[B, T, H, *shape]`;
* params, in declaration order: `[H, *shape]`;
* consts: keyword arguments, default from the spec (e.g. `scale = K ** -0.5`);
* `initial_state`: a tensor `[N, H, *shape]` when the recurrence has one
  state, else a tuple in declaration order; N is B, or the number of
  sequences when `cu_seqlens` is given;
* `cu_seqlens`: int tensor `[N + 1]` of sequence starts in a packed batch
  (B must be 1), as in flash-linear-attention;
* returns the output (a tuple when there are several) and the final state
  (tensor or tuple like `initial_state`; None unless `output_final_state`).

`bind` checks all of this and names the argument at fault.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import ir
from .errors import ArgumentError


@dataclass
class Bound:
    """A checked call: tensors by name, sizes of every dim, consts as floats."""
    rec: ir.Recurrence
    inputs: dict
    params: dict
    consts: dict
    dims: dict
    B: int
    T: int
    H: int
    initial_state: dict | None
    output_final_state: bool
    cu_seqlens: torch.Tensor | None
    requires_grad: bool = False   # set by the op: will a backward follow (kernels then save checkpoints)
    # what the strategy's host code derived from the checked facts (e.g. its launch tiles), shared
    # by `rebind`: the backward of a call reuses what its forward worked out
    memo: dict = field(default_factory=dict)

    @property
    def sequences(self) -> list:
        """(batch row, start, end) of every sequence."""
        if self.cu_seqlens is None:
            return [(b, 0, self.T) for b in range(self.B)]
        bounds = self.cu_seqlens.tolist()
        return [(0, s, e) for s, e in zip(bounds[:-1], bounds[1:])]

    @property
    def N(self) -> int:
        return self.B if self.cu_seqlens is None else self.cu_seqlens.numel() - 1


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def signature_names(rec: ir.Recurrence) -> list:
    return [d.name for d in rec.inputs + rec.params]


def const_value(rec: ir.Recurrence, expr: ir.Expr, dims: dict, consts: dict) -> float:
    """Evaluate a const's expression (numbers, dims and earlier consts)."""
    if isinstance(expr, ir.Num):
        return expr.value
    if isinstance(expr, ir.Ref):
        return float(dims[expr.name]) if expr.kind == "dim" else consts[expr.name]
    if isinstance(expr, ir.Unary):
        return -const_value(rec, expr.operand, dims, consts)
    if isinstance(expr, ir.Binary):
        a = const_value(rec, expr.lhs, dims, consts)
        b = const_value(rec, expr.rhs, dims, consts)
        return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else math.inf, "**": a ** b}[expr.op]
    if isinstance(expr, ir.Call):
        import torch as _t
        from .primitives import PRIMITIVES
        args = [_t.tensor([[const_value(rec, a, dims, consts)]], dtype=_t.float64) for a in expr.args]
        return float(PRIMITIVES[expr.fn].torch(*args).reshape(-1)[0])
    raise TypeError(f"not a const expression: {expr}")


# Checked calls by what the checks read: (id of the Recurrence, the _call_key) ->
# (rec, consts, dims, B, T, H). Every check `bind` makes except the values of
# cu_seqlens is a function of that key, so a call whose key was seen before
# only needs its cu_seqlens values checked. Failing calls are never stored.
_BOUND_CACHE: dict = {}
_BOUND_CACHE_SIZE = 256
_PLAIN = (int, float, bool, type(None))
_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _tensor_key(t):
    return (t.shape, t.dtype, t.device)


def _call_key(args: tuple, kwargs: dict):
    """A summary of the call (types, shapes, dtypes, devices, const values, option keys), or
    None where the call is unusual (non-tensors, ...). Symbolic sizes (torch.compile's fake
    tensors) make it unhashable: `bind` then checks the call in full."""
    key = []
    for t in args:
        if type(t) not in _TENSORS:
            return None
        key += (t.shape, t.dtype, t.device)
    init = kwargs.get("initial_state")
    if init is None:
        given = None
    elif type(init) in _TENSORS:
        given = _tensor_key(init)
    elif type(init) in (tuple, list) and all(type(t) in _TENSORS for t in init):
        given = (type(init),) + tuple(_tensor_key(t) for t in init)
    else:
        return None
    cu = kwargs.get("cu_seqlens")
    if cu is not None and type(cu) not in _TENSORS:
        return None
    options = []
    for k, v in kwargs.items():
        if k == "initial_state" or k == "cu_seqlens":
            continue
        if type(v) not in _PLAIN:
            return None
        options.append((k, type(v), v))
    if len(options) > 1:
        options.sort()
    return (tuple(key), given, None if cu is None else _tensor_key(cu),
            tuple(options), "initial_state" in kwargs, "cu_seqlens" in kwargs)


def _check_cu_values(op: str, cu, T: int) -> None:
    c = cu.tolist()
    if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c, c[1:])):
        raise ArgumentError(f"{op}(): argument 'cu_seqlens' must rise from 0 to T = {T}, got {c}")


def bind(rec: ir.Recurrence, args: tuple, kwargs: dict, check_values: bool = True) -> Bound:
    """Check a call against the calling convention. `check_values=False` skips
    the checks that read tensor data (cu_seqlens), e.g. while torch.compile traces.
    A call shaped like one checked before reuses that check (see `_BOUND_CACHE`)."""
    key = None if torch.compiler.is_compiling() else _call_key(args, kwargs)
    if key is not None:
        key = (id(rec), key)
        try:
            hit = _BOUND_CACHE.get(key)
        except TypeError:  # symbolic sizes are not hashable
            hit = key = None
        if hit is not None and hit[0] is rec:
            _, consts, dims, B, T, H = hit
            cu = kwargs.get("cu_seqlens")
            if cu is not None and check_values:
                _check_cu_values(rec.name, cu, T)
            return _bound(rec, args, kwargs, dict(consts), dict(dims), B, T, H)
    call = _bind(rec, args, kwargs, check_values)
    if key is not None:
        if len(_BOUND_CACHE) >= _BOUND_CACHE_SIZE:
            _BOUND_CACHE.clear()
        _BOUND_CACHE[key] = (rec, dict(call.consts), dict(call.dims), call.B, call.T, call.H)
    return call


def rebind(call: Bound, args: tuple, initial: tuple | None = None, cu_seqlens=None) -> Bound:
    """`call` with other tensors of the same shapes, dtypes and devices (inputs and params
    in signature order, initial states or None, cu_seqlens): every check `bind` made of
    `call` holds for them, and its `memo` too. The two share consts, dims and memo (nothing
    mutates the first two). `rebind(call, ())` keeps the checked facts without the tensors."""
    if not args and initial is None:   # the checked facts alone
        return Bound(call.rec, {}, {}, call.consts, call.dims, call.B, call.T, call.H, None,
                     call.output_final_state, cu_seqlens, memo=call.memo)
    _, inputs, params, states = _names(call.rec)
    given = None if initial is None or all(t is None for t in initial) else dict(zip(states, initial))
    return Bound(call.rec, dict(zip(inputs, args)), dict(zip(params, args[len(inputs):])) if params else {},
                 call.consts, call.dims, call.B, call.T, call.H, given, call.output_final_state,
                 cu_seqlens, memo=call.memo)


# (rec, names of its inputs, params and states) by id of the Recurrence, for _bound
_NAMES: dict = {}


def _names(rec: ir.Recurrence) -> tuple:
    hit = _NAMES.get(id(rec))
    if hit is None or hit[0] is not rec:
        hit = _NAMES[id(rec)] = (rec, tuple(d.name for d in rec.inputs), tuple(d.name for d in rec.params),
                                 tuple(s.name for s in rec.states))
    return hit


def _bound(rec, args, kwargs, consts, dims, B, T, H) -> Bound:
    """The Bound of an already checked call."""
    _, inputs, params, states = _names(rec)
    init = kwargs.get("initial_state")
    initial = None
    if init is not None:
        given = (init,) if isinstance(init, torch.Tensor) else tuple(init)
        initial = dict(zip(states, given))
    return Bound(rec, dict(zip(inputs, args)), dict(zip(params, args[len(inputs):])) if params else {},
                 consts, dims, B, T, H, initial, bool(kwargs.get("output_final_state", False)),
                 kwargs.get("cu_seqlens"))


def _bind(rec: ir.Recurrence, args: tuple, kwargs: dict, check_values: bool) -> Bound:
    op = rec.name
    names = signature_names(rec)
    if len(args) != len(names):
        raise ArgumentError(f"{op}() takes {len(names)} tensors ({', '.join(names)}), got {len(args)}")
    options = {"initial_state", "output_final_state", "cu_seqlens"} | {c.name for c in rec.consts}
    unknown = sorted(set(kwargs) - options)
    if unknown:
        raise ArgumentError(f"{op}() got an unexpected keyword argument '{unknown[0]}'; "
                            f"it takes: {', '.join(sorted(options))}")
    tensors = dict(zip(names, args))
    device = None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ArgumentError(f"{op}(): argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ArgumentError(f"{op}(): argument '{name}' must be a floating-point tensor, got {t.dtype}")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ArgumentError(f"{op}(): argument '{name}' is on {t.device}, but '{names[0]}' is on {device}")

    # sizes: B, T, H from the first input (or H from the first param), dims from first use
    dims = dict(rec.fixed_dims)
    origin = {}
    first = rec.inputs[0] if rec.inputs else None
    if first is not None:
        t = tensors[first.name]
        if t.dim() < 3:
            raise ArgumentError(f"{op}(): argument '{first.name}' must be [B, T, H, ...], got {list(t.shape)}")
        B, T, H = t.shape[:3]
    else:
        raise ArgumentError(f"{op}(): a recurrence needs at least one per-step input")
    for decl, lead in [(d, ("B", "T", "H")) for d in rec.inputs] + [(d, ("H",)) for d in rec.params]:
        t = tensors[decl.name]
        sizes = dict(dims, B=B, T=T, H=H)
        if t.dim() == len(lead) + len(decl.shape):
            for d, n in zip(decl.shape, t.shape[len(lead):]):
                if isinstance(d, str) and d not in sizes:
                    sizes[d] = dims[d] = int(n)
                    origin[d] = decl.name
        expected = [sizes.get(d, d) if isinstance(d, str) else d for d in lead + tuple(decl.shape)]
        if list(t.shape) != expected:
            layout = _shape_str(lead + tuple(decl.shape))
            where = "".join(f", {d} from '{origin[d]}'" for d in decl.shape if d in origin and origin[d] != decl.name)
            raise ArgumentError(f"{op}(): argument '{decl.name}' must have shape {layout} = "
                                f"{_shape_str(expected)}{where}, got {_shape_str(t.shape)}")

    cu = kwargs.get("cu_seqlens")
    if cu is not None:
        if not isinstance(cu, torch.Tensor) or cu.dtype not in (torch.int32, torch.int64) or cu.dim() != 1:
            raise ArgumentError(f"{op}(): argument 'cu_seqlens' must be a 1-D int32/int64 tensor")
        if B != 1:
            raise ArgumentError(f"{op}(): with cu_seqlens the batch size must be 1 (sequences packed along T), "
                                f"got B = {B}")
        if cu.numel() < 2:
            raise ArgumentError(f"{op}(): argument 'cu_seqlens' must rise from 0 to T = {T}, got {cu.tolist()}")
        if check_values:
            _check_cu_values(op, cu, T)

    consts = {}
    for c in rec.consts:
        value = kwargs.get(c.name)
        consts[c.name] = float(value) if value is not None else const_value(rec, c.expr, dims, consts)

    n_seq = B if cu is None else cu.numel() - 1
    init = kwargs.get("initial_state")
    initial = None
    if init is not None:
        states = rec.states
        given = (init,) if isinstance(init, torch.Tensor) else tuple(init) if isinstance(init, (tuple, list)) else None
        if given is None or len(given) != len(states):
            what = "a tensor" if len(states) == 1 else f"a tuple of {len(states)} tensors ({', '.join(s.name for s in states)})"
            raise ArgumentError(f"{op}(): argument 'initial_state' must be {what}")
        initial = {}
        for s, t in zip(states, given):
            label = "initial_state" if len(states) == 1 else f"initial_state[{s.name}]"
            expected = [n_seq, H] + [dims[d] if isinstance(d, str) else d for d in s.shape]
            if not isinstance(t, torch.Tensor) or list(t.shape) != expected:
                got = _shape_str(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ArgumentError(f"{op}(): argument '{label}' must have shape "
                                    f"{_shape_str(('N', 'H') + tuple(s.shape))} = {_shape_str(expected)}, got {got}")
            if t.device != device:
                raise ArgumentError(f"{op}(): argument '{label}' is on {t.device}, but the inputs are on {device}")
            initial[s.name] = t
    return Bound(rec, {d.name: tensors[d.name] for d in rec.inputs}, {d.name: tensors[d.name] for d in rec.params},
                 consts, dims, B, T, H, initial, bool(kwargs.get("output_final_state", False)), cu)


def pack_result(rec: ir.Recurrence, outputs: dict, final: dict | None):
    """(output or tuple of outputs, final state or tuple or None)."""
    outs = tuple(outputs[o.name] for o in rec.outputs)
    out = outs[0] if len(outs) == 1 else outs
    if final is None:
        return out, None
    fin = tuple(final[s.name] for s in rec.states)
    return out, fin[0] if len(fin) == 1 else fin
