"""Strategy `scan`: elementwise states as a parallel scan, against the float64 reference.

Kernels run under the Triton interpreter. Every case compares outputs, final states
and the gradients of every input, param and initial state with `recc.reference`
(tests/oracle.py). The interpreter runs `tl.associative_scan` one element at a time:
shapes stay small (B * H * T * D of a few thousand) and tiles are shrunk to match.
"""
import importlib.util
import warnings

import pytest
import torch

import recc
from recc.lower.scan import NotScannable, lower_scan, scan_form
from recc.reference import reference
from recc.signature import bind

from oracle import assert_close_to_reference, random_arguments, random_initial_state, relative_error

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}

# An HGRN-style gated state with a per-channel param; a Mamba1-style diagonal state with a
# step size per step and head (a scalar input), a scalar param and a const; two independent
# states, one a cumulative sum, read together by the output.
HGRN = """
recurrence hgrn
  dims   D
  input  i[D], f[D]
  param  w[D]
  state  h[D]
  let    g = sigmoid(f)
  h = g * h + (1 - g) * tanh(i * w)
  output o[D] = h * sigmoid(i)
"""
DIAGONAL_SSM = """
recurrence diagonal_ssm
  dims   D
  input  x[D], dt
  param  A[D], dt_bias
  const  scale = 0.5
  state  h[D]
  let    delta = softplus(dt + dt_bias)
  h = exp(-delta * exp(A)) * h + delta * x * scale
  output y[D] = h + x
"""
TWO_STATES = """
recurrence two_states
  dims   D
  input  a[D]: gate, b[D]
  state  x[D], z[D] = 1
  x = a * x + b
  z = z + b * b
  output y[D] = x * z
"""
# a decay per step and head (simple GLA's gate on a vector state): J spans steps only
SCALAR_GATE = """
recurrence scalar_gate
  dims   D
  input  g: log_gate, v[D]
  state  h[D]
  h = exp(g) * h + v
  output y[D] = h
"""
SPECS = {"hgrn": HGRN, "diagonal_ssm": DIAGONAL_SSM, "two_states": TWO_STATES, "scalar_gate": SCALAR_GATE}


@pytest.fixture(scope="module")
def specs_dir(tmp_path_factory):
    """Inline specs as files, and a private compile cache."""
    root = tmp_path_factory.mktemp("scan")
    for name, text in SPECS.items():
        (root / f"{name}.rec").write_text(text.lstrip())
    mp = pytest.MonkeyPatch()
    mp.setenv("RECC_CACHE_DIR", str(root / "cache"))
    yield root
    mp.undo()


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # the interpreter computes masked-off rows too
        yield


# tiles for the interpreter: blocks of 16 steps, 16 channels
SMALL = dict(variant="chunks", R=4, W=4, BT=16, BD=16, num_warps=4, fill=False)
VARIANTS = {"chunks-4x4": dict(SMALL), "chunks-3x8": dict(SMALL, R=3, W=8),
            "tile-16": dict(SMALL, variant="tile"), "tile-32": dict(SMALL, variant="tile", BT=32),
            "lookback-16": dict(SMALL, variant="lookback"), "lookback-32": dict(SMALL, variant="lookback", BT=32)}


def scan_op(name, specs_dir, tiles=None):
    """recc's op for a spec under strategy `scan`, with its tiles shrunk for the interpreter
    (`tiles={}`: no overrides, the solver's interpreter choice)."""
    path = f"specs/{name}.rec" if name not in SPECS else specs_dir / f"{name}.rec"
    op = recc.load(path, strategy="scan")
    assert op.module.STRATEGY == "scan"
    op.module._SCAN_TILES.clear()
    op.module._SCAN_TILES.update(SMALL if tiles is None else tiles)
    return op


