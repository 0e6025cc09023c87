"""The one comparison every kernel test makes: op vs the float64 sequential reference.

    args = random_arguments(rec, B=2, T=13, H=2, dims={"K": 16, "V": 16})
    assert_close_to_reference(op, rec, args, {"initial_state": random_initial_state(rec, args)}, tol=1e-4)

Compares outputs, final states and the gradients of every input, param and
initial state (under random cotangents on outputs and final states) by the
relative error ||op - ref|| / ||ref||. NaN or inf never passes.
"""
from __future__ import annotations

import torch

from recc import ir
from recc.primitives import sample_input
from recc.reference import reference
from recc.signature import bind


def relative_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    value, ref = value.detach().double().cpu(), ref.detach().double().cpu()
    if value.shape != ref.shape:
        raise AssertionError(f"shape {tuple(value.shape)} != reference shape {tuple(ref.shape)}")
    if not torch.isfinite(value).all():
        return float("inf")
    scale = ref.norm().item()
    diff = (value - ref).norm().item()
    return diff / scale if scale > 0 else diff


def full_shape(rec: ir.Recurrence, lead: tuple, decl: ir.TensorDecl, dims: dict) -> tuple:
    sizes = {**rec.fixed_dims, **dims}
    return lead + tuple(sizes[d] if isinstance(d, str) else d for d in decl.shape)


def random_arguments(rec: ir.Recurrence, B: int, T: int, H: int, dims: dict, dtype=torch.float32,
                     seed: int = 0, device="cpu") -> list:
    """Inputs [B, T, H, ...] and params [H, ...] drawn as their annotations say."""
    gen = torch.Generator().manual_seed(seed)
    args = [sample_input(full_shape(rec, (B, T, H), d, dims), d.annotations, gen, torch.float64)
            for d in rec.inputs]
    args += [0.5 * sample_input(full_shape(rec, (H,), d, dims), d.annotations, gen, torch.float64)
             for d in rec.params]
    return [a.to(dtype=dtype, device=device).contiguous() for a in args]


def random_initial_state(rec: ir.Recurrence, args: list, N: int | None = None, steps: int = 3,
                         seed: int = 12345):
    """A valid initial state: the reference's final state after a few random steps
    (so constraints like s > 0 hold by construction). Tensor, or tuple for several states."""
    B, H = args[0].shape[0], args[0].shape[2]
    N = N or B
    dims = {k: v for k, v in bind(rec, tuple(args), {}).dims.items()}
    prefix = random_arguments(rec, N, steps, H, dims, torch.float64, seed=seed)
    prefix[len(rec.inputs):] = [a.double().cpu() for a in args[len(rec.inputs):]]
    _, final = reference(rec, *prefix, output_final_state=True)
    cast = lambda t: t.to(dtype=torch.float32, device=args[0].device).contiguous()
    return tuple(cast(t) for t in final) if isinstance(final, tuple) else cast(final)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _leaves(args: list, kwargs: dict, dtype=None):
    """Copies of the differentiable tensors (args and initial states) that require grad."""
    make = lambda t: (t.detach().to(dtype) if dtype else t.detach().clone()).requires_grad_(True)
    new_args = [make(a) for a in args]
    new_kwargs = dict(kwargs)
    init = kwargs.get("initial_state")
    if init is not None:
        new_kwargs["initial_state"] = tuple(make(t) for t in init) if isinstance(init, tuple) else make(init)
    leaves = new_args + list(_as_tuple(new_kwargs["initial_state"]) if init is not None else ())
    return new_args, new_kwargs, leaves


def assert_close_to_reference(op, rec: ir.Recurrence, args: list, kwargs: dict | None = None, tol: float = 1e-4,
                              grad_tol: float | None = None, grad: bool = True, seed: int = 0) -> dict:
    """Run `op` and the float64 reference on the same values; assert every
    output, final state and gradient is within `tol` (gradients: `grad_tol`,
    default `tol`) in relative error. Returns the errors by name."""
    kwargs = {**(kwargs or {}), "output_final_state": True}
    grad_tol = tol if grad_tol is None else grad_tol
    op_args, op_kwargs, op_leaves = _leaves(args, kwargs)
    ref_args, ref_kwargs, ref_leaves = _leaves([a.cpu() for a in args],
                                               {**kwargs, **({"initial_state": _cpu(kwargs["initial_state"])}
                                                             if kwargs.get("initial_state") is not None else {}),
                                                "cu_seqlens": _cpu(kwargs.get("cu_seqlens"))}, torch.float64)
    with torch.enable_grad():
        out, final = op(*op_args, **op_kwargs)
        ref, ref_final = reference(rec, *ref_args, **ref_kwargs)
    results = list(zip([o.name for o in rec.outputs], _as_tuple(out), _as_tuple(ref)))
    results += list(zip([f"final {s.name}" for s in rec.states], _as_tuple(final), _as_tuple(ref_final)))
    errors = {}
    for name, value, expected in results:
        errors[name] = relative_error(value, expected)
    if grad:
        gen = torch.Generator().manual_seed(seed + 7)
        cotangents = [torch.randn(r.shape, generator=gen, dtype=torch.float64) for _, _, r in results]
        loss = sum((v.double() * c.to(v.device)).sum() for (_, v, _), c in zip(results, cotangents))
        ref_loss = sum((r * c).sum() for (_, _, r), c in zip(results, cotangents))
        grads = torch.autograd.grad(loss, op_leaves, allow_unused=True)
        ref_grads = torch.autograd.grad(ref_loss, ref_leaves, allow_unused=True)
        names = [d.name for d in rec.inputs + rec.params] + \
            ([f"initial {s.name}" for s in rec.states] if kwargs.get("initial_state") is not None else [])
        for name, g, r in zip(names, grads, ref_grads):
            r = torch.zeros_like(ref_leaves[names.index(name)]) if r is None else r
            g = torch.zeros_like(r) if g is None else g
            errors[f"d{name}"] = relative_error(g, r)
    bad = {k: v for k, v in errors.items() if not v <= (grad_tol if k in _grad_names(errors, results) else tol)}
    assert not bad, f"{rec.name}: relative error above tolerance: " + \
        ", ".join(f"{k} {v:.2e}" for k, v in bad.items()) + f" (all: {_fmt(errors)})"
    return errors


def _grad_names(errors: dict, results: list) -> set:
    values = {name for name, _, _ in results}
    return {k for k in errors if k not in values}


def _fmt(errors: dict) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in errors.items())


def _cpu(x):
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(t.detach().cpu() for t in x)
    return x.detach().cpu()
