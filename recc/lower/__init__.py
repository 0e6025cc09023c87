"""Lowering: a checked recurrence (+ analysis facts + tiles) -> kernel source.

Each strategy lives in its own module (`recurrent.py`, `cell.py`, `scan.py`,
later `chunked.py`) and exposes one function

    lower_<strategy>(rec: ir.Recurrence, ...) -> Lowered

`Lowered.source` is Python + Triton text that `recc.render` pastes into the
generated module. It must define exactly these two functions (plus any
`@triton.jit` kernels and helpers, all named with the recurrence's name or a
leading underscore):

    def _forward(call):
        # call: recc.signature.Bound (checked tensors, dims, consts, cu_seqlens,
        #       initial_state, sequences)
        # returns (outputs: dict[name, Tensor [B, T, H, *shape] in the inputs' dtype],
        #          finals:  dict[name, Tensor [N, H, *shape] float32],
        #          saved:   tuple of tensors the backward needs)
    def _backward(call, saved, d_outputs, d_finals):
        # d_outputs: dict[name, Tensor or None]; d_finals: dict[name, Tensor or None]
        # returns (d_inputs: dict[name, Tensor or None],
        #          d_params: dict[name, Tensor or None],
        #          d_initial: dict[name, Tensor or None])

The generated module wraps them in a torch.autograd.Function and a
torch.library custom op; strategies never deal with autograd themselves.
Inside the op, `_backward` runs with autograd switched back on when the
strategy's source sets `_BACKWARD_USES_AUTOGRAD = True` (it may then
differentiate its own per-step torch expressions; chunked does). Tensors returned by
`_forward` that are inputs, views of inputs, or returned twice are copied by
the op (a custom op may not alias).

Optionally, for torch.compile (which runs the op on fake tensors):

    def _saved_like(call):
        # empty tensors with the shapes and dtypes of `saved` for this call
        # (call.requires_grad says whether a backward will follow)

Without it the op works eagerly, and torch.compile raises a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ReccError


@dataclass(frozen=True)
class Lowered:
    strategy: str                 # "recurrent" | "cell" | "scan" | "chunked"
    source: str                   # the kernels and _forward / _backward
    why: str                      # one line: why this strategy and these tiles
    tiles: dict = field(default_factory=dict)
    traceable: bool = True        # the source describes its saved tensors (_saved_like): torch.compile traces it


def literal(values: dict, strings: dict | None = None) -> str:
    """`values` as a Python dict literal for generated code: keys must be identifiers, values
    ints, bools, tuples of ints, or strings among `strings[key]` (nothing else is ever pasted
    into a module: launch parameters, overrides and shape keywords only)."""
    items = []
    for key, value in values.items():
        if not (isinstance(key, str) and key.isidentifier()):
            raise ReccError(f"tile name {key!r} is not an identifier")
        ok = (isinstance(value, int) or (isinstance(value, tuple) and all(isinstance(v, int) for v in value))
              or (isinstance(value, str) and value in (strings or {}).get(key, ())))
        if not ok:
            raise ReccError(f"tile {key}={value!r}: expected a number" +
                            (f" or one of {', '.join(strings[key])}" if strings and key in strings else ""))
        items.append(f"{key!r}: {value!r}")
    return "{" + ", ".join(items) + "}"
