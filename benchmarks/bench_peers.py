"""Side by side with anomalib: PatchCore and PaDiM against this project's models, same features and draws.

Every method sees the same 256 px images, the same test queries and, in each draw, the same
normal images:

* anomalib 2.7.0's own ``PatchcoreModel`` (memory: k-center-greedy coreset, or a random subset of
  the same size) and ``PadimModel``, on this project's EfficientNet-Lite0 stride-8 and stride-16
  features (``benchmarks/peer_models.py``; anomalib's timm backbone is not used), fitted on the k
  normal images of the draw;
* this project's default model (and, with ``--baseline``, the training-free baseline), through
  ``Copilot.analyze`` with the k images of the draw as references (registration on, as ``inspect`` runs);
* the adapted model (``adapt --steps 0``: a product memory of the training normals, with PaDiM
  statistics where its validation split chose them, built here unless ``--adapted-elpv`` /
  ``--adapted-photos`` name one) with the draw's first image as its one reference, in the "all
  normals" column beside anomalib fitted on all training normals.

Datasets: ELPV mono and poly cells (test split of ``elpv.split(seed=0)``, labels 0 and 1, a fixed
seeded subset of ``--per-type`` cells of each type; normals from the training split) and the bundled
benchmark's held-out photos (4 classes: 8 training normals, 10 normal and 20 defective test images
with masks each; figures are the mean over classes), and ``--datasets surfaces``, the outside surfaces of
``benchmarks/surfaces.py`` (9 classes: 8 normals, 15 normal and 18 defective test images each, defects by
another library; the mean over classes). k = 1, 5 and all normals; ``--draws`` seeded
draws, each one set of k normal images shared by all queries of the draw (few-shot protocol), the
mean and the spread (standard deviation over draws) reported. Memory: ``--ratio`` (10 %) of the
normal patches few-shot, ``--full-ratio`` with all normals (1 % on ELPV, where a 10 % greedy coreset of
300,000-470,000 patches would take hours on one core; 10 % on the photos' 8 images).

    OMP_NUM_THREADS=1 nice python benchmarks/bench_peers.py [--quick] [--out benchmarks/results/peers.json]
    # the recorded run: one process per ELPV type and per photo class side by side, merged into one file
    for k in mono poly; do OMP_NUM_THREADS=1 nice python benchmarks/bench_peers.py --datasets elpv --kinds $k \
        --per-type 50 --full-memories random --merge & done
    for c in coffee_cup coins flower gravel; do OMP_NUM_THREADS=1 nice python benchmarks/bench_peers.py \
        --datasets photos --classes $c --full-ratio 0.1 --merge & done
    python benchmarks/bench_peers.py --table benchmarks/results/peers.json

When anomalib is missing (install: ``pip install -e ".[peers]" -c constraints/cpu-torch.txt``) the run
says so on its first line and measures this project's models only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peer_models import ANOMALIB_ERROR, AVAILABLE, VERSION, StoredFeatures, padim, patchcore

from adcopilot import Copilot, assets
from adcopilot.cli import main as cli_main
from adcopilot.data.elpv import split
from adcopilot.eval.detection import auroc, pixel_metrics
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.detector import to_batch
from adcopilot.model.memory import DEFAULT_PATCHES
from adcopilot.model.vision import FusedPatchTower, load_vision_tower

log = logging.getLogger("bench_peers")
SIZE = 256
PHOTOS = assets.home() / "benchmarks" / "bundled" / "HeldOut-Photos"
#: benchmarks/surfaces.py's outside surfaces (built on demand): product classes in the photos' layout
SURFACES = assets.home() / "benchmarks" / "surfaces" / "Surfaces"
CLASS_DATASETS = {"photos": PHOTOS, "surfaces": SURFACES}  # datasets of product classes, averaged over classes


@dataclass
class Task:
    """One product: its normal pool, test queries (label, mask or None) and its adapted model."""

    name: str
    normals: list[Path]
    tests: list[Path]
    labels: list[int]
    masks: list[Path | None] = field(default_factory=list)


def elpv_defects() -> dict[str, list[Path]]:
    """The training split's defective cells per type (labelled defects for ``adapt``'s validation)."""
    train = split(seed=0)["train"]
    return {k: [c.path for c in train if c.kind == k and c.probability == 1.0] for k in ("mono", "poly")}


def elpv_tasks(per_type: int, kinds: list[str]) -> list[Task]:
    parts = split(seed=0)
    tasks = []
    for kind in kinds:
        normals = [c.path for c in parts["train"] if c.kind == kind and c.probability == 0.0]
        items = [c for c in parts["test"] if c.kind == kind and c.probability in (0.0, 1.0)]
        if per_type and per_type < len(items):
            keep = np.random.default_rng(0).permutation(len(items))[:per_type]
            items = [items[i] for i in sorted(keep)]
        tasks.append(Task(f"elpv-{kind}", normals, [c.path for c in items],
                          [int(c.probability == 1.0) for c in items]))
    return tasks


def photo_tasks(classes: list[str] | None, dataset: str = "photos") -> list[Task]:
    """One task per product class of a class dataset (the bundled photos, or the surfaces)."""
    tasks = []
    root = CLASS_DATASETS[dataset]
    if not root.is_dir():
        raise SystemExit(f"{root}: not built (python benchmarks/surfaces.py)")
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and (not classes or p.name in classes)):
        tests = sorted((cls / "test").glob("*/*.png"))
        labels = [int(p.parent.name != "good") for p in tests]
        masks = [None if not y else cls / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
                 for p, y in zip(tests, labels, strict=True)]
        tasks.append(Task(f"{dataset}-{cls.name}", sorted((cls / "train" / "good").glob("*.png")), tests, labels, masks))
    return tasks


def load_mask(path: Path | None) -> np.ndarray:
    if path is None:
        return np.zeros((SIZE, SIZE), dtype=bool)
    return np.asarray(load_image(path).convert("L")) > 127


class FeatureStore:
    """The tower's features of every image once: rows of a :class:`StoredFeatures`."""

    def __init__(self, paths: list[Path]) -> None:
        tower = FusedPatchTower.from_tower(load_vision_tower())
        self.row = {p: i for i, p in enumerate(paths)}
        s8, s16 = [], []
        with torch.inference_mode():
            for i in range(0, len(paths), 16):
                x = to_batch([to_float_array(load_image(p), SIZE) for p in paths[i : i + 16]])  # (B, 3, S, S)
                f = tower.patch_features(x)
                s8.append(f["s8"].contiguous().clone())  # (B, 40, S/8, S/8)
                s16.append(f["s16"].contiguous().clone())  # (B, 112, S/16, S/16)
        self.module = StoredFeatures(torch.cat(s8), torch.cat(s16))

    def rows(self, paths: list[Path]) -> list[int]:
        return [self.row[p] for p in paths]


