"""The adjoint recurrence of every spec matches torch.autograd through the reference (float64)."""
from pathlib import Path

import pytest
import torch

from recc import ir
from recc.adjoint import adjoint, adjoint_reference
from recc.check import check, load
from recc.primitives import sample_input
from recc.reference import reference

SPECS = sorted(Path(__file__).resolve().parent.parent.glob("specs/*.rec"))
TOL = 1e-10
DIMS = {"K": 4, "V": 3, "D": 3, "N": 4, "P": 3}


def _size(rec, d):
    return d if isinstance(d, int) else rec.fixed_dims.get(d) or DIMS.get(d, 3)


def _random_call(rec, gen, B, T, H, cu_seqlens=None):
    """Inputs, params and a (finite) initial state for `rec`, drawn from their annotations."""
    shape = lambda decl: tuple(_size(rec, d) for d in decl.shape)
    inputs = [sample_input((B, T, H) + shape(d), d.annotations, gen) for d in rec.inputs]
    params = [sample_input((H,) + shape(d), d.annotations, gen) for d in rec.params]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    init = [0.5 * torch.randn((N, H) + shape(s), generator=gen, dtype=torch.float64) for s in rec.states]
    if rec.name in ("slstm",):  # a normaliser state must stay positive
        init = [s.abs() + 0.5 if d.name == "n" else s for s, d in zip(init, rec.states)]
    return inputs, params, init


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def assert_adjoint_matches_autograd(rec, seed=0, B=2, T=5, H=2, cu_seqlens=None, with_initial=True, final_grad=True):
    gen = torch.Generator().manual_seed(seed)
    inputs, params, init = _random_call(rec, gen, B, T, H, cu_seqlens)
    leaves = [t.clone().requires_grad_() for t in inputs + params + (init if with_initial else [])]
    n_args = len(inputs) + len(params)
    kwargs = {"output_final_state": True}
    if with_initial:
        kwargs["initial_state"] = tuple(leaves[n_args:]) if len(init) > 1 else leaves[n_args]
    if cu_seqlens is not None:
        kwargs["cu_seqlens"] = torch.tensor(cu_seqlens, dtype=torch.int64)
    out, final = reference(rec, *leaves[:n_args], **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    finals = final if isinstance(final, tuple) else (final,)
    d_out = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    d_fin = [torch.randn(f.shape, generator=gen, dtype=torch.float64) if final_grad else torch.zeros_like(f)
             for f in finals]
    loss = sum((o * d).sum() for o, d in zip(outs, d_out)) + sum((f * d).sum() for f, d in zip(finals, d_fin))
    expected = torch.autograd.grad(loss, leaves, allow_unused=True)

    kw = {k: v for k, v in kwargs.items() if k != "output_final_state"}
    got = adjoint_reference(rec, *inputs, *params, grad_outputs=tuple(d_out),
                            grad_final_state=tuple(d_fin) if final_grad else None, **kw)
    names = [d.name for d in rec.inputs + rec.params] + ([s.name for s in rec.states] if with_initial else [])
    assert set(names) <= set(got)
    for name, want in zip(names, expected):
        want = torch.zeros_like(got[name]) if want is None else want
        assert got[name].shape == want.shape, name
        assert torch.isfinite(got[name]).all(), name
        err = _rel(got[name], want)
        assert err < TOL, f"{rec.name}: gradient of {name} off by {err:.2e}"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_adjoint_matches_autograd(path):
    assert_adjoint_matches_autograd(load(path))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_adjoint_matches_autograd_packed_sequences(path):
    assert_adjoint_matches_autograd(load(path), seed=1, B=1, T=7, cu_seqlens=[0, 3, 7])


def test_adjoint_matches_autograd_from_a_fresh_state():
    assert_adjoint_matches_autograd(load(_spec("gated_delta_net")), seed=2, with_initial=False)


def test_adjoint_matches_autograd_without_a_final_state_gradient():
    assert_adjoint_matches_autograd(load(_spec("mlstm")), seed=4, final_grad=False)


def _spec(name):
    return next(p for p in SPECS if p.stem == name)


def _reads(exprs, names) -> set:
    found = set()
    for e in exprs:
        found |= {n.name for n in ir.walk(e) if isinstance(n, ir.Ref) and n.name in names}
    return found


@pytest.mark.parametrize("name", ["gated_delta_net", "delta_net", "delta_product", "gla", "simple_gla", "retnet",
                                  "mamba2", "mlstm", "first_order"])
def test_transposed_transition_of_an_affine_state_does_not_read_the_state(name):
    adj = adjoint(load(_spec(name)))
    states = {s.name for s in adj.rec.states}
    lets = {s.name: s.expr for s in adj.forward}
    # follow forward lets down to what they read
    seen, todo = set(), list(adj.transposed.values())
    while todo:
        e = todo.pop()
        for n in ir.walk(e):
            if isinstance(n, ir.Ref) and n.name in lets and n.name not in seen:
                seen.add(n.name)
                todo.append(lets[n.name])
    assert not _reads(list(adj.transposed.values()) + [lets[n] for n in seen], states)


def test_householder_backward_needs_no_key_by_key_matrix():
    """householder(k, beta) @ S is differentiated through k @ S and outer products only."""
    adj = adjoint(load(_spec("gated_delta_net")))
    exprs = [s.expr for s in adj.forward + adj.backward] + list(adj.gradients.values())
    for e in exprs:
        for n in ir.walk(e):
            assert not (isinstance(n, ir.Call) and n.fn in ("householder", "diag")), n
            assert tuple(n.shape) not in (("K", "K"),), n


def test_gated_delta_net_transposed_transition():
    """d_S(before) = A^T d_S(after) with A = exp(g) (I - beta k k^T): checked on numbers."""
    from recc.reference import _eval
    adj = adjoint(load(_spec("gated_delta_net")))
    gen = torch.Generator().manual_seed(3)
    K, V = 4, 3
    k = torch.randn(1, 1, K, generator=gen, dtype=torch.float64)
    env = {"k": k, "beta": torch.tensor([[1.3]], dtype=torch.float64), "g": torch.tensor([[-0.2]], dtype=torch.float64),
           "d_S": torch.randn(1, 1, K, V, generator=gen, dtype=torch.float64)}
    got = _eval(adj.transposed["S"], env, None)
    A = torch.exp(env["g"][0, 0]) * (torch.eye(K, dtype=torch.float64) - 1.3 * k[0, 0, :, None] * k[0, 0, None, :])
    assert torch.allclose(got[0, 0], A.T @ env["d_S"][0, 0], rtol=1e-12, atol=1e-12)


def test_backward_recurrence_is_a_recurrence_over_cotangent_states():
    adj = adjoint(load(_spec("lstm")))
    bwd = adj.recurrence
    assert [s.name for s in bwd.states] == ["d_h", "d_c"]
    assert [d.name for d in bwd.outputs] == ["d_x", "d_R"]
    assert [d.name for d in bwd.inputs] == ["x", "h", "c", "d_y"]


def test_cotangent_names_avoid_the_specs_names():
    rec = check("""
recurrence clash
  dims D
  input x[D], d_x[D]
  state h[D]
  h = d_x * h + x
  output y[D] = h
""")
    adj = adjoint(rec)
    assert adj.gradient_names["x"] != "d_x" and adj.gradient_names["d_x"] != "d_x"
    assert_adjoint_matches_autograd(rec)


def test_every_primitive_has_a_derivative():
    from recc.adjoint import VJP
    from recc.primitives import PRIMITIVES
    assert set(PRIMITIVES) <= set(VJP)


PRIMITIVE_SPEC = """
recurrence prims
  dims D
  input a[D], b[D]: positive, u[D]
  input s: positive
  param P[D, D]
  state h[D], M[D, D]
  let w = l2norm(a) + silu(u) + relu(u) + softplus(a) + sqrt(b) + log(b) + abs(u) + min(a, u)
  h = tanh(h) * sigmoid(a) + w * logsigmoid(u) + sum(h) * s ** 2 + dot(a, b) * u
  let st = stack(a, h, s)
  M = householder(u, s) @ M @ P + diag(b) @ M / s + outer(a, h) - M^T + householder(a, s) * s + diag(h) + M @ diag(b)
  output y[D] = M @ h + max(h, a) + exp(-b) * (h @ P) + rowsum(M) * step(u) + st[1] * st[0] + M @ diag(a) @ u
"""


def test_adjoint_of_every_primitive_matches_autograd():
    assert_adjoint_matches_autograd(check(PRIMITIVE_SPEC), T=3)
