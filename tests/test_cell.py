"""Strategy `cell`: the fused kernels of nonlinear cells match the float64 reference.

Kernels run under Triton's CPU interpreter (tests/conftest.py). Most tests exec
`Lowered.source` into a fresh namespace and call `_forward` / `_backward` on a bound
call directly (so they can turn the strategy's knobs); the last ones go through
`recc.load`, the generated custom op and the shared oracle (tests/oracle.py).
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

import recc
from oracle import assert_close_to_reference, random_arguments, random_initial_state
from recc import check, load_spec
from recc.lower.cell import NotACell, lower_cell
from recc.primitives import sample_input
from recc.reference import reference
from recc.signature import bind

SPECS = Path(__file__).resolve().parent.parent / "specs"
CELLS = ["lstm", "gru", "slstm"]
H = 2

# Exercises what the three cells do not: a param matrix on either side of `@` and
# transposed, one param in two orientations, two dims (E not a power of two),
# param vectors, composite primitives, `**`, max/min, two outputs.
MIXER = """\
recurrence mixer
  dims   D, E
  input  u[E], a[2, D]
  param  U[E, D], V[D, D], b[D]
  state  h[D], q[E]
  let k = h @ V + U^T @ q
  let g = silu(a[0] + k) - softplus(b) * relu(a[1]) ** 2
  h = tanh(l2norm(g) * 2 + max(h, min(a[1], 0.5)) * 0.3)
  q = logsigmoid(u + U @ h) + sqrt(q * q + 1) * 0.1
  output y[D] = h / (1 + exp(-log(1 + h * h)))
  output z[E] = q
"""

# A peephole LSTM: stacked param vectors, a scalar input, a const, a fixed dim,
# a for loop over gates, a scalar output.
PEEPHOLE = """\
recurrence peephole
  dims   D, n = 2
  input  x[4, D], s
  param  R[4, D, D], p[n, D], w[D]
  const  scale = 0.5
  state  h[D], c[D]
  let z = x + R @ h
  let i = sigmoid(z[0] + p[0] * c)
  let f = sigmoid(z[1] + p[1] * c)
  for j in 0..2:
    c = f * c + i * tanh(z[2]) * 0.5
  h = sigmoid(z[3]) * tanh(c) + scale * s * w
  output y[D] = h
  output e = dot(h, h) / D
