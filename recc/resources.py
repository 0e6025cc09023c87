"""Where recc's grammar and template files live, installed or in a checkout.

In a wheel, `grammar/` and `templates/` are installed as the packages
`recc.grammar` and `recc.templates`; in a checkout they sit beside `recc/`.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def _data_dir(package: str, folder: str) -> Path:
    local = _CHECKOUT / folder
    if local.is_dir():
        return local
    return Path(str(resources.files(package)))


def grammar_path(name: str) -> Path:
    return _data_dir("recc.grammar", "grammar") / name


def templates_dir() -> Path:
    return _data_dir("recc.templates", "templates")
