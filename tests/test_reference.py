"""The reference evaluator agrees with independent hand-written loops.

`recc.reference.reference` derives its loop from a spec's IR; tests/handwritten.py
writes each example's loop by hand from its paper. Both run in float64 on the
same random inputs (drawn to honour the spec's annotations) and must agree to a
relative error below 1e-12: with fresh states, with a given initial state and
the final state returned, and on a packed batch of sequences of different
lengths (`cu_seqlens`).
"""
from pathlib import Path

import pytest
import torch

from handwritten import OPS
from recc.check import load
from recc.primitives import sample_input
from recc.reference import reference

SPEC_DIR = Path(__file__).resolve().parent.parent / "specs"
SPECS = sorted(p.stem for p in SPEC_DIR.glob("*.rec"))
TOL = 1e-12

# Sizes of free dims; all different, so that a swapped axis cannot go unnoticed.
SIZES = {"K": 6, "V": 5, "D": 4, "N": 3, "P": 5}
# States whose values must be positive for the spec to make sense (a normaliser, a sum of exponentials).
POSITIVE_STATES = {("softmax_scan", "s"), ("slstm", "n")}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||; NaN or inf anywhere never passes."""
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all(), "non-finite values"
    return ((actual - expected).norm() / expected.norm()).item()


def assert_close(actual, expected, what: str, tol: float = TOL) -> None:
    """The one comparison used by every test here: tensors or tuples of tensors."""
    if isinstance(expected, torch.Tensor):
        actual, expected = (actual,), (expected,)
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        err = relative_error(a, e)
        assert err < tol, f"{what}[{i}]: relative error {err:.3e} >= {tol:.0e}"


def spec(name: str):
    return load(SPEC_DIR / f"{name}.rec")


def size_of(rec, d, sizes=SIZES):
    return d if isinstance(d, int) else rec.fixed_dims.get(d, sizes.get(d, 5))


def arguments(rec, B: int, T: int, H: int, seed: int = 0, sizes=SIZES) -> list:
    """Random inputs [B, T, H, ...] and params [H, ...] honouring the spec's annotations."""
    gen = torch.Generator().manual_seed(seed)
    full = lambda lead, decl: lead + tuple(size_of(rec, d, sizes) for d in decl.shape)
    args = [sample_input(full((B, T, H), d), d.annotations, gen) for d in rec.inputs]
    # params scaled down so that recurrent matrices keep the nonlinear cells out of saturation
    args += [0.5 * sample_input(full((H,), d), d.annotations, gen) for d in rec.params]
    return args


def initial_states(rec, N: int, H: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    states = []
    for s in rec.states:
        x = torch.randn((N, H) + tuple(size_of(rec, d) for d in s.shape), generator=gen, dtype=torch.float64)
        states.append(x.abs() + 0.5 if (rec.name, s.name) in POSITIVE_STATES else x)
    return states[0] if len(states) == 1 else tuple(states)


@pytest.mark.parametrize("name", SPECS)
def test_every_spec_has_a_handwritten_loop(name):
    assert name in OPS


@pytest.mark.parametrize("name", SPECS)
def test_fresh_state(name):
    rec = spec(name)
    args = arguments(rec, B=2, T=9, H=2)
    out, final = reference(rec, *args, output_final_state=True)
    want, want_final = OPS[name](*args, output_final_state=True)
    assert_close(out, want, f"{name} output")
    assert_close(final, want_final, f"{name} final state")


@pytest.mark.parametrize("name", SPECS)
def test_initial_and_final_state(name):
    rec = spec(name)
    args = arguments(rec, B=2, T=6, H=3, seed=2)
    init = initial_states(rec, N=2, H=3)
    out, final = reference(rec, *args, initial_state=init, output_final_state=True)
    want, want_final = OPS[name](*args, initial_state=init, output_final_state=True)
    assert_close(out, want, f"{name} output")
    assert_close(final, want_final, f"{name} final state")


@pytest.mark.parametrize("name", SPECS)
def test_packed_sequences(name):
    """B = 1, three sequences of lengths 3, 6 and 2 packed along T, each with its own initial state."""
    rec = spec(name)
    cu_seqlens = torch.tensor([0, 3, 9, 11], dtype=torch.int32)
    args = arguments(rec, B=1, T=11, H=2, seed=3)
    init = initial_states(rec, N=3, H=2, seed=4)
    out, final = reference(rec, *args, initial_state=init, output_final_state=True, cu_seqlens=cu_seqlens)
    want, want_final = OPS[name](*args, initial_state=init, output_final_state=True, cu_seqlens=cu_seqlens)
    assert_close(out, want, f"{name} output")
    assert_close(final, want_final, f"{name} final state")


def test_packed_sequences_are_independent():
    """Packing changes nothing: each packed sequence equals the same sequence run alone."""
    rec = spec("gated_delta_net")
    bounds = [0, 4, 5, 12]
    args = arguments(rec, B=1, T=12, H=2, seed=5)
    init = initial_states(rec, N=3, H=2)
    out, final = reference(rec, *args, initial_state=init, output_final_state=True,
                           cu_seqlens=torch.tensor(bounds))
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        alone, alone_final = reference(rec, *[a[:, s:e] for a in args], initial_state=init[n:n + 1],
                                       output_final_state=True)
        assert_close(out[:, s:e], alone, f"sequence {n} output")
        assert_close(final[n:n + 1], alone_final, f"sequence {n} final state")


def test_no_final_state_unless_asked():
    rec = spec("first_order")
    out, final = reference(rec, *arguments(rec, B=1, T=3, H=1))
    assert final is None and out.shape == (1, 3, 1, SIZES["D"])


def test_const_keyword_overrides_its_default():
    rec = spec("gated_delta_net")
    args = arguments(rec, B=1, T=5, H=2)
    out, _ = reference(rec, *args, scale=0.25)
    want, _ = OPS["gated_delta_net"](*args, scale=0.25)
    assert_close(out, want, "output with scale=0.25")
    default, _ = reference(rec, *args)
    assert_close(default * 0.25 / SIZES["K"] ** -0.5, out, "scale enters linearly")


# ---- gradients -------------------------------------------------------------------------

def test_gradients_through_the_reference_match_the_handwritten_loop():
    rec = spec("gated_delta_net")
    args = [a.requires_grad_() for a in arguments(rec, B=2, T=5, H=2, seed=6)]
    init = initial_states(rec, N=2, H=2).requires_grad_()
    out, final = reference(rec, *args, initial_state=init, output_final_state=True)
    want, want_final = OPS["gated_delta_net"](*args, initial_state=init, output_final_state=True)
    gen = torch.Generator().manual_seed(7)
    w_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    w_final = torch.randn(final.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out * w_out).sum() + (final * w_final).sum(), args + [init])
    want_grads = torch.autograd.grad((want * w_out).sum() + (want_final * w_final).sum(), args + [init])
    names = [d.name for d in rec.inputs] + ["initial_state"]
    for name, g, w in zip(names, grads, want_grads):
        assert g is not None, name
        assert_close(g, w, f"d/d{name}", tol=1e-10)


def test_reference_gradients_pass_gradcheck():
    """Autograd through the reference agrees with finite differences (a nonlinear cell, params included)."""
    rec = spec("slstm")
    x, R = [a.requires_grad_() for a in arguments(rec, B=1, T=3, H=1, seed=8, sizes={"D": 2})]
    assert torch.autograd.gradcheck(lambda x, R: reference(rec, x, R)[0], (x, R), eps=1e-6, atol=1e-8)