def draw(normals: list[Path], k: int | None, seed: int) -> list[Path]:
    """k normal images of the draw (None: all), the same for every method."""
    if k is None:
        return list(normals)
    rng = np.random.default_rng(1000 * seed + k)
    return [normals[i] for i in sorted(rng.choice(len(normals), k, replace=False))]


def score_run(task: Task, scores: np.ndarray, maps: list[np.ndarray] | None, seconds: float) -> dict:
    out = {"image_auroc": auroc(scores, task.labels), "ms_per_image": round(1000 * seconds / len(task.tests), 1)}
    if maps is not None and any(m is not None for m in task.masks):
        out.update(pixel_metrics(maps, [load_mask(m) for m in task.masks]))
    return out


def run_ours(cp: Copilot, task: Task, refs: list[Path]) -> dict:
    t = time.perf_counter()
    scores, maps = [], []
    for q in task.tests:
        a = cp.analyze(q, refs)
        scores.append(a.score)
        maps.append(a.amap)
    return score_run(task, np.asarray(scores), maps, time.perf_counter() - t)


def run_peer(fn: Callable[..., tuple], task: Task, **kwargs: object) -> dict:
    t = time.perf_counter()
    try:
        scores, maps, *rest = fn(**kwargs)
    except ValueError as exc:  # PaDiM from one image
        return {"image_auroc": None, "failed": str(exc)}
    out = score_run(task, scores, list(maps), time.perf_counter() - t)
    if rest:
        out["memory_patches"] = rest[0]
    return out


