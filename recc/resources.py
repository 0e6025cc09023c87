"""Where recc's grammar and template files live, installed or in a checkout.

In a checkout, `grammar/` and `templates/` sit beside `recc/`; a wheel installs
them inside the package as `recc/grammar/` and `recc/templates/`.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(folder: str) -> Path:
    for candidate in (_PACKAGE / folder, _PACKAGE.parent / folder):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"recc's {folder}/ directory is missing from {_PACKAGE.parent}")


def grammar_path(name: str) -> Path:
    return _data_dir("grammar") / name


def templates_dir() -> Path:
    return _data_dir("templates")
