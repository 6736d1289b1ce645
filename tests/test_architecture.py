"""The architecture contracts (pyproject.toml [tool.importlinter]) hold, and really catch a broken layer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("facelake", "assets", "resources", "dagster_project", "synthetic")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports over the packages under ``root`` (they shadow the installed ones via PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_contracts_hold_on_this_tree(tmp_path):
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert " kept, 0 broken" in result.stdout and "BROKEN" not in result.stdout


def test_an_engine_module_importing_dagster_breaks_the_contract(tmp_path):
    root = _copy(tmp_path)
    hashing = root / "facelake" / "lake" / "hashing.py"
    hashing.write_text(hashing.read_text() + "\nimport dagster  # noqa: E402,F401\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "The engine never imports dagster" in result.stdout and "BROKEN" in result.stdout
    assert "facelake.lake.hashing -> dagster" in result.stdout


def test_a_lower_layer_importing_a_domain_breaks_the_layering(tmp_path):
    root = _copy(tmp_path)
    storage = root / "facelake" / "lake" / "storage.py"
    storage.write_text(storage.read_text() + "\nimport facelake.hyperface.packing  # noqa: E402,F401\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "facelake.lake.storage -> facelake.hyperface.packing" in result.stdout
