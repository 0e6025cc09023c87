"""Stage 6: IR + plan -> the text of an importable Python module.

Only validated identifiers (checked by `recc.check` against the grammar's NAME
rule, Python keywords and reserved names) and numbers enter the templates; the
spec's own text enters only as a string literal, never as code. The plan
(`recc.plan`) picks the strategy; its lowering (`recc.lower.*`) supplies the
kernels and `_forward` / `_backward`; `templates/module.py.jinja` wraps them
in a torch.library custom op with autograd, next to the float64 reference.
"""
from __future__ import annotations

import hashlib
import keyword
import re
import textwrap

import jinja2

from . import __version__, ir
from .lower.emit import Namer
from .resources import templates_dir


def spec_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def _identifier(name: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"not a valid identifier: {name!r}")  # the checker guarantees this never happens
    return name


def _display_path(path: str) -> str:
    """A file path safe to show inside a docstring or comment."""
    return re.sub(r"[^A-Za-z0-9_./ -]", "?", path)


def _docstring_safe(text: str, indent: int = 13) -> str:
    """Text that cannot end the module docstring, wrapped under its label."""
    words = " ".join(text.replace("\\", "/").replace('"' * 3, "'" * 3).split())
    return textwrap.fill(words, 110, subsequent_indent=" " * indent, break_on_hyphens=False)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Op"


def _tiles_text(tiles: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in tiles.items()) or "none"


def _wrapped(items: list, sep: str, newline: str, width: int = 88) -> str:
    """items joined by sep, a line break (newline: the break and the next line's indent) before
    an item that would pass `width` characters."""
    lines = [""]
    for item in items:
        piece = (sep if lines[-1] else "") + item
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines[-1] += sep.rstrip()
            lines.append(item)
        else:
            lines[-1] += piece
    return newline.join(lines)


def _op_names(rec: ir.Recurrence) -> dict:
    """Names of the custom op's flat arguments: spec names for tensors and
    consts, fresh names (never a spec name) for the rest."""
    spec_names = [d.name for d in rec.inputs + rec.params + rec.states + rec.outputs + rec.dims] + \
        [c.name for c in rec.consts]
    namer = Namer(spec_names + ["torch", "List", "Optional", "cu_seqlens"])
    initial = [namer.fresh(f"initial_{s.name}") for s in rec.states]
    tensors = [_identifier(d.name) for d in rec.inputs + rec.params]
    consts = [_identifier(c.name) for c in rec.consts]
    d_outputs = [namer.fresh(f"d_{o.name}") for o in rec.outputs]
    d_finals = [namer.fresh(f"d_final_{s.name}") for s in rec.states]
    pack = initial[0] if len(initial) == 1 else \
        f"None if all(x is None for x in ({', '.join(initial)},)) else ({', '.join(initial)},)"
    tensor_sig = [f"{t}: torch.Tensor" for t in tensors] + [f"{c}: float" for c in consts]
    tensor_sig += [f"{i}: Optional[torch.Tensor]" for i in initial] + ["cu_seqlens: Optional[torch.Tensor]"]
    dict_text = lambda keys, values: "{" + ", ".join(f"{k!r}: {v}" for k, v in zip(keys, values)) + "}"
    return {
        "op_args": ", ".join(tensors + consts + initial + ["cu_seqlens"]),
        "op_signature": ", ".join(tensor_sig),
        "tensor_args": ", ".join(tensors),
        "initial_args": ", ".join(initial),
        "initial_pack": pack,
        "cu_arg": "cu_seqlens",
        "const_pairs": list(zip(consts, consts)),
        "req_arg": namer.fresh("requires_grad"),
        "saved_arg": namer.fresh("saved"),
        "grad_args": ", ".join(d_outputs + d_finals),
        "grad_signature": ", ".join(f"{d}: Optional[torch.Tensor]" for d in d_outputs + d_finals),
        "d_outputs_dict": dict_text([o.name for o in rec.outputs], d_outputs),
        "d_finals_dict": dict_text([s.name for s in rec.states], d_finals),
        "input_names": repr([d.name for d in rec.inputs]),
        "param_names": repr([d.name for d in rec.params]),
        "n_tensors": len(tensors), "n_consts": len(consts), "n_states": len(rec.states),
        "n_results": len(rec.outputs) + len(rec.states),
        # the op's results in order: outputs, then final states (from _forward's dicts)
        "results_list": ", ".join([f"_outputs[{o.name!r}]" for o in rec.outputs] +
                                  [f"_finals[{s.name!r}]" for s in rec.states]),
        # the gradients of inputs and params in signature order (from _backward's dicts)
        "grads_list": ", ".join([f"_d_inputs.get({d.name!r})" for d in rec.inputs] +
                                [f"_d_params.get({d.name!r})" for d in rec.params]),
        "d_initial_gets": ", ".join(f"_d_initial.get({s.name!r})" for s in rec.states),
        "no_initial": "(None,)" if len(rec.states) == 1 else "(" + ", ".join(["None"] * len(rec.states)) + ")",
        "grads_missing": " or ".join(f"_grads[{i}] is None" for i in range(len(rec.inputs) + len(rec.params))),
        # the public function's results from the op's: output or tuple, final state or tuple
        "pack_output": "_results[0]" if len(rec.outputs) == 1 else f"tuple(_results[:{len(rec.outputs)}])",
        "pack_final": f"_results[{len(rec.outputs)}]" if len(rec.states) == 1 else
                      f"tuple(_results[{len(rec.outputs)}:{len(rec.outputs) + len(rec.states)}])",
    }


def render_module(rec: ir.Recurrence, strategy: str | None = None, tiles: dict | None = None) -> str:
    """The module `recc compile` writes for a checked recurrence; `strategy`
    forces one and `tiles` overrides tile choices (see `recc.plan`)."""
    from .plan import plan
    chosen, lowered = plan(rec, strategy, tiles)
    shape = lambda d: d.name + ("[" + ", ".join(map(str, d.shape)) + "]" if d.shape else "")
    names = [_identifier(d.name) for d in rec.inputs + rec.params]
    return _environment().get_template("module.py.jinja").render(
        name=_identifier(rec.name),
        function=_camel(rec.name) + "Function",
        version=__version__,
        file=_display_path(rec.file),
        file_literal=repr(rec.file),
        spec_hash=spec_hash(rec.source),
        spec_literal=repr(rec.source),
        strategy=chosen.strategy,
        decoder=chosen.decoder,
        why=_docstring_safe(chosen.why),
        tiles=_docstring_safe(_tiles_text(chosen.tiles)),
        lowered=lowered is not None,
        traceable=lowered is not None and lowered.traceable,
        source=lowered.source.rstrip() if lowered is not None else "",
        call_args=", ".join(names),
        contiguous_all=_wrapped([f"{n}.is_contiguous()" for n in names], " and ", "\n" + " " * 12),
        requires_any=_wrapped([f"{n}.requires_grad" for n in names], " or ", "\n" + " " * 12),
        first_arg=names[0],
        consts=[_identifier(c.name) for c in rec.consts],
        inputs=", ".join(shape(d) for d in rec.inputs),
        params=", ".join(shape(d) for d in rec.params),
        states=", ".join(shape(d) for d in rec.states),
        outputs=[shape(d) for d in rec.outputs],
        output_names=repr([o.name for o in rec.outputs]),
        state_names=repr([s.name for s in rec.states]),
        **_op_names(rec),
    )