def check(name, specs_dir, *, B=2, T=13, H=2, D=12, tiles=None, dtype=torch.float32, initial_state=False,
          seqlens=None):
    op = scan_op(name, specs_dir, tiles)
    rec = recc.load_spec(f"specs/{name}.rec") if name not in SPECS else recc.check(SPECS[name])
    kwargs = {}
    if seqlens is not None:
        B, T = 1, sum(seqlens)
        kwargs["cu_seqlens"] = torch.tensor([0] + seqlens).cumsum(0).to(torch.int32)
    args = random_arguments(rec, B, T, H, {"D": D}, dtype=dtype)
    if initial_state:
        kwargs["initial_state"] = random_initial_state(rec, args, N=len(seqlens) if seqlens else B)
    assert_close_to_reference(op, rec, args, kwargs, tol=TOL[dtype])


# ---- the first-order scan x_t = a_t x_{t-1} + b_t ----------------------------------------

@pytest.mark.parametrize("T", [1, 13, 70])
@pytest.mark.parametrize("initial_state", [False, True])
def test_first_order_matches_reference(T, initial_state, specs_dir):
    check("first_order", specs_dir, T=T, initial_state=initial_state)


def test_first_order_solver_tiles(specs_dir):
    """No overrides: the tiles the solver picks for the call (the interpreter model: the smallest legal)."""
    op = scan_op("first_order", specs_dir, {})
    rec = recc.load_spec("specs/first_order.rec")
    args = random_arguments(rec, 1, 40, 2, {"D": 12})
    assert_close_to_reference(op, rec, args, {"initial_state": random_initial_state(rec, args)})


def test_first_order_chunks_fill_the_warps(specs_dir):
    op = scan_op("first_order", specs_dir, dict(variant="chunks", BT=64, num_warps=4))   # W fills 4 warps, R = BT // W
    rec = recc.load_spec("specs/first_order.rec")
    args = random_arguments(rec, 1, 40, 2, {"D": 12})
    assert_close_to_reference(op, rec, args, {"initial_state": random_initial_state(rec, args)})


@pytest.mark.parametrize("variant,T", [("chunks-3x8", 70), ("tile-16", 13), ("tile-16", 70), ("tile-32", 70),
                                       ("lookback-16", 13), ("lookback-16", 70), ("lookback-32", 70)])
def test_first_order_kernel_variants(variant, T, specs_dir):
    check("first_order", specs_dir, T=T, tiles=VARIANTS[variant], initial_state=True)


def test_first_order_several_channel_tiles(specs_dir):
    check("first_order", specs_dir, B=1, T=20, D=40, initial_state=True)


@pytest.mark.parametrize("seqlens", [None, [7, 0, 33]])
def test_forward_and_backward_take_their_own_tiles(seqlens, specs_dir):
    """Blocks of 16 steps x 16 channels forward, 32 x 32 backward (D=40: three channel tiles one
    way, two the other; the backward's partial sums over channel tiles follow its own BD)."""
    tiles = dict(variant="tile", BT=16, BD=16, num_warps=4, BT_bwd=32, BD_bwd=32, num_warps_bwd=2)
    check("first_order", specs_dir, B=2, T=45, D=40, tiles=tiles, initial_state=True, seqlens=seqlens)
    check("scalar_gate", specs_dir, B=2, T=45, D=40, tiles=tiles, seqlens=seqlens)
    op, rec = scan_op("first_order", specs_dir, tiles), recc.load_spec("specs/first_order.rec")
    call = bind(rec, tuple(random_arguments(rec, 2, 45, 2, {"D": 40})), {})
    assert op.module._scan_tiles(call)[2:] == ({"BT": 16, "BD": 16}, 16, 4, {"BT": 32, "BD": 32}, 32, 2)


@pytest.mark.parametrize("initial_state", [False, True])
def test_first_order_varlen(initial_state, specs_dir):
    check("first_order", specs_dir, seqlens=[9, 1, 40], initial_state=initial_state)