"""

# l2norm of the all-zero padding rows of a tile is 0/0: masked away, but numpy warns
pad_nan = pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")


@functools.lru_cache(maxsize=None)
def compiled(spec: str):
    """(IR, namespace holding the lowered source) of a spec file name or spec text."""
    rec = check(spec) if "\n" in spec else load_spec(SPECS / f"{spec}.rec")
    namespace = {"torch": torch, "triton": triton, "tl": tl}
    exec(compile(lower_cell(rec).source, f"<cell {rec.name}>", "exec"), namespace)
    return rec, namespace


def tuned(spec: str, **tuning):
    """(IR, a fresh namespace of the lowered source with these `_cell_tuning` entries): the
    namespace's functions read its own `_cell_tuning`, so it is updated in place."""
    rec, ns = compiled.__wrapped__(spec)
    ns["_cell_tuning"].update(tuning)
    return rec, ns


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||; NaN anywhere gives NaN (which never passes)."""
    got, want = got.double(), want.double()
    scale = want.norm().item()
    return (got - want).norm().item() / (scale if scale > 0 else 1.0)


def draw(rec, B, T, dims, gen, n_seq, with_init):
    """Random float64 inputs and params, and (optionally) initial states the cell can reach:
    the final states of a short warm-up run from the spec's initial values."""
    dims = {**rec.fixed_dims, **dims}

    def full(decl, lead):
        return lead + tuple(dims[d] if isinstance(d, str) else d for d in decl.shape)
    inputs = [sample_input(full(d, (B, T, H)), d.annotations, gen) for d in rec.inputs]
    params = []
    for d in rec.params:
        p = torch.randn(full(d, (H,)), generator=gen, dtype=torch.float64)
        if len(d.shape) >= 2:   # a recurrent matrix: keep the cell out of saturation
            p = p * 0.5 / dims.get(d.shape[-1], d.shape[-1]) ** 0.5
        params.append(p)
    init = None
    if with_init:
        warm = [sample_input(full(d, (n_seq, 3, H)), d.annotations, gen) for d in rec.inputs]
        _, final = reference(rec, *warm, *params, output_final_state=True)
        init = final if isinstance(final, tuple) else (final,)
        init = tuple(s.float() for s in init)
    return inputs, params, init


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def check_cell(spec, *, B, T, dims, with_init, cu_seqlens=None, dtype=torch.float32, tol=1e-4,
               d_outputs=True, d_finals=True, seed=0, namespace=None):
    rec, ns = compiled(spec)
    ns = namespace or ns
    gen = torch.Generator().manual_seed(seed)
    n_seq = B if cu_seqlens is None else len(cu_seqlens) - 1
    inputs, params, init = draw(rec, B, T, dims, gen, n_seq, with_init)
    args = [a.to(dtype) for a in inputs + params]
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, dtype=torch.int32)
    state_arg = None if init is None else (init if len(init) > 1 else init[0])

    # the oracle: float64 on the very values the kernel sees
    ref_args = [a.double().requires_grad_() for a in args]
    ref_init = None if init is None else [s.double().requires_grad_() for s in init]
    out, final = reference(rec, *ref_args, output_final_state=True, cu_seqlens=cu,
                           initial_state=None if ref_init is None else tuple(ref_init))
    out, final = as_tuple(out), as_tuple(final)
    d_out = [torch.randn(o.shape, generator=gen, dtype=torch.float64) if d_outputs else None for o in out]
    d_fin = [torch.randn(f.shape, generator=gen, dtype=torch.float64) if d_finals else None for f in final]
    loss = sum((o * d).sum() for o, d in zip(out, d_out) if d is not None) + \
        sum((f * d).sum() for f, d in zip(final, d_fin) if d is not None)
    wrt = ref_args + (ref_init or [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]

    call = bind(rec, tuple(args), dict(initial_state=state_arg, output_final_state=True, cu_seqlens=cu))
    call.requires_grad = True   # the op sets this when a backward will follow
    outs, finals, saved = ns["_forward"](call)
    d_outs = {o.name: None if d is None else d.to(dtype) for o, d in zip(rec.outputs, d_out)}
    d_fins = {s.name: None if d is None else d.float() for s, d in zip(rec.states, d_fin)}
    d_inputs, d_params, d_initial = ns["_backward"](call, saved, d_outs, d_fins)

    errors = {}
    for o, want in zip(rec.outputs, out):
        assert outs[o.name].dtype == dtype and outs[o.name].shape == want.shape
        errors[f"output {o.name}"] = rel_err(outs[o.name], want)
    for s, want in zip(rec.states, final):
        assert finals[s.name].dtype == torch.float32
        errors[f"final {s.name}"] = rel_err(finals[s.name], want)
    got_grads = [d_inputs[d.name] for d in rec.inputs] + [d_params[d.name] for d in rec.params]
    names = [f"d {d.name}" for d in rec.inputs + rec.params]
    if init is not None:
        got_grads += [d_initial[s.name] for s in rec.states]
        names += [f"d initial {s.name}" for s in rec.states]
    else:
        assert all(v is None for v in d_initial.values())
    for name, got, want in zip(names, got_grads, grads):
        assert got.shape == want.shape, name
        errors[name] = rel_err(got, want)
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"{spec if len(spec) < 20 else rec.name}: relative errors over {tol}: {bad}"
    return errors


# ---- the three cells of specs/ --------------------------------------------------------------

@pytest.mark.parametrize("with_init", [False, True], ids=["fresh", "init"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 7, 13])
@pytest.mark.parametrize("D", [8, 16])
@pytest.mark.parametrize("spec", CELLS)
def test_cell_matches_reference_fp32(spec, D, T, B, with_init):
    check_cell(spec, B=B, T=T, dims={"D": D}, with_init=with_init, seed=D * 100 + T * 10 + B)


@pytest.mark.parametrize("cu", [[0, 4, 13, 15], [0, 5, 5, 13]], ids=["4-9-2", "5-0-8"])
@pytest.mark.parametrize("with_init", [False, True], ids=["fresh", "init"])
@pytest.mark.parametrize("spec", CELLS)
def test_cell_varlen_matches_reference(spec, with_init, cu):
    check_cell(spec, B=1, T=cu[-1], dims={"D": 16}, with_init=with_init, cu_seqlens=cu)


@pytest.mark.parametrize("spec", CELLS)
def test_cell_bf16_inputs(spec):
    check_cell(spec, B=3, T=7, dims={"D": 16}, with_init=True, dtype=torch.bfloat16, tol=2e-2)


@pytest.mark.parametrize("which", ["outputs only", "finals only"])
def test_cell_backward_with_missing_cotangents(which):
    check_cell("lstm", B=3, T=5, dims={"D": 8}, with_init=True,
               d_outputs=which == "outputs only", d_finals=which == "finals only")


def test_cell_more_sequences_than_one_tile():
    """Several programs per head: param gradients are summed over their partial sums."""
    rec, ns = tuned("gru", BB=16)
    check_cell("gru", B=20, T=4, dims={"D": 8}, with_init=True, namespace=ns)


@pytest.mark.parametrize("resident", [0, 1])
def test_cell_param_matrices_resident_or_not(resident):
    """R in shared memory for the whole loop, or read every step (the interpreter model picks 0)."""
    rec, ns = tuned("lstm", RESIDENT=resident)
    check_cell("lstm", B=3, T=5, dims={"D": 8}, with_init=True, namespace=ns)


@pad_nan
@pytest.mark.parametrize("spec", ["lstm", MIXER], ids=["lstm", "mixer"])
def test_cell_backward_recomputing_products(spec):
    """With `save_dots` off the backward recomputes the param-matrix products from the states."""
    rec, ns = tuned(spec, save_dots=False)
    dims = {"D": 8, "E": 5} if spec == MIXER else {"D": 8}
    check_cell(spec, B=3, T=5, dims=dims, with_init=True, namespace=ns)


def test_cell_forward_without_gradient_saves_nothing():
    rec, ns = compiled("lstm")
    gen = torch.Generator().manual_seed(0)
    inputs, params, init = draw(rec, 3, 5, {"D": 8}, gen, 3, True)
    call = bind(rec, tuple(a.float() for a in inputs + params), dict(initial_state=init))
    call.requires_grad = True
    outs, finals, saved = ns["_forward"](call)
    assert [tuple(t.shape) for t in saved] == [tuple(t.shape) for t in ns["_saved_like"](call)]
    assert [tuple(t.shape) for t in saved] == [(15, H, 8)] * 2 + [(15, H, 8)] * 4
    call.requires_grad = False
    outs2, finals2, saved2 = ns["_forward"](call)
    assert saved2 == () and ns["_saved_like"](call) == []
    assert torch.equal(outs2["y"], outs["y"]) and torch.equal(finals2["c"], finals["c"])


@pad_nan
@pytest.mark.parametrize("dw", ["registers", "gemm"])
@pytest.mark.parametrize("spec", ["lstm", "gru", MIXER], ids=["lstm", "gru", "mixer"])
def test_cell_param_gradient_modes(spec, dw):
    """dW accumulated in registers, or g and v stored per step and one GEMM after (varlen too)."""
    rec, ns = tuned(spec, dw=dw)
    dims = {"D": 8, "E": 5} if spec == MIXER else {"D": 8}
    check_cell(spec, B=3, T=5, dims=dims, with_init=True, namespace=ns)
    check_cell(spec, B=1, T=11, dims=dims, with_init=False, cu_seqlens=[0, 3, 3, 11], namespace=ns)


# ---- the family, beyond the three cells ------------------------------------------------------

@pad_nan
@pytest.mark.parametrize("with_init", [False, True], ids=["fresh", "init"])
def test_cell_generic_mixer(with_init):
    check_cell(MIXER, B=3, T=6, dims={"D": 8, "E": 5}, with_init=with_init)


@pad_nan
def test_cell_generic_mixer_varlen():
    check_cell(MIXER, B=1, T=9, dims={"D": 16, "E": 5}, with_init=True, cu_seqlens=[0, 2, 9])


@pytest.mark.parametrize("with_init", [False, True], ids=["fresh", "init"])
def test_cell_generic_peephole(with_init):
    check_cell(PEEPHOLE, B=3, T=5, dims={"D": 8}, with_init=with_init)


def test_cell_elementwise_recurrence_lowers_too():
    check_cell("first_order", B=2, T=9, dims={"D": 8}, with_init=True)


def test_cell_lowered_interface():
    low = lower_cell(load_spec(SPECS / "lstm.rec"))
    assert low.strategy == "cell"
    for name in ("def lstm_fwd_kernel(", "def lstm_bwd_kernel(", "def _forward(call)",
                 "def _backward(call, saved, d_outputs, d_finals)"):
        assert name in low.source
    assert "4 param-matrix products" in low.why


@pytest.mark.parametrize("spec, message", [
    ("mlstm", "specs/mlstm.rec:9:10: cell strategy: state 'C' is a matrix ['K', 'V']; cells carry vector "
              "states (matrix states go to the recurrent or chunked strategy)"),
    ("softmax_scan", "cell strategy: a monoid combine is a scan, not a cell step"),
])
def test_cell_rejects_specs_outside_the_family(spec, message):
    with pytest.raises(NotACell) as err:
        lower_cell(load_spec(SPECS / f"{spec}.rec"))
    assert message in str(err.value)


@pytest.mark.parametrize("body, message", [
    ("  let z = x + outer(x, x) @ h\n", "<spec>:7:15: cell strategy: 'outer' makes a matrix or is not elementwise"),
    ("  let z = x + R * 2.0 @ h\n", "the param matrix 'R' is used elementwise"),
])
def test_cell_rejects_non_cell_terms(body, message):
    source = ("recurrence bad\n  dims D\n  input x[D]\n  param R[D, D]\n  state h[D]\n  let w = x\n" + body +
              "  h = tanh(z)\n  output y[D] = h\n")
    with pytest.raises(NotACell) as err:
        lower_cell(check(source))
    assert message in str(err.value)


# ---- end to end: recc.load -> generated module -> custom op with autograd ----------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RECC_CACHE_DIR", str(tmp_path_factory.mktemp("recc_cache")))
    yield
    mp.undo()


@pytest.mark.parametrize("spec", CELLS)
def test_cell_op_end_to_end(spec, cache):
    op = recc.load(SPECS / f"{spec}.rec")
    assert op.module.STRATEGY == "cell"
    rec = load_spec(SPECS / f"{spec}.rec")
    args = random_arguments(rec, B=3, T=7, H=2, dims={"D": 16})
    args[1] = args[1] / 16 ** 0.5
    assert_close_to_reference(op, rec, args, {"initial_state": random_initial_state(rec, args)}, tol=1e-4)
    cu = torch.tensor([0, 4, 13, 15], dtype=torch.int32)
    args = random_arguments(rec, B=1, T=15, H=2, dims={"D": 16}, dtype=torch.bfloat16, seed=1)
    assert_close_to_reference(op, rec, args, {"cu_seqlens": cu}, tol=2e-2)
