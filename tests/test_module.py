"""The generated module: what it contains, how it is cached and loaded, how the op
checks its arguments, registers as a custom op and survives torch.compile."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

import recc
from recc import runtime
from recc.check import load as load_spec
from recc.cli import main as recc_main
from recc.errors import ArgumentError, ReccError
from recc.plan import plan
from recc.render import render_module, spec_hash
from oracle import assert_close_to_reference, random_arguments, random_initial_state, relative_error

SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECC_CACHE_DIR", str(tmp_path / "cache"))


def gla_op():
    op = recc.load(SPECS / "gla.rec", strategy="recurrent")
    op.module.TILES.update(BV=4, BV_bwd=4, CHUNK=4)
    return op


def gla_args(B=2, T=6, H=1, size=8, seed=0):
    rec = load_spec(SPECS / "gla.rec")
    return random_arguments(rec, B, T, H, {"K": size, "V": size}, seed=seed)


# ---- the module's text ----------------------------------------------------------------

def test_module_names_its_kernels_strategy_tiles_and_spec_hash():
    rec = load_spec(SPECS / "gated_delta_net.rec")
    text = render_module(rec, strategy="recurrent")
    header = ast.get_docstring(ast.parse(text))
    assert spec_hash(rec.source) in header
    assert "strategy:    recurrent" in header
    assert "BV=16" in header and "BV_bwd=32" in header and "CHUNK=32" in header
    assert "state tile [BK, BV]" in header and "REG_STEPS=1" in header
    for kernel in ("gated_delta_net_fwd_kernel", "gated_delta_net_bwd_kernel"):
        assert f"def {kernel}(" in text
    assert "class GatedDeltaNetFunction(torch.autograd.Function)" in text
    assert "torch.library.register_autograd" in text and ".register_fake" in text


def test_the_header_says_what_runs_and_whether_torch_compile_traces_it():
    """A chunked module names its decoder; it says torch.compile cannot trace it (no _saved_like),
    where a recurrent one says it keeps the op whole."""
    rec = load_spec(SPECS / "gated_delta_net.rec")
    chunked = ast.get_docstring(ast.parse(render_module(rec)))
    recurrent = ast.get_docstring(ast.parse(render_module(rec, strategy="recurrent")))
    assert "strategy:    chunked (calls of few steps: recurrent, chosen per call)\n" in chunked
    assert "torch.compile cannot trace it yet" in chunked and "keeps it" not in chunked
    assert "so torch.compile keeps it\nwhole" in recurrent and "cannot trace" not in recurrent


def test_the_householder_transition_is_applied_not_built():
    text = render_module(load_spec(SPECS / "delta_net.rec"), strategy="recurrent")
    assert "tl.dot" not in text
    assert "[BK, BK]" not in text          # no K x K matrix is ever materialised


def test_the_spec_text_enters_the_module_only_as_a_string(tmp_path):
    spec = tmp_path / "tricky.rec"
    spec.write_text('# """ + __import__("os").system("echo pwned") + """\n'
                    "recurrence tricky\n  dims D\n  input a[D]: gate, b[D]\n  state x[D]\n"
                    "  x = a * x + b\n  output y[D] = x\n")
    tree = ast.parse(render_module(load_spec(spec), strategy="recurrent"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "system"]
    assert not calls


def test_a_spec_no_kernel_lowers_runs_the_reference(tmp_path, monkeypatch):
    monkeypatch.setattr("recc.plan.candidates", lambda rec: ("recurrent",))
    rec = load_spec(SPECS / "lstm.rec")
    chosen, lowered = plan(rec)
    assert chosen.strategy == "reference" and lowered is None
    assert "square matrix over D" in chosen.why
    text = render_module(rec)
    assert "No kernel lowering accepts this spec yet" in text


def test_a_forced_strategy_that_cannot_lower_the_spec_says_why():
    with pytest.raises(ReccError, match="strategy 'recurrent' cannot lower this spec: R.* square matrix"):
        plan(load_spec(SPECS / "lstm.rec"), "recurrent")


def test_compile_command_writes_the_recurrent_module(tmp_path):
    out = tmp_path / "gla_module.py"
    assert recc_main(["compile", str(SPECS / "gla.rec"), "-o", str(out), "--strategy", "recurrent"]) == 0
    module = runtime.import_path(out, "compiled_gla_for_test")
    assert module.STRATEGY == "recurrent"
    args = gla_args()
    module.TILES.update(BV=4, BV_bwd=4, CHUNK=4)
    assert_close_to_reference(module.gla, module._REC, args, tol=1e-4)


# ---- cache and loading ------------------------------------------------------------------

def test_second_load_imports_from_the_cache_without_rendering(monkeypatch):
    for name in [n for n in sys.modules if n.startswith("recc_generated_retnet_")]:
        monkeypatch.delitem(sys.modules, name)    # loaded by an earlier test (e.g. a chunked op's decoder)
    first = recc.load(SPECS / "retnet.rec", strategy="recurrent")
    name = first.module.__name__
    monkeypatch.delitem(sys.modules, name)

    def refuse(*a, **k):
        raise AssertionError("rendered again")
    monkeypatch.setattr("recc.render.render_module", refuse)
    second = recc.load(SPECS / "retnet.rec", strategy="recurrent")
    assert second.module is not first.module
    assert Path(second.module.__file__) == Path(first.module.__file__)
    assert recc.load(SPECS / "retnet.rec", strategy="recurrent").module is second.module


def test_cache_key_follows_the_spec_text_and_strategy():
    rec = load_spec(SPECS / "gla.rec")
    key = runtime.cache_key(rec.source, "recurrent")
    assert key == runtime.cache_key(rec.source, "recurrent")
    assert key != runtime.cache_key(rec.source + "\n", "recurrent")
    assert key != runtime.cache_key(rec.source, None)


def test_a_module_imported_twice_registers_its_op_under_a_fresh_name(tmp_path):
    out = tmp_path / "retnet_twice.py"
    recc_main(["compile", str(SPECS / "retnet.rec"), "-o", str(out), "--strategy", "recurrent"])
    a = runtime.import_path(out, "retnet_twice_a")
    b = runtime.import_path(out, "retnet_twice_b")
    assert a._OP != b._OP and a._OP.startswith("recc::retnet_")


# ---- the op -----------------------------------------------------------------------------

def test_the_op_is_a_custom_op_with_autograd():
    op = gla_op()
    name = op.module._OP.split("::")[1]
    assert hasattr(torch.ops.recc, name) and hasattr(torch.ops.recc, name + "_backward")
    args = [a.requires_grad_() for a in gla_args()]
    out, final = op(*args, output_final_state=True)
    assert final.dtype == torch.float32 and out.grad_fn is not None
    (out.sum() + final.sum()).backward()
    assert all(a.grad is not None for a in args)


def test_gradients_of_gradients_are_refused():
    """The eager backward is once differentiable: under create_graph=True its gradients carry
    the error autograd raises when they are differentiated again (not silently wrong ones)."""
    op = gla_op()
    args = [t.requires_grad_() for t in gla_args()]
    out, _ = op(*args)
    grads = torch.autograd.grad((out * out).sum(), args, create_graph=True)   # d out = 2 out: differentiable
    assert all(g.requires_grad for g in grads)
    with pytest.raises(RuntimeError, match="differentiate twice a function that was marked with @once_differentiable"):
        sum(g.sum() for g in grads).backward()
    out, _ = op(*args)
    grads = torch.autograd.grad((out * out).sum(), args)   # the plain backward: no graph of the gradients
    assert not any(g.requires_grad for g in grads)


def test_no_checkpoints_are_saved_without_gradients():
    op = gla_op()
    q, k, v, g = gla_args()
    results = op.module._gla_op(q, k, v, g, 8 ** -0.5, None, None, False)
    assert results[2].shape[0] == 0
    results = op.module._gla_op(q, k, v, g, 8 ** -0.5, None, None, True)
    assert results[2].shape[0] == 2 * 2            # two sequences of 6 steps, a checkpoint every 4


def test_torch_compile_fullgraph_keeps_the_op_whole():
    op = gla_op()
    args = gla_args(seed=5)
    init = random_initial_state(op.module._REC, args)

    def loss(q, k, v, g, h0):
        o, s = op(q, k, v, g, initial_state=h0, output_final_state=True)
        return (o * o).sum() + s.sum()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_leaves = [t.clone().requires_grad_() for t in args + [init]]
    compiled_leaves = [t.clone().requires_grad_() for t in args + [init]]
    loss(*eager_leaves).backward()
    compiled(*compiled_leaves).backward()
    for a, b in zip(eager_leaves, compiled_leaves):
        assert relative_error(b.grad, a.grad) < 1e-6


def test_on_a_device_without_kernels_the_op_runs_the_reference(monkeypatch):
    op = gla_op()
    args = gla_args()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not runtime.kernels_available(args[0].device)
    out, _ = op(*args)
    ref, _ = op.reference(*args)
    assert relative_error(out, ref) < 1e-5


# ---- a chunked op's calls of few steps ------------------------------------------------------
# A chunked op runs a call of few steps (decoding) with its spec's recurrent op where the tile
# solver's model prices that lower (recc.plan.call_strategy; on the CPU the H100's model decides).

def _decoding_op(spec):
    op = recc.load(SPECS / f"{spec}.rec")
    assert (op.module.STRATEGY, op.module.DECODER) == ("chunked", "recurrent")
    return op


@pytest.mark.parametrize("spec", ["gated_delta_net", "gla", "mlstm", "delta_product"])
def test_a_decoding_call_runs_the_recurrent_kernels(spec):
    """One step with the state carried in (decoding, no gradient) and two steps of training: the
    chunked op hands them to the recurrent strategy's op of its spec, and the results match the
    float64 reference (outputs, final states, every gradient, the initial state's too)."""
    op = _decoding_op(spec)
    rec = op.module._REC
    for T, grad in ((1, False), (2, True)):
        args = random_arguments(rec, 2, T, 2, {d: 8 for d in rec.free_dims}, seed=T)
        init = random_initial_state(rec, args)
        op.module._STRATEGY_OF.clear()
        assert_close_to_reference(op, rec, args, {"initial_state": init}, tol=1e-4, grad=grad)
        assert list(op.module._STRATEGY_OF.values()) == ["recurrent"]
        assert op.module._DECODER_OP.module.STRATEGY == "recurrent"


def test_a_long_call_stays_chunked_and_varlen_decides_by_the_average_sequence():
    """64 steps run the chunked kernels; a packed batch of 3 sequences of 1-2 tokens decodes, one of
    64 and 70 does not (the choice is per call shape: the average sequence length)."""
    op = _decoding_op("gated_delta_net")
    rec = op.module._REC
    cases = [(64, None, "chunked"), (5, [0, 2, 3, 5], "recurrent"), (134, [0, 64, 134], "chunked")]
    for T, cu, want in cases:
        args = random_arguments(rec, 1 if cu else 2, T, 2, {"K": 8, "V": 8}, seed=T)
        kwargs = {"cu_seqlens": torch.tensor(cu, dtype=torch.int32)} if cu else {}
        op.module._STRATEGY_OF.clear()
        assert_close_to_reference(op, rec, args, kwargs, tol=1e-4, grad=False)
        assert list(op.module._STRATEGY_OF.values()) == [want], (T, cu)


def test_a_forced_strategy_has_no_decoder():
    """recc.load(..., strategy="chunked") runs the chunked kernels whatever the call."""
    op = recc.load(SPECS / "gated_delta_net.rec", strategy="chunked")
    assert op.module.DECODER is None and not hasattr(op.module, "_STRATEGY_OF")
    rec = op.module._REC
    assert_close_to_reference(op, rec, random_arguments(rec, 2, 1, 2, {"K": 8, "V": 8}), tol=1e-4, grad=False)


def test_the_crossover_lies_at_few_steps():
    """Where the model hands calls to the recurrent kernels: a handful of steps (1-64) for every
    chunked spec with a recurrent lowering, never at the training shapes of the benchmarks (1K+),
    and recc check says so."""
    from recc.plan import decoding_steps
    for path in sorted(SPECS.glob("*.rec")):
        rec = load_spec(path)
        chosen, _ = plan(rec)
        if chosen.decoder is None:
            continue
        for hw in ("h100", "h200"):
            for grad in (False, True):
                assert 1 <= decoding_steps(rec, hw, grad) <= 64, (rec.name, hw, grad)
        assert decoding_steps(rec, "h200", False, B=4, H=16) < 1024


# ---- argument errors name the argument ---------------------------------------------------

def test_a_non_contiguous_input_is_named():
    op = gla_op()
    q, k, v, g = gla_args()
    k = torch.cat([k, k], dim=-1)[..., ::2]          # every other element: strided
    with pytest.raises(ArgumentError, match=r"gla\(\): argument 'k' must be contiguous"):
        op(q, k, v, g)


def test_a_non_contiguous_initial_state_is_named():
    op = gla_op()
    args = gla_args()
    init = random_initial_state(op.module._REC, args).transpose(-1, -2)
    with pytest.raises(ArgumentError, match="argument 'initial_state' must be contiguous"):
        op(*args, initial_state=init)


def test_a_wrong_shape_is_named_with_the_expected_layout():
    op = gla_op()
    q, k, v, g = gla_args()
    with pytest.raises(ArgumentError, match=r"argument 'g' must have shape \[B, T, H, K\] = \[2, 6, 1, 8\]"):
        op(q, k, v, g[..., :4])


def test_a_wrong_dtype_is_named():
    op = gla_op()
    q, k, v, g = gla_args()
    with pytest.raises(ArgumentError, match="argument 'v' must be a floating-point tensor, got torch.int64"):
        op(q, k, v.long(), g)


def test_cu_seqlens_must_cover_the_packed_batch():
    op = gla_op()
    args = gla_args(B=1)
    with pytest.raises(ArgumentError, match="'cu_seqlens' must rise from 0 to T = 6"):
        op(*args, cu_seqlens=torch.tensor([0, 2, 5]))