def test_first_order_empty_sequence_passes_the_state_through(specs_dir):
    check("first_order", specs_dir, seqlens=[5, 0, 20], initial_state=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_first_order_half_inputs(dtype, specs_dir):
    check("first_order", specs_dir, T=70, dtype=dtype, initial_state=True)


def test_first_order_without_gradients_saves_nothing(specs_dir):
    op = scan_op("first_order", specs_dir)
    rec = recc.load_spec("specs/first_order.rec")
    call = bind(rec, tuple(random_arguments(rec, 1, 5, 1, {"D": 4})), {})
    call.requires_grad = False
    assert op.module._forward(call)[2] == ()
    call.requires_grad = True
    assert len(op.module._forward(call)[2]) == 1     # a float32 copy of x: the wrapper keeps y only as output


@pytest.mark.parametrize("dtype,copies", [(torch.float32, 0), (torch.bfloat16, 1)])
def test_first_order_op_saves_float32_outputs_as_states(dtype, copies, specs_dir):
    """With float32 outputs the op saves y (bitwise x) for the backward instead of writing a copy
    of x; with bf16 outputs it writes the float32 copy. The gradients are right either way."""
    op = scan_op("first_order", specs_dir)
    rec = recc.load_spec("specs/first_order.rec")
    args = [x.to(dtype).requires_grad_() for x in random_arguments(rec, 2, 21, 2, {"D": 8})]
    call = op.module._bind_op(*args, None, None, True)
    assert call.outputs_saved == (dtype == torch.float32)
    assert len(op.module._forward(call)[2]) == copies
    y, _ = op(*args)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, args, dy)
    ref_args = [x.detach().double().requires_grad_() for x in args]
    y_ref, _ = reference(rec, *ref_args)
    ref_grads = torch.autograd.grad(y_ref, ref_args, dy.double())
    for g, r in zip(grads, ref_grads):
        assert relative_error(g, r) < TOL[dtype]


# ---- the lowered source itself: the saved-outputs protocol and the loop variants ----------

class _Lowered(torch.autograd.Function):
    """A wrapper that saves the outputs the backward reads (`_SAVED_OUTPUTS`) itself.
    `tensors`: the op's inputs and params, then the initial states (if any)."""

    @staticmethod
    def forward(ctx, module, rec, kwargs, n_args, *tensors):
        initial = tensors[n_args:]
        call = bind(rec, tensors[:n_args], {**kwargs, "initial_state": initial or None})
        outs, finals, saved = module._forward(call)
        ctx.module, ctx.call, ctx.n_init = module, call, len(initial)
        ctx.save_for_backward(*[outs[o] for o in module._SAVED_OUTPUTS], *saved)
        return (*outs.values(), *finals.values())

    @staticmethod
    def backward(ctx, *grads):
        rec = ctx.call.rec
        d_out = dict(zip([o.name for o in rec.outputs], grads))
        d_fin = dict(zip([s.name for s in rec.states], grads[len(rec.outputs):]))
        d_in, d_par, d_init = ctx.module._backward(ctx.call, ctx.saved_tensors, d_out, d_fin)
        d_init = [d_init[s.name] for s in rec.states] if ctx.n_init else []
        return (None, None, None, None, *[d_in[d.name] for d in rec.inputs],
                *[d_par[d.name] for d in rec.params], *d_init)


