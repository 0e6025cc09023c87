"""Stage 6: compile once, cache by content, import.

`load(path)` checks the spec, renders its module into the user's cache
directory under a key made of the spec's text and the versions of recc,
triton and torch, and imports it. A second call with the same inputs only
imports. Files are written to a temporary name and renamed, so a crash never
leaves a half-written module behind.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from . import __version__
from .check import load as load_spec


def cache_dir() -> Path:
    root = os.environ.get("RECC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "recc")
    return Path(root)


def _versions() -> str:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - triton is a dependency
        triton_version = "none"
    import torch
    return f"recc={__version__};triton={triton_version};torch={torch.__version__}"


def cache_key(source: str) -> str:
    return hashlib.sha256((_versions() + "\0" + source).encode("utf-8")).hexdigest()[:24]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def import_path(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load(path: str | os.PathLike):
    """Compile a spec (once; cached) and return its op. The op carries
    `.reference` (the float64 oracle) and `.module` (the generated module)."""
    from .render import render_module
    rec = load_spec(path)
    key = cache_key(rec.source)
    target = cache_dir() / key / f"{rec.name}.py"
    if not target.exists():
        write_atomic(target, render_module(rec))
    module = import_path(target, f"recc_generated_{rec.name}_{key}")
    op = getattr(module, rec.name)
    op.reference = module.reference
    op.module = module
    return op