def peer_draw(
    store: FeatureStore, task: Task, normals: list[Path], ratio: float, seed: int, memories: list[str],
    with_padim: bool = True,
) -> dict[str, dict]:
    """anomalib's models fitted on one draw's normals, each run on the task's test images."""
    common = {"store": store.module, "normal_rows": store.rows(normals), "test_rows": store.rows(task.tests),
              "size": SIZE, "seed": seed}
    out = {f"anomalib PatchCore ({m})": run_peer(patchcore, task, memory=m, ratio=ratio, **common) for m in memories}
    if with_padim:
        out["anomalib PaDiM"] = run_peer(padim, task, **common)
    return out


def build_adapted(name: str, normals: dict[str, list[Path]], defects: dict[str, list[Path]] | None = None) -> Path:
    """A product memory (``adapt --steps 0``, its defaults: memory size, the weight and PaDiM's share chosen per
    variant on its own validation split of the normals, and with ``defects`` on those labelled defective
    images) of the given normals per variant, built once: runs side by side (one per ELPV type or photo class)
    wait for the first to build it."""
    out = assets.home() / "models" / f"peers-{name}-{DEFAULT_PATCHES}-padim-peak-1se{'-defects' if defects else ''}"
    with open(Path(tempfile.gettempdir()) / f"bench_peers-build-{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "memory.safetensors").exists():
            return out
        folders = {"normals": link_folder(f"peers-{name}-normals", normals)}
        if defects:
            folders["defects"] = link_folder(f"peers-{name}-defects", defects)
        cli_main(["adapt", *(a for k, f in folders.items() for a in (f"--{k}", str(f))), "--out", str(out),
                  "--steps", "0"])
    return out


def link_folder(name: str, images: dict[str, list[Path]]) -> Path:
    """A folder of links to the images, one sub-folder per variant, under ADCOPILOT_HOME's data."""
    folder = assets.home() / "data" / name
    for variant, paths in images.items():
        (folder / variant).mkdir(parents=True, exist_ok=True)
        for p in paths:
            link = folder / variant / p.name
            if not link.exists():
                os.symlink(p, link)
    return folder


def summarise(runs: list[dict]) -> dict:
    """Mean and spread (std over draws) of each metric; the draws' values kept."""
    out: dict = {"draws": len(runs)}
    for key in ("image_auroc", "pixel_auroc", "pro", "ms_per_image", "memory_patches"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            out[key] = round(float(np.mean(vals)), 4)
            if key in ("image_auroc", "pixel_auroc", "pro"):
                out[f"{key}_std"] = round(float(np.std(vals)), 4)
                out[f"{key}_draws"] = [round(float(v), 4) for v in vals]
    fails = [r["failed"] for r in runs if "failed" in r]
    if fails:
        out["failed"] = fails[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a first look: 40 cells per type, 2 draws")
    ap.add_argument("--per-type", type=int, default=150, help="ELPV test cells per type (seeded subset; 0: all)")
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"], choices=["mono", "poly"], help="ELPV cell types")
    ap.add_argument("--classes", nargs="+", default=None, help="photo classes (default: all)")
    ap.add_argument("--baseline", action="store_true", help="also the training-free baseline (few-shot)")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--shots", nargs="*", type=int, default=[1, 5], help="few-shot columns (none: all normals only)")
    ap.add_argument("--no-full", action="store_true", help="the few-shot columns only (not all normals)")
    ap.add_argument("--peers-only", action="store_true", help="anomalib's models only")
    ap.add_argument("--ours-only", action="store_true", help="this project's models only (with --merge, anomalib's "
                    "figures already in --out are kept: they depend only on the draws)")
    ap.add_argument("--no-padim", action="store_true", help="PatchCore only")
    ap.add_argument("--suffix", default="", help="appended to anomalib's method names (a variant's own row)")
    ap.add_argument("--datasets", nargs="+", default=["elpv", "photos"], choices=["elpv", "photos", "surfaces"])
    ap.add_argument("--ratio", type=float, default=0.1, help="PatchCore memory share of the patches, few-shot")
    ap.add_argument("--full-ratio", type=float, default=0.01, help="the same with all normals")
    ap.add_argument("--full-memories", nargs="+", default=["coreset", "random"], choices=["coreset", "random"],
                    help="PatchCore memories with all normals (the greedy coreset of ELPV's 300,000-470,000 "
                    "patches takes hours on a loaded core)")
    ap.add_argument("--default", default="default", metavar="MODEL",
                    help="the model of the 'default' rows (e.g. a copy of the checkpoint with another config)")
    ap.add_argument("--adapted-elpv", default=None, help="adapted ELPV model (default: build a product memory)")
    ap.add_argument("--adapted-photos", default=None, help="adapted photos model (default: build one)")
    ap.add_argument("--adapted-defects", action="store_true", help="the adapted ELPV model built with the training "
                    "split's defective cells as labelled defects (its validation chooses on them); a row of its own")
    ap.add_argument("--out", default="benchmarks/results/peers.json")
    ap.add_argument("--table", metavar="JSON", default=None, help="print the tables of a results file and stop")
    ap.add_argument("--merge", action="store_true", help="keep the other datasets' results already in --out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.table:
        results = json.loads(Path(args.table).read_text())["results"]
        print(table(results) + "\n\n" + paired(results))
        return
    if args.quick:
        args.per_type, args.draws = 40, 2
    if AVAILABLE:
        log.info("anomalib %s: PatchCore and PaDiM on this project's features", VERSION)
    else:
        log.warning("anomalib is NOT available (%s); measuring this project's models only. Install: "
                    'pip install -e ".[peers]" -c constraints/cpu-torch.txt', ANOMALIB_ERROR)

    tasks = (elpv_tasks(args.per_type, args.kinds) if "elpv" in args.datasets else []) + [
        t for ds in CLASS_DATASETS if ds in args.datasets for t in photo_tasks(args.classes, ds)]
    adapted: dict[str, Path] = {}
    if "elpv" in args.datasets and not args.peers_only and not args.no_full:
        adapted["elpv"] = Path(args.adapted_elpv) if args.adapted_elpv else build_adapted(  # both types' normals
            "elpv", {t.name.split("-")[1]: t.normals for t in elpv_tasks(1, ["mono", "poly"])},
            elpv_defects() if args.adapted_defects else None)
    for ds in (d for d in CLASS_DATASETS if d in args.datasets and not args.peers_only and not args.no_full):
        given = args.adapted_photos if ds == "photos" else None
        adapted[ds] = Path(given) if given else build_adapted(  # every class's normals
            ds, {t.name.split("-", 1)[1]: t.normals for t in photo_tasks(None, ds)})
    ours = {} if args.peers_only else {"default": Copilot.load(args.default)}
    if args.baseline and not args.peers_only:
        ours = {"baseline": Copilot.load("baseline"), **ours}
    adapted_cp = {k: Copilot.load(str(v)) for k, v in adapted.items()}

    store = None
    if AVAILABLE and not args.ours_only:
        paths = sorted({p for t in tasks for p in t.normals + t.tests})
        t0 = time.perf_counter()
        store = FeatureStore(paths)
        log.info("tower features of %d images in %.0f s", len(paths), time.perf_counter() - t0)

    results: dict = {}
    shots: list[int | None] = ([] if args.no_full else [None]) + list(args.shots)  # all normals first: the slowest
    # fit shows problems early
    for task in tasks:
        for k in shots:
            col = "all" if k is None else f"{k}-shot"
            runs: dict[str, list[dict]] = {}
            for seed in range(args.draws if k is not None else 1) if store is not None else []:
                ratio = args.ratio if k is not None else args.full_ratio
                memories = ["coreset", "random"] if k is not None else args.full_memories
                fits = peer_draw(store, task, draw(task.normals, k, seed), ratio, seed, memories, not args.no_padim)
                for name, r in fits.items():
                    runs.setdefault(name + args.suffix, []).append(r)
            for seed in range(0 if args.peers_only else args.draws):
                if k is None:  # the adapted model: its memory holds the normals; one reference per draw
                    cp = adapted_cp[task.name.split("-")[0]]
                    row = "adapted (product memory" + (", labelled defects in validation)" if args.adapted_defects
                                                       and task.name.startswith("elpv") else ")")
                    runs.setdefault(row, []).append(run_ours(cp, task, draw(task.normals, 1, seed)))
                else:
                    refs = draw(task.normals, k, seed)
                    for name, cp in ours.items():
                        runs.setdefault(name, []).append(run_ours(cp, task, refs))
            for name, rs in runs.items():
                s = summarise(rs)
                results.setdefault(task.name, {}).setdefault(name, {})[col] = s
                log.info("%s %s %s: image AUROC %s ± %s%s", task.name, col, name, s.get("image_auroc"),
                         s.get("image_auroc_std"),
                         f", pixel AUROC {s['pixel_auroc']}, PRO {s['pro']}" if "pro" in s else "")
    for ds in (d for d in CLASS_DATASETS if d in args.datasets):
        results[f"{ds} (mean of classes)"] = mean_over_classes(
            {k: v for k, v in results.items() if k.startswith(f"{ds}-")})
    # Runs of some columns only keep their own settings beside the others' in a merged file.
    columns = " all normals" if not args.shots else " few-shot" if args.no_full else ""
    payload = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "anomalib": VERSION or f"absent ({ANOMALIB_ERROR})",
        "settings": {ds + args.suffix + columns: {
            "kinds": args.kinds, "full_memories": args.full_memories, "per_type": args.per_type, "draws": args.draws,
            "shots": args.shots, "size": SIZE, "ratio": args.ratio, "full_ratio": args.full_ratio, "quick": args.quick,
        } for ds in args.datasets},
        "adapted": {k: {"model": str(v), "memory": adapted_cp[k].detector.describe().get("memory")}
                    for k, v in adapted.items()},
        "tests": {t.name: {"images": len(t.tests), "defective": sum(t.labels), "normals": len(t.normals)} for t in tasks},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = Path(tempfile.gettempdir()) / f"bench_peers-{out.resolve().as_posix().replace('/', '_')}.lock"
    with open(lock_path, "w") as lock:  # runs in parallel merge one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if args.merge and out.exists():  # runs of separate datasets into one file
            old = json.loads(out.read_text())
            for name, setting in payload["settings"].items():  # runs of one cell type each: the kinds of all
                before = old.get("settings", {}).get(name, {})
                setting["kinds"] = sorted(set(before.get("kinds", [])) | set(setting["kinds"]))
                setting["shots"] = sorted(set(before.get("shots", [])) | set(setting["shots"]))  # columns run apart
            for key in ("settings", "adapted", "tests"):
                payload[key] = {**old.get(key, {}), **payload[key]}
            if not VERSION and old.get("anomalib", "absent") != "absent" and not old["anomalib"].startswith("absent"):
                payload["anomalib"] = old["anomalib"]  # ours only here: the peers' rows kept are that version's
            # Every environment whose figures the file holds (the peers ran in their own).
            seen = old.get("machines", [old["machine"]] if "machine" in old else [])
            payload["machines"] = list(dict.fromkeys([*seen, payload["machine"]]))
            merged = old.get("results", {})
            for task_name, methods in payload["results"].items():  # a method's columns from several runs
                for method, cols in methods.items():
                    merged.setdefault(task_name, {}).setdefault(method, {}).update(cols)
            payload["results"] = merged
            for ds in CLASS_DATASETS:
                per_class = {k: v for k, v in payload["results"].items() if k.startswith(f"{ds}-")}
                if per_class:
                    payload["results"][f"{ds} (mean of classes)"] = mean_over_classes(per_class)
        out.write_text(json.dumps(payload, indent=1))
    log.info("wrote %s\n%s", args.out, table(payload["results"]))


def cell(r: dict | None, key: str) -> str:
    """'0.912 ± 0.025' for a summarised run, 'fails' where the method could not be fitted."""
    if r is None:
        return ""
    if r.get(key) is None:
        return "fails" if r.get("failed") else ""
    if r.get("draws", 2) == 1:  # one fit on all normals: no spread to show
        return f"{r[key]:.3f}"
    return f"{r[key]:.3f} ± {r.get(key + '_std', 0.0):.3f}"


def paired(results: dict, ours: str = "default") -> str:
    """The default model's lead over each PatchCore memory per draw (the same references on both sides),
    few-shot columns: the mean and standard deviation of the per-draw differences and the draws won. The
    photos' (and surfaces') draw i is the mean of the classes' draws i."""
    lines = ["| image AUROC, ours - peer per draw | column | mean ± std | draws won |", "|---|---|---:|---:|"]
    for product in ("elpv-mono", "elpv-poly", *CLASS_DATASETS):
        per_class = [v for k, v in results.items() if k.startswith(f"{product}-")]
        for col in ("1-shot", "5-shot"):
            for peer in ("anomalib PatchCore (coreset)", "anomalib PatchCore (random)"):
                parts = per_class if product in CLASS_DATASETS else [results.get(product, {})]
                try:
                    mine = np.mean([p[ours][col]["image_auroc_draws"] for p in parts], axis=0)
                    theirs = np.mean([p[peer][col]["image_auroc_draws"] for p in parts], axis=0)
                except (KeyError, ValueError):  # not run, or runs of different draw counts
                    continue
                if not parts or len(mine) != len(theirs) or len(mine) < 2:
                    continue
                diff = mine - theirs
                lines.append(f"| {product} vs {peer.removeprefix('anomalib ')} | {col} | {diff.mean():+.3f} ± "
                             f"{diff.std(ddof=1):.3f} | {int((diff > 0).sum())}/{len(diff)} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    """Markdown tables: image AUROC on every product and column; pixel AUROC and PRO on the photos and surfaces."""
    for ds in CLASS_DATASETS:
        per_class = {k: v for k, v in results.items() if k.startswith(f"{ds}-")}
        if per_class:
            results = {**results, f"{ds} (mean of classes)": mean_over_classes(per_class)}
    products = [p for p in ("elpv-mono", "elpv-poly", *(f"{ds} (mean of classes)" for ds in CLASS_DATASETS))
                if p in results]
    cols = ["1-shot", "5-shot", "all"]
    methods = sorted(dict.fromkeys(m for p in products for m in results[p]), key=lambda m: not m.startswith("anomalib"))
    head = [f"{p.split(' ')[0]} {c}" for p in products for c in cols]
    lines = ["| image AUROC (mean ± std over draws) | " + " | ".join(head) + " |",
             "|---" + "|---:" * len(head) + "|"]
    for m in methods:
        row = [cell(results[p].get(m, {}).get(c), "image_auroc") for p in products for c in cols]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    for ds in CLASS_DATASETS:
        by_method = results.get(f"{ds} (mean of classes)")
        if not by_method:
            continue
        lines += ["", f"| {ds}: pixel AUROC / PRO | " + " | ".join(cols) + " |", "|---" + "|---:" * 3 + "|"]
        for m, by_col in by_method.items():
            row = [f"{cell(by_col.get(c), 'pixel_auroc')} / {cell(by_col.get(c), 'pro')}" if by_col.get(c) else ""
                   for c in cols]
            lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def mean_over_classes(per_class: dict) -> dict:
    """Per method and column: the mean over classes of each draw's figures, then mean and spread."""
    out: dict = {}
    if not per_class:
        return out
    first = next(iter(per_class.values()))
    for method, cols in first.items():
        for col in cols:
            row: dict = {}
            for key in ("image_auroc", "pixel_auroc", "pro"):
                draws = [per_class[c][method][col].get(f"{key}_draws") for c in per_class]
                if all(draws):
                    per_draw = np.mean(np.asarray(draws, dtype=float), axis=0)  # (draws,)
                    row.update({key: round(float(per_draw.mean()), 4), f"{key}_std": round(float(per_draw.std()), 4),
                                "draws": len(per_draw)})
            fails = [per_class[c][method][col].get("failed") for c in per_class]
            if any(fails):
                row["failed"] = next(f for f in fails if f)
            out.setdefault(method, {})[col] = row
    return out


if __name__ == "__main__":
    main()
