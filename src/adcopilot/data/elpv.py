"""ELPV solar cells (Buerhop-Lutz et al. 2018; Deitsch et al. 2019), read from the installed package.

2,624 aligned 300x300 electroluminescence images of mono- and polycrystalline cells with a
defect probability of 0, 1/3, 2/3 or 1. The images are CC BY-NC-SA 4.0: they are used for
evaluation, the demo and the adaptation example, never for the shipped default model, and never
copied into the project.

The train/test split is made once per seed, stratified by (cell type, probability), and written
to ``$ADCOPILOT_HOME/data/elpv_split_seed{seed}.json`` so every tool uses the same split.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from adcopilot import assets
from adcopilot.errors import AdcopilotError

LICENCE = "CC BY-NC-SA 4.0"


@dataclass(frozen=True)
class Cell:
    path: Path
    probability: float
    kind: str  # "mono" or "poly"

    @property
    def name(self) -> str:
        return self.path.name


def load_cells() -> list[Cell]:
    """All ELPV cells with their labels, in the package's order."""
    root = assets.require("elpv")
    labels = root / "labels.csv"
    if not labels.exists():
        raise AdcopilotError(f"{labels}: ELPV labels file missing; reinstall with: adcopilot models fetch elpv")
    cells = []
    for line in labels.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        rel, prob, kind = parts
        cells.append(Cell(root / rel, float(prob), kind))
    return cells


def split(seed: int = 0, test_fraction: float = 0.5) -> dict[str, list[Cell]]:
    """Deterministic stratified split {"train": [...], "test": [...]}, written to disk once."""
    cells = load_cells()
    by_name = {c.name: c for c in cells}
    out = assets.home() / "data" / f"elpv_split_seed{seed}.json"
    if out.exists():
        names = json.loads(out.read_text())
        return {k: [by_name[n] for n in v] for k, v in names.items() if k in ("train", "test")}
    rng = random.Random(seed)
    groups: dict[tuple[str, float], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.kind, c.probability), []).append(c)
    train, test = [], []
    for key in sorted(groups):
        g = sorted(groups[key], key=lambda c: c.name)
        rng.shuffle(g)
        n_test = round(len(g) * test_fraction)
        test += g[:n_test]
        train += g[n_test:]
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "seed": seed,
        "test_fraction": test_fraction,
        "licence": LICENCE,
        "train": sorted(c.name for c in train),
        "test": sorted(c.name for c in test),
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out)
    return {"train": sorted(train, key=lambda c: c.name), "test": sorted(test, key=lambda c: c.name)}
