"""Stage 5: IR (+ plan) -> the text of an importable Python module.

Only validated identifiers (checked by `recc.check` against the grammar's NAME
rule, Python keywords and reserved names) and numbers enter the templates; the
spec's own text enters only as a string literal, never as code.
"""
from __future__ import annotations

import hashlib
import keyword
import re

import jinja2

from . import __version__, ir
from .resources import templates_dir


def spec_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _identifier(name: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"not a valid identifier: {name!r}")  # the checker guarantees this never happens
    return name


def _display_path(path: str) -> str:
    """A file path safe to show inside a docstring or comment."""
    return re.sub(r"[^A-Za-z0-9_./ -]", "?", path)


def render_module(rec: ir.Recurrence) -> str:
    """The module `recc compile` writes for a checked recurrence."""
    shape = lambda d: d.name + ("[" + ", ".join(map(str, d.shape)) + "]" if d.shape else "")
    names = [_identifier(d.name) for d in rec.inputs + rec.params]
    return _environment().get_template("module.py.jinja").render(
        name=_identifier(rec.name),
        version=__version__,
        file=_display_path(rec.file),
        file_literal=repr(rec.file),
        spec_hash=spec_hash(rec.source),
        spec_literal=repr(rec.source),
        strategy="reference",
        why="no GPU kernels are generated yet: the op runs the sequential reference in float32",
        call_args=", ".join(names),
        first_arg=names[0],
        consts=[_identifier(c.name) for c in rec.consts],
        inputs=", ".join(shape(d) for d in rec.inputs),
        params=", ".join(shape(d) for d in rec.params),
        states=", ".join(shape(d) for d in rec.states),
        outputs=[shape(d) for d in rec.outputs],
    )
