"""The layers of pyproject.toml's import-linter contracts hold (the test command checks them), and no
import inside a function hides an import cycle."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import adcopilot

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


#: The package modules a function outside commands/ may import late, and why (the commands load what
#: they run late for the CLI's start-up time). Anything else belongs at the top of its module.
LAZY_IMPORTS = {
    "adcopilot.api": "torch; the package's __getattr__ keeps `import adcopilot` light",
    "adcopilot.full.pipeline": "transformers, only for the full-scale path",
    "adcopilot.full.loading": "transformers, only for the full-scale path",
    "adcopilot.data.questions": "scipy, only once a multiple-choice question is asked",
}
PACKAGE = Path(adcopilot.__file__).parent


def function_level_imports(graph: grimp.ImportGraph) -> list[tuple[str, str, str]]:
    """(importing module, imported module, "file:line") of every package import inside a function."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        importer = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("adcopilot"):
                    module = node.module or ""
                    # `from adcopilot.data import synth` imports the module adcopilot.data.synth
                    targets = {f"{module}.{a.name}" if f"{module}.{a.name}" in graph.modules else module
                               for a in node.names}
                elif isinstance(node, ast.Import):
                    targets = {a.name for a in node.names if a.name.startswith("adcopilot")}
                else:
                    continue
                found += [(importer, t, f"{rel}.py:{node.lineno}") for t in sorted(targets)]
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("adcopilot")


def test_imports_inside_functions_outside_the_commands_have_a_reason(graph):
    found = function_level_imports(graph)
    assert any(i.startswith("adcopilot.commands.") for i, _, _ in found)  # the scan sees them
    unexplained = [f"{where} imports {t}" for i, t, where in found
                   if not i.startswith("adcopilot.commands.") and t not in LAZY_IMPORTS]
    assert not unexplained, "move to module level, or add to LAZY_IMPORTS with the reason: " + "; ".join(unexplained)


def test_no_import_inside_a_function_hides_a_cycle(graph):
    # Written at the top of its module instead, the import would close a cycle iff the imported
    # module already reaches the importing one.
    cycles = [f"{where} imports {t}, which imports {i} via {graph.find_shortest_chain(importer=t, imported=i)}"
              for i, t, where in function_level_imports(graph)
              if graph.find_shortest_chain(importer=t, imported=i) is not None]
    assert not cycles, "; ".join(cycles)
