"""Fixtures of the integration suite: small lots of real ELPV cells, and the CLI run as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from adcopilot.data.elpv import load_cells


def run(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADCOPILOT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "adcopilot", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def elpv_lot(tmp_path_factory):
    """refs/ (3 mono + 3 poly normals), lot/good (8), lot/defect (6), calib/{good,defect} (other cells)."""
    root = tmp_path_factory.mktemp("elpv")
    cells = load_cells()
    good = [c for c in cells if c.probability == 0.0]
    bad = [c for c in cells if c.probability == 1.0]
    picks = {
        "refs": [c for c in good if c.kind == "mono"][:3] + [c for c in good if c.kind == "poly"][:3],
        "lot/good": [c for c in good if c.kind == "mono"][3:7] + [c for c in good if c.kind == "poly"][3:7],
        "lot/defect": bad[:6],
        "calib/good": good[20:36],
        "calib/defect": bad[6:16],
    }
    for folder, chosen in picks.items():
        (root / folder).mkdir(parents=True)
        for c in chosen:
            shutil.copyfile(c.path, root / folder / c.name)
    (root / "lot" / "defect" / "truncated.png").write_bytes(picks["lot/defect"][0].path.read_bytes()[:500])
    return root
