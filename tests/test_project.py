"""The project around the code: one version source, the licence, the typing marker, the changelog."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xprune
from xprune.cli._parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def test_one_version_everywhere(capsys):
    assert re.fullmatch(r"\d+\.\d+\.\d+", xprune.__version__)
    assert importlib.metadata.version("xprune") == xprune.__version__
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "xprune._version.__version__"}
    try:
        build_parser().parse_args(["--version"])
    except SystemExit as e:
        assert e.code == 0
    else:
        raise AssertionError("--version did not exit")
    assert capsys.readouterr().out == f"xprune {xprune.__version__}\n"


def test_version_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "xprune", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"xprune {xprune.__version__}"


def test_licence_is_the_declared_one():
    text = (ROOT / "LICENSE").read_text()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    declared = declared["text"] if isinstance(declared, dict) else declared
    assert declared == "MIT"
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text and "the xprune developers" in text


def test_typing_marker_in_the_package():
    assert (Path(xprune.__file__).parent / "py.typed").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["xprune"]


def test_changelog_names_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(xprune.__version__)}\]", changelog, re.M), "no section for this version"
    assert re.search(r"^## \[Unreleased\]", changelog, re.M)
