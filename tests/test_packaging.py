"""grammar/ and templates/ must ship inside the wheel, not only in a checkout."""
import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_data_folders_are_packaged():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in [("recc.grammar", "grammar"), ("recc.templates", "templates")]:
        assert package in config["packages"]
        assert config["package-dir"][package] == folder
        globs = config["package-data"][package]
        for f in (ROOT / folder).iterdir():
            if f.is_file():
                assert any(fnmatch.fnmatch(f.name, g) for g in globs), f"{folder}/{f.name} would not be installed"


def test_every_subpackage_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {"recc." + p.parent.relative_to(ROOT / "recc").as_posix().replace("/", ".")
             for p in (ROOT / "recc").rglob("__init__.py") if p.parent != ROOT / "recc"}
    assert found <= set(config["packages"]), found - set(config["packages"])
