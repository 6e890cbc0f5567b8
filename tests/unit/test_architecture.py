"""The layers of pyproject.toml's import-linter contracts hold (the test command checks them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    command = str(exe) if exe.exists() else shutil.which("lint-imports")
    if command is None:
        pytest.fail("lint-imports is missing: pip install the dev extra (import-linter)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this checkout's package, not an installed one
    return subprocess.run([command, "--no-cache", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_are_kept():
    p = lint_imports()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout and "ignored" not in p.stdout.lower()


def test_a_broken_layer_is_reported(tmp_path):
    # The same tool on a contract the code breaks on purpose: the API does import the model package.
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "adcopilot"\n\n[[tool.importlinter.contracts]]\n'
        'name = "upside down"\ntype = "layers"\nlayers = ["adcopilot.model", "adcopilot.api"]\n'
    )
    p = lint_imports("--config", str(config))
    assert p.returncode == 1 and "adcopilot.model is not allowed to import adcopilot.api" not in p.stdout
    assert "adcopilot.api is not allowed to import adcopilot.model" in p.stdout
