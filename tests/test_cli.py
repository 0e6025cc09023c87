"""The `recc` command line, the modules `recc compile` writes, and the generated
ops' argument checks."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recc import __version__
from recc.check import load
from recc.cli import main
from recc.errors import ArgumentError
from recc.primitives import sample_input
from recc.runtime import import_path

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.rec"))
JSON_KEYS = {"name", "dims", "inputs", "states", "outputs", "params"}


def run(args, capsys):
    status = main(args)
    out = capsys.readouterr()
    return status, out.out, out.err


def relative_error(actual, expected) -> float:
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    assert torch.isfinite(actual).all(), "non-finite values"
    return ((actual.double() - expected).norm() / expected.norm()).item()


# ---- version, help ------------------------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"recc {__version__}\n"


def test_help_names_both_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: recc")
    assert "check" in out and "compile" in out and "recc check --json" in out


def test_no_command_prints_help_and_fails(capsys):
    status, out, err = run([], capsys)
    assert status == 2 and out.startswith("usage: recc")


def test_module_entry_point():
    """`python -m recc.cli` is the same command; a missing file is one line on stderr, status 1."""
    version = subprocess.run([sys.executable, "-m", "recc.cli", "--version"], capture_output=True, text=True)
    assert (version.returncode, version.stdout) == (0, f"recc {__version__}\n")
    missing = subprocess.run([sys.executable, "-m", "recc.cli", "check", "no/such.rec"], capture_output=True,
                             text=True)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == "recc: no/such.rec: no such file\n"


# ---- check --------------------------------------------------------------------------------

def test_check_every_example(capsys):
    status, out, err = run(["check"] + [str(p) for p in SPECS], capsys)
    assert status == 0 and err == ""
    for path in SPECS:
        assert f"{path.stem}  ({path})" in out


def test_check_prints_what_it_sees(capsys):
    path = ROOT / "specs" / "gated_delta_net.rec"
    status, out, err = run(["check", str(path)], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"gated_delta_net  ({path})"
    assert "  inputs   q[K], k[K], v[V], g, beta   per step: [B, T, H, ...]" in lines
    assert "  states   S[K, V]   carried: [N, H, ...]" in lines
    assert "  outputs  o[V]" in lines


def test_check_says_which_strategy_runs_and_why(capsys):
    """The plan: chunked for training shapes, and up to how many steps a call runs the recurrent
    kernels instead (decoding), on the model --hardware names (the interpreter's: the H100's)."""
    path = str(ROOT / "specs" / "gated_delta_net.rec")
    status, out, err = run(["check", "--hardware", "h200", path], capsys)
    assert status == 0
    plan = [line for line in out.splitlines() if line.startswith("  plan ")]
    assert len(plan) == 1 and plan[0].startswith("  plan     chunked: matrix state S[K, V] with an affine update")
    assert "calls of few steps run recurrent instead, where the H200 model prices it lower" in out
    status, out, err = run(["check", "--json", path], capsys)
    data = json.loads(out)["plan"]
    assert (data["strategy"], data["decoder"]) == ("chunked", "recurrent")
    steps = data["decoding_steps"]
    assert steps["hardware"] == "H100" and 1 <= steps["forward"] <= 64 and 1 <= steps["forward_backward"] <= 64
    status, out, err = run(["check", "--json", str(ROOT / "specs" / "lstm.rec")], capsys)
    assert json.loads(out)["plan"]["strategy"] == "cell" and json.loads(out)["plan"]["decoder"] is None


def test_check_json_of_one_spec(capsys):
    status, out, err = run(["check", "--json", str(ROOT / "specs" / "delta_product.rec")], capsys)
    assert status == 0
    data = json.loads(out)
    assert JSON_KEYS <= set(data)
    assert data["name"] == "delta_product"
    assert data["dims"] == {"K": None, "V": None, "n": 2}
    assert [d["name"] for d in data["inputs"]] == ["q", "k", "v", "g", "beta"]
    assert data["inputs"][1] == {"name": "k", "shape": ["n", "K"], "annotations": [{"name": "unit", "args": []}]}
    assert data["states"] == [{"name": "S", "shape": ["K", "V"], "init": 0.0}]
    assert data["outputs"] == [{"name": "o", "shape": ["V"]}]
    assert data["params"] == []


def test_check_json_of_every_example(capsys):
    status, out, err = run(["check", "--json"] + [str(p) for p in SPECS], capsys)
    assert status == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == [p.stem for p in SPECS]
    for d in data:
        assert JSON_KEYS <= set(d), d["name"]


def test_check_stops_at_the_first_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.rec"
    bad.write_text("recurrence bad\n  dims K\n  input x[K]\n  state s[K]\n  s = y\n  output o = s\n")
    status, out, err = run(["check", str(SPECS[0]), str(bad)], capsys)
    assert status == 1
    assert err.splitlines()[0] == f"{bad}:5:7: 'y' is not declared"


# ---- compile ------------------------------------------------------------------------------

def arguments(rec, B=2, T=5, H=2, size=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    dims = {d: size for d in rec.free_dims} | rec.fixed_dims
    full = lambda lead, decl: lead + tuple(dims[d] if isinstance(d, str) else d for d in decl.shape)
    args = [sample_input(full((B, T, H), d), d.annotations, gen, dtype) for d in rec.inputs]
    args += [0.5 * sample_input(full((H,), d), d.annotations, gen, dtype) for d in rec.params]
    return args


def compile_module(spec: Path, out: Path, capsys):
    status, stdout, err = run(["compile", str(spec), "-o", str(out)], capsys)
    assert status == 0, err
    assert stdout == f"wrote {out}: {spec.stem}() and reference()\n"
    return import_path(out, f"recc_test_cli_{out.stem}")


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_compiled_op_matches_its_reference(spec, tmp_path, capsys):
    """At 5 steps, and for a chunked module (which hands calls of few steps to its decoder, the
    recurrent op) at 40 too: each path once, and the test says which ran."""
    module = compile_module(spec, tmp_path / f"{spec.stem}.py", capsys)
    op = getattr(module, spec.stem)
    rec = load(spec)
    for T, path in ((5, module.DECODER), (40, module.STRATEGY)) if module.DECODER else ((5, None),):
        args = arguments(rec, T=T)
        if path:
            module._STRATEGY_OF.clear()
        out, final = op(*args, output_final_state=True)
        assert not path or list(module._STRATEGY_OF.values()) == [path], (T, module._STRATEGY_OF)
        ref, ref_final = module.reference(*args, output_final_state=True)
        assert ref.dtype == torch.float64 and out.dtype == torch.float32
        assert relative_error(out, ref) < 1e-5
        finals = (final, ref_final) if isinstance(final, tuple) else ((final,), (ref_final,))
        for f, r in zip(*finals):
            assert relative_error(f, r) < 1e-5


def test_compiled_op_on_packed_sequences_with_initial_state(tmp_path, capsys):
    spec = ROOT / "specs" / "gated_delta_net.rec"
    module = compile_module(spec, tmp_path / "gdn.py", capsys)
    args = arguments(load(spec), B=1, T=9)
    init = torch.randn(3, 2, 16, 16)
    cu = torch.tensor([0, 2, 7, 9])
    out, final = module.gated_delta_net(*args, initial_state=init, output_final_state=True, cu_seqlens=cu)
    assert list(module._STRATEGY_OF.values()) == ["recurrent"]   # sequences of 3 steps on average: decoded
    ref, ref_final = module.reference(*args, initial_state=init, output_final_state=True, cu_seqlens=cu)
    assert relative_error(out, ref) < 1e-5 and relative_error(final, ref_final) < 1e-5


def test_compile_writes_next_to_the_spec_by_default(tmp_path, capsys):
    spec = tmp_path / "fo.rec"
    spec.write_text((ROOT / "specs" / "first_order.rec").read_text())
    status, out, err = run(["compile", str(spec)], capsys)
    assert status == 0 and (tmp_path / "fo.py").exists()


def test_compile_into_a_directory_names_the_module_after_the_recurrence(tmp_path, capsys):
    status, out, err = run(["compile", str(ROOT / "specs" / "first_order.rec"), "-o", str(tmp_path)], capsys)
    assert status == 0 and (tmp_path / "first_order.py").exists() and err == ""


def test_compile_of_a_bad_spec_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "bad.rec"
    spec.write_text("recurrence bad\n  dims K\n  input x[K]\n  state s[K]\n  s = s @ x\n  output o = s\n")
    out = tmp_path / "build" / "bad.py"
    status, stdout, err = run(["compile", str(spec), "-o", str(out)], capsys)
    assert status == 1 and stdout == ""
    assert err.splitlines()[0] == f"{spec}:5:9: '@' of two vectors ([K] @ [K]) is ambiguous; use dot(x, y) " \
                                  f"for the inner product or outer(x, y) for the outer product"
    assert not out.exists() and not out.parent.exists()


def test_compile_of_a_missing_spec_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.py"
    status, stdout, err = run(["compile", str(tmp_path / "x.rec"), "-o", str(out)], capsys)
    assert status == 1 and err == f"recc: {tmp_path / 'x.rec'}: no such file\n"
    assert not out.exists()


def test_compile_refuses_to_overwrite_the_spec(tmp_path, capsys):
    spec = tmp_path / "fo.rec"
    text = (ROOT / "specs" / "first_order.rec").read_text()
    spec.write_text(text)
    status, stdout, err = run(["compile", str(spec), "-o", str(spec)], capsys)
    assert status == 1 and "refusing to overwrite the spec itself" in err
    assert spec.read_text() == text


# ---- argument errors at call time name the argument ----------------------------------------------

@pytest.fixture(scope="module")
def gdn(tmp_path_factory):
    """The compiled gated DeltaNet op and valid arguments: q, k [1, 6, 2, 16], v [1, 6, 2, 8], g, beta [1, 6, 2]."""
    path = tmp_path_factory.mktemp("gdn") / "gdn_args.py"
    assert main(["compile", str(ROOT / "specs" / "gated_delta_net.rec"), "-o", str(path)]) == 0
    module = import_path(path, "recc_test_cli_gdn_args")
    q, k, g, beta = torch.randn(1, 6, 2, 16), torch.randn(1, 6, 2, 16), torch.randn(1, 6, 2), torch.rand(1, 6, 2)
    v = torch.randn(1, 6, 2, 8)
    return module, [q, k, v, g, beta]


def argument_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ArgumentError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("which", ["op", "reference"])
def test_wrong_shape_names_the_argument_and_where_its_dims_came_from(gdn, which):
    module, (q, k, v, g, beta) = gdn
    fn = getattr(module, "gated_delta_net" if which == "op" else "reference")
    msg = argument_error(fn, q, torch.randn(1, 6, 2, 12), v, g, beta)
    assert msg == "gated_delta_net(): argument 'k' must have shape [B, T, H, K] = [1, 6, 2, 16], K from 'q', " \
                  "got [1, 6, 2, 12]"
    msg = argument_error(fn, q, k, v, g, beta[0])
    assert msg == "gated_delta_net(): argument 'beta' must have shape [B, T, H] = [1, 6, 2], got [6, 2]"


def test_integer_tensor_names_the_argument(gdn):
    module, (q, k, v, g, beta) = gdn
    msg = argument_error(module.gated_delta_net, q, k, v, g.long(), beta)
    assert msg == "gated_delta_net(): argument 'g' must be a floating-point tensor, got torch.int64"


def test_not_a_tensor_names_the_argument(gdn):
    module, (q, k, v, g, beta) = gdn
    msg = argument_error(module.gated_delta_net, q, k, v, g, 0.5)
    assert msg == "gated_delta_net(): argument 'beta' must be a torch.Tensor, got float"


def test_wrong_number_of_tensors_names_them(gdn):
    from recc.reference import reference
    module, (q, k, v, g, beta) = gdn
    rec = load(ROOT / "specs" / "gated_delta_net.rec")
    msg = argument_error(reference, rec, q, k, v, g)
    assert msg == "gated_delta_net() takes 5 tensors (q, k, v, g, beta), got 4"
    # the generated op has a Python signature: a missing tensor is Python's own error, naming it
    with pytest.raises(TypeError, match="'beta'"):
        module.gated_delta_net(q, k, v, g)


@pytest.mark.parametrize("cu, message", [
    (torch.tensor([0, 3, 5]), "argument 'cu_seqlens' must rise from 0 to T = 6, got [0, 3, 5]"),
    (torch.tensor([0, 4, 3, 6]), "argument 'cu_seqlens' must rise from 0 to T = 6, got [0, 4, 3, 6]"),
    (torch.tensor([0.0, 6.0]), "argument 'cu_seqlens' must be a 1-D int32/int64 tensor"),
    ([0, 6], "argument 'cu_seqlens' must be a 1-D int32/int64 tensor"),
])
def test_bad_cu_seqlens(gdn, cu, message):
    module, args = gdn
    assert argument_error(module.gated_delta_net, *args, cu_seqlens=cu) == f"gated_delta_net(): {message}"


def test_cu_seqlens_needs_batch_one(gdn):
    module, args = gdn
    args = [torch.cat([a, a]) for a in args]
    msg = argument_error(module.gated_delta_net, *args, cu_seqlens=torch.tensor([0, 6]))
    assert msg == "gated_delta_net(): with cu_seqlens the batch size must be 1 (sequences packed along T), got B = 2"


def test_bad_initial_state_shape(gdn):
    module, args = gdn
    msg = argument_error(module.gated_delta_net, *args, initial_state=torch.zeros(1, 2, 16, 9))
    assert msg == "gated_delta_net(): argument 'initial_state' must have shape [N, H, K, V] = [1, 2, 16, 8], " \
                  "got [1, 2, 16, 9]"
    # N is the number of sequences when they are packed
    msg = argument_error(module.gated_delta_net, *args, initial_state=torch.zeros(1, 2, 16, 8),
                         cu_seqlens=torch.tensor([0, 2, 6]))
    assert msg == "gated_delta_net(): argument 'initial_state' must have shape [N, H, K, V] = [2, 2, 16, 8], " \
                  "got [1, 2, 16, 8]"


def test_initial_state_of_several_states_names_each(tmp_path, capsys):
    spec = ROOT / "specs" / "mlstm.rec"
    module = compile_module(spec, tmp_path / "mlstm_args.py", capsys)
    args = arguments(load(spec), B=1, T=3, H=2, size=4)
    msg = argument_error(module.mlstm, *args, initial_state=torch.zeros(1, 2, 4, 4))
    assert msg == "mlstm(): argument 'initial_state' must be a tuple of 2 tensors (C, n)"
    msg = argument_error(module.mlstm, *args, initial_state=(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 5)))
    assert msg == "mlstm(): argument 'initial_state[n]' must have shape [N, H, K] = [1, 2, 4], got [1, 2, 5]"


# ---- the language reference stays in step with the registries ---------------------------------------

def test_docs_list_every_primitive_annotation_and_reserved_name():
    from recc.check import RESERVED
    from recc.primitives import ANNOTATIONS, PRIMITIVES
    doc = (ROOT / "docs" / "dsl.md").read_text(encoding="utf-8")
    for name in PRIMITIVES:
        assert f"`{name}(" in doc, f"primitive {name} is missing from docs/dsl.md"
    for name in ANNOTATIONS:
        assert f"| `{name}" in doc, f"annotation {name} is missing from docs/dsl.md"
    for name in RESERVED:
        assert f"`{name}`" in doc, f"reserved name {name} is missing from docs/dsl.md"
