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
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Lowered:
    strategy: str                 # "recurrent" | "cell" | "scan" | "chunked"
    source: str                   # the kernels and _forward / _backward
    why: str                      # one line: why this strategy and these tiles
    tiles: dict = field(default_factory=dict)