def lowered_op(rec, tmp_path, tiles, **options):
    path = tmp_path / f"{rec.name}_scan.py"
    path.write_text(lower_scan(rec, **options).source)   # triton.jit reads its functions' source
    spec = importlib.util.spec_from_file_location(f"scan_{rec.name}_{abs(hash(str(options)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._WRAPPER_SAVES_OUTPUTS = True
    module._SCAN_TILES.clear()
    module._SCAN_TILES.update(tiles)

    def op(*tensors, output_final_state=False, initial_state=None, **kwargs):
        initial = () if initial_state is None else \
            (initial_state if isinstance(initial_state, tuple) else (initial_state,))
        results = _Lowered.apply(module, rec, kwargs, len(tensors), *tensors, *initial)
        outs, finals = results[:len(rec.outputs)], results[len(rec.outputs):]
        return (outs[0] if len(outs) == 1 else outs), (finals[0] if len(finals) == 1 else finals)
    return op


@pytest.mark.parametrize("variant,options", [
    ("chunks-4x4", {}), ("tile-16", {}), ("tile-16", dict(prefetch=False)),
    ("tile-16", dict(prefetch=False, loop_stages=2)), ("lookback-16", {}),
], ids=["chunks", "tile-prefetch", "tile-plain", "tile-stages", "lookback"])
def test_lowered_source_with_saved_outputs(variant, options, tmp_path):
    rec = recc.load_spec("specs/first_order.rec")
    args = random_arguments(rec, 2, 40, 2, {"D": 12})
    assert_close_to_reference(lowered_op(rec, tmp_path, VARIANTS[variant], **options), rec, args,
                              {"initial_state": random_initial_state(rec, args)})


# ---- a user monoid: the running log-sum-exp -----------------------------------------------

@pytest.mark.parametrize("T,initial_state", [(13, False), (40, True)])
def test_softmax_scan_matches_reference(T, initial_state, specs_dir):
    check("softmax_scan", specs_dir, B=1, T=T, initial_state=initial_state)


def test_softmax_scan_varlen(specs_dir):
    check("softmax_scan", specs_dir, H=1, seqlens=[7, 1, 20], initial_state=True)


def test_softmax_scan_bf16(specs_dir):
    check("softmax_scan", specs_dir, B=1, T=20, dtype=torch.bfloat16)


# ---- gated and diagonal states with params, consts, scalar inputs -------------------------

@pytest.mark.parametrize("name", ["hgrn", "diagonal_ssm", "two_states", "scalar_gate"])
@pytest.mark.parametrize("initial_state", [False, True])
def test_elementwise_states_match_reference(name, initial_state, specs_dir):
    check(name, specs_dir, T=37, initial_state=initial_state)


def test_diagonal_ssm_varlen(specs_dir):
    check("diagonal_ssm", specs_dir, seqlens=[9, 1, 30], initial_state=True)


# ---- what the scan form is --------------------------------------------------------------

def test_scan_form_splits_the_affine_update():
    form = scan_form(recc.load_spec("specs/first_order.rec"))
    (group,) = form.groups
    assert (group.coef.name, group.bias.name) == ("a", "b")


def test_scan_form_reads_the_monoid_orientation():
    (group,) = scan_form(recc.load_spec("specs/softmax_scan.rec")).groups
    assert group.monoid.name == "lse" and group.states == ("m", "s") and group.state_left


@pytest.mark.parametrize("name,message", [
    ("lstm", "indexing and tuples are not lowered"),
    ("gla", "vector over one channel dim"),
    ("mamba2", "vector over one channel dim"),
])
def test_outside_the_scan_form_says_why(name, message):
    with pytest.raises(NotScannable, match=message):
        scan_form(recc.load_spec(f"specs/{name}.rec"))


def test_nonlinear_update_is_refused():
    rec = recc.check("recurrence sq\n  dims D\n  input a[D]\n  state x[D]\n  x = a * x * x\n  output y[D] = x\n")
    with pytest.raises(NotScannable, match="not affine in 'x'"):
        scan_form(rec)


def test_coupled_states_are_refused():
    rec = recc.check("recurrence cp\n  dims D\n  input a[D]\n  state x[D], z[D]\n"
                     "  x = a * x + z\n  z = a * z\n  output y[D] = x\n")
    with pytest.raises(NotScannable, match="reads state 'z'"):
        scan_form(rec)


# ---- the look-back variant: time split over the grid, carries passed between programs -------

@pytest.mark.parametrize("name", ["first_order", "softmax_scan", "hgrn", "diagonal_ssm", "two_states", "scalar_gate"])
def test_lookback_variant_matches_reference(name, specs_dir):
    check(name, specs_dir, B=2, T=40, D=20, tiles=VARIANTS["lookback-16"], initial_state=True)


def test_lookback_variant_falls_back_for_varlen(specs_dir):
    check("first_order", specs_dir, H=2, seqlens=[7, 0, 20], tiles=VARIANTS["lookback-16"], initial_state=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lookback_variant_half_inputs(dtype, specs_dir):
    check("first_order", specs_dir, T=40, tiles=VARIANTS["lookback-16"], dtype=dtype)
