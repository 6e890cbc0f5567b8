"""`adcopilot adapt` end to end on real ELPV cells with the shipped model: variants, bad files, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from adcopilot.data.elpv import load_cells


def run(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADCOPILOT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "adcopilot", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """good/{mono,poly} (3 cells each, one truncated file), defective/mono (2 cells), a query and a reference."""
    root = tmp_path_factory.mktemp("adapt")
    cells = load_cells()
    good = {k: [c for c in cells if c.probability == 0.0 and c.kind == k] for k in ("mono", "poly")}
    bad = [c for c in cells if c.probability == 1.0 and c.kind == "mono"]
    for kind, chosen in good.items():
        (root / "good" / kind).mkdir(parents=True)
        for c in chosen[:3]:
            shutil.copyfile(c.path, root / "good" / kind / c.name)
    (root / "good" / "mono" / "truncated.png").write_bytes(good["mono"][0].path.read_bytes()[:400])
    (root / "defective" / "mono").mkdir(parents=True)
    for c in bad[:2]:
        shutil.copyfile(c.path, root / "defective" / "mono" / c.name)
    shutil.copyfile(good["mono"][5].path, root / "ref.png")
    shutil.copyfile(bad[3].path, root / "query.png")
    return root


def test_adapt_writes_a_checkpoint_inspect_takes(product, tmp_path):
    out = tmp_path / "nano-cells"
    r = run("adapt", "--normals", str(product / "good"), "--defects", str(product / "defective"), "--out", str(out),
            "--steps", "3", "--batch-size", "2", "--size", "64", "--licence", "test cells", home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "good images per variant: mono 3, poly 3" in r.stderr
    assert "truncated.png" in r.stderr and "Traceback" not in r.stderr
    card = (out / "MODEL_CARD.md").read_text()
    assert '"variants"' in card and "test cells" in card and "Product memory" in card
    # The product memory: one bank per variant, calibrated on held-out good images.
    from adcopilot.model.memory import ProductMemory

    memory = ProductMemory.load(out)
    assert memory is not None and sorted(memory.variants) == ["mono", "poly"]
    assert json.loads((out / "config.json").read_text())["memory_weight"] == 0.5  # fine-tuned: the default
    assert all(v.high > v.low and v.bank.shape[1] == 152 for v in memory.variants.values())
    assert (out / "model.safetensors").is_file() and json.loads((out / "config.json").read_text())["architecture"]
    r = run("inspect", str(product / "query.png"), "--ref", str(product / "ref.png"), "--model", str(out), "--json",
            home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["verdict"] in ("normal", "anomalous") and 0.0 <= result["score"] <= 1.0


def test_adapt_memory_only_in_seconds(product, tmp_path):
    """--steps 0: the base weights, unchanged, with a product memory; inspection fuses both maps."""
    out = tmp_path / "memory-only"
    r = run("adapt", "--normals", str(product / "good"), "--out", str(out), "--steps", "0", "--memory-weight", "1",
            home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not fine-tuned" in (out / "MODEL_CARD.md").read_text()
    assert json.loads((out / "config.json").read_text())["memory_weight"] == 1.0
    from adcopilot import Copilot

    cp = Copilot.load(str(out))
    a = cp.analyze(product / "query.png", [product / "ref.png"])
    b = cp.analyze(product / "ref.png", [product / "ref.png"])
    assert a.amap.max() <= 1.0 and b.score < a.score  # the reference against itself is normal
    assert cp.detector.describe()["memory"]["variants"]["mono"]["images"] >= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--normals", "ONE", "--memory-weight", "2"], "--memory-weight must lie in [0, 1]"),
        (["--normals", "ONE", "--memory-weight", "most"], "--memory-weight must be 'auto' or a number"),
        (["--normals", "ONE", "--validation", "0.8"], "--validation must lie in [0, 0.5]"),
        (["--normals", "ONE", "--memory-weight", "auto", "--memory-patches", "0"], "auto needs a product memory"),
        (["--normals", "ONE", "--steps", "-1"], "--steps must be 0 or more"),
        (["--normals", "ONE", "--padim", "maybe"], "--padim must be 'auto' or 'off'"),
        (["--normals", "ONE", "--lr", "nan"], "--lr must be a positive number, got nan"),
        (["--normals", "ONE", "--batch-size", "0"], "--batch-size must be 1 or more"),
        (["--normals", "ONE", "--size", "100"], "--size must be a multiple of 16 from 32 to 1024, got 100"),
        (["--normals", "ONE", "--size", "100000"], "--size must be a multiple of 16"),  # would exhaust memory
        (["--normals", "ONE", "--steps", "0", "--memory-patches", "0"], "nothing to do"),
        (["--normals", "MISSING"], "no such folder"),
        (["--normals", "EMPTY"], "no images found"),
        (["--normals", "ONE"], "at least two readable good images"),
    ],
)
def test_adapt_bad_input(product, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "one").mkdir()
    shutil.copyfile(product / "ref.png", tmp_path / "one" / "ref.png")
    folders = {"MISSING": tmp_path / "nope", "EMPTY": tmp_path / "empty", "ONE": tmp_path / "one"}
    argv = [str(folders.get(a, a)) for a in args]
    r = run("adapt", "--steps", "1", "--out", str(tmp_path / "o"), *argv, home=tmp_path)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr


def test_adapt_validates_on_held_out_images_and_can_choose_the_weight(tmp_path):
    """A variant of 10 or more good images: a share is held out (validation.json), measured in the card;
    --memory-weight auto keeps the weight with the best validation AUROC for that variant."""
    cells = [c for c in load_cells() if c.probability == 0.0 and c.kind == "mono"][:12]
    good = tmp_path / "good" / "mono"
    good.mkdir(parents=True)
    for c in cells:
        shutil.copyfile(c.path, good / c.name)
    out = tmp_path / "fixed"
    r = run("adapt", "--normals", str(tmp_path / "good"), "--out", str(out), "--steps", "0", "--memory-weight", "0.75",
            home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    split = json.loads((out / "validation.json").read_text())
    assert len(split["normals"]) == 2 and all(n.startswith("mono/") for n in split["normals"])
    config = json.loads((out / "config.json").read_text())
    assert config["memory_weight"] == 0.75 and config["memory_weights"] == {}  # as given
    # A fused score's threshold comes from held-out good images only: 2 are too few to set it.
    assert config["threshold"] == 0.5 and "threshold 0.5 kept: 2 good images held out are too few" in r.stderr
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Validation (held-out images" in card
    # --steps 0 measures PaDiM's share of the memory's map too (0 to 1) and keeps one at the weight given.
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert f"| mono, PaDiM share {share} | 2 | 2 (synthetic) |" in card
    assert "validation, variant mono: image AUROC" in r.stderr and "weight kept 0.75" in r.stderr
    # The memory beside the model holds every good image; the validation's held 10. PaDiM's statistics are
    # kept only when the validation chose a share above 0.
    from adcopilot.model.memory import ProductMemory

    memory = ProductMemory.load(out)
    assert memory is not None and memory.variants["mono"].images >= 10
    kept = memory.variants["mono"].padim
    assert "PaDiM's share of the memory's map per variant" in card
    assert (kept is None) == ("mono 0.0" in card.split("PaDiM's share")[1].splitlines()[0])
    if kept is not None:
        assert kept.stats.images == memory.variants["mono"].images and kept.share in (0.25, 0.5, 0.75, 1.0)
        assert kept.score == "peak"
    off = tmp_path / "off"
    r = run("adapt", "--normals", str(tmp_path / "good"), "--out", str(off), "--steps", "0", "--memory-weight", "0.75",
            "--padim", "off", home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| mono | 2 | 2 (synthetic) |" in (off / "MODEL_CARD.md").read_text()
    assert ProductMemory.load(off).variants["mono"].padim is None

    auto = tmp_path / "auto"  # --steps 0 chooses the weight on the validation images by default
    r = run("adapt", "--normals", str(tmp_path / "good"), "--out", str(auto), "--steps", "0", home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    config = json.loads((auto / "config.json").read_text())
    assert list(config["memory_weights"]) == ["mono"] and config["memory_weights"]["mono"] in (0, 0.25, 0.5, 0.75, 1)
    assert json.loads((auto / "validation.json").read_text()) == split  # the same seeded split
    from adcopilot import Copilot

    assert Copilot.load(str(auto)).detector.memory_weights == config["memory_weights"]
    # Where the memory alone scores, its held-out good images set the threshold on the memory's own scale.
    if config["memory_weights"]["mono"] == 1:
        assert config["threshold"] != 0.5 and "the 95% quantile of 14 good images' scores" in r.stderr  # 2 held out + 12
        assert f"Threshold: {config['threshold']}, the 95% quantile" in (auto / "MODEL_CARD.md").read_text()
        assert Copilot.load(str(auto)).detector.threshold_for(2) == config["threshold"]
    else:
        assert config["threshold"] == 0.5
    # No validation: every image trains, nothing is measured.
    none = tmp_path / "none"
    r = run("adapt", "--normals", str(tmp_path / "good"), "--out", str(none), "--steps", "0",
            "--validation", "0", home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (none / "validation.json").exists() and "## Validation" not in (none / "MODEL_CARD.md").read_text()
    assert json.loads((none / "config.json").read_text())["memory_weight"] == 0.75  # nothing to choose on
    # Without a memory the validation measures the fine-tuned comparison model alone; a memory left in the
    # folder by an earlier run is removed, not inherited.
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copyfile(out / "memory.safetensors", plain / "memory.safetensors")
    r = run("adapt", "--normals", str(tmp_path / "good"), "--out", str(plain), "--steps", "1", "--size", "64",
            "--batch-size", "2", "--memory-patches", "0", home=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    card = (plain / "MODEL_CARD.md").read_text()
    assert "| variant | good | defective | image AUROC |" in card and "weight kept" not in r.stderr
    assert not (plain / "memory.safetensors").exists()
