"""The bundled benchmark: a small, real, MMAD-format benchmark built reproducibly on first use.

Nothing of it is committed: it is built from installed packages into
``$ADCOPILOT_HOME/benchmarks/bundled/`` (``mmad.json``, images, masks, ``bundle.json``, and
``defects.json``: each synthetic defect's kind, area and contrast, for analyses by visibility) the first
time ``adcopilot eval ... --benchmark bundled`` runs, and rebuilt only when
:data:`BUNDLE_VERSION` changes. The build is deterministic: fixed seeds, sorted inputs, the
same bytes on every machine with the same package versions. Two datasets:

``ELPV`` (real defects; CC BY-NC-SA 4.0, evaluation only)
    Test-split cells of ``adcopilot.data.elpv.split(seed=0)``: for each cell type (classes
    ``mono`` and ``poly``), 40 normal cells (defect probability 0) and 40 defective ones
    (probability 2/3 or 1; the uncertain 1/3 cells are left out), drawn with a fixed seed.
    Anomaly discrimination questions only. Templates are normal cells of the same type from the
    TRAIN split, from a pool of 16 per type drawn with a fixed seed: ``random_templates`` are 4
    drawn from it, ``similar_templates`` the 4 nearest by a 32 x 32 grey thumbnail (MMAD's
    retrieval-based option).

``HeldOut-Photos`` (real normal images, synthetic defects with exact masks)
    The photos of :data:`BUNDLED_HELDOUT_SOURCES` (CC0 / CC BY 2.0 sample images of
    scikit-image and scikit-learn). Rule: these photos are never used to train the default
    model; the list is ``adcopilot.data.normals.HELDOUT_FOR_EVALUATION`` itself, which the
    training samplers exclude. Each photo is one product class: its centred square crop at
    256 px is the product; every image is another "shot" of it (``synth.jitter``: pose,
    lighting, noise). Per class: 8 template shots, 10 normal queries and 20 defective queries
    (``synth.add_defect``, the class's defect kinds in turn, exact masks). All seven sub-tasks
    (``adcopilot.data.questions.mmad_conversation``), and boxes from the masks for MMAD-BBox.

Usage::

    path = ensure_bundled()          # .../benchmarks/bundled/mmad.json, built if missing
    bench = load_mmad(path)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from adcopilot import assets
from adcopilot.data import elpv
from adcopilot.data.knowledge import Knowledge, ObjectInfo, normalise
from adcopilot.data.normals import licensed_normal_images
from adcopilot.data.questions import LabelledItem, LetterBalancer, mmad_conversation
from adcopilot.data.synth import LABELS, add_defect, jitter
from adcopilot.errors import AdcopilotError

log = logging.getLogger(__name__)

#: Bump when the build changes what it writes: the cached bundle is then rebuilt.
BUNDLE_VERSION = 3  # 2: defects.json (each synthetic defect's kind, size and contrast); 3: the real layout
ELPV_DATASET = "ELPV"
PHOTOS_DATASET = "HeldOut-Photos"
SEED = 0
ELPV_PER_SIDE = 40  # per cell type: normal and defective queries each
ELPV_POOL = 16  # per cell type: normal train cells the templates are drawn from
N_TEMPLATES, N_NORMAL, N_DEFECT = 8, 10, 20  # per held-out class
N_REFS = 4  # random_templates / similar_templates per query
CROP = 256


@dataclass(frozen=True)
class HeldOutProduct:
    """A held-out photo used as a product class, its defect kinds and what it looks like."""

    source: str  # name in adcopilot.data.normals
    category: str
    kinds: tuple[str, ...]  # adcopilot.data.synth kinds, used in turn
    synonyms: tuple[str, ...]
    description: str
    structure: str
    details: str
    function: str


PRODUCTS: tuple[HeldOutProduct, ...] = (
    HeldOutProduct(
        "skimage/gravel", "gravel", ("stain", "contamination", "hole", "color"), ("crushed stone", "stones"),
        "a close-up of a layer of crushed grey stone",
        "loose angular stones of similar size packed together, filling the whole image",
        "grey crushed rock with sharp edges and a matt, dusty surface",
        "a base layer for roads, paths and concrete",
    ),
    HeldOutProduct(
        "skimage/coffee", "coffee cup", ("crack", "stain", "scratch", "contamination"), ("espresso cup", "cup"),
        "an espresso in a red-brown cup on a matching saucer, with a spoon, on a wooden table",
        "a round cup with a handle standing on a saucer, a spoon resting on the saucer",
        "glazed red-brown ceramic with a white inside, brown coffee with light crema",
        "holds and serves a hot drink",
    ),
    HeldOutProduct(
        "skimage/coins", "coins", ("scratch", "stain", "deformation", "color"), ("coin", "coin tray"),
        "rows of ancient silver coins lying on a dark background",
        "round flat discs of slightly different sizes laid out in rows",
        "worn silver metal with embossed heads and figures, grey in tone",
        "money; kept today as historical collection items",
    ),
    HeldOutProduct(
        "sklearn/flower", "flower", ("hole", "color", "stain", "missing"), ("dahlia", "blossom"),
        "an orange dahlia flower head in front of dark green foliage",
        "many layered petals arranged in tight spirals around the centre of the flower head",
        "soft orange petals with lighter tips, on a blurred dark green background",
        "an ornamental plant grown for its flowers",
    ),
)

#: The real normal photos the bundled benchmark uses; training must never use them.
BUNDLED_HELDOUT_SOURCES: tuple[str, ...] = tuple(p.source for p in PRODUCTS)


def bundled_dir() -> Path:
    """Where the bundle is built: ``$ADCOPILOT_HOME/benchmarks/bundled``."""
    return assets.home() / "benchmarks" / "bundled"


def _is_current(folder: Path) -> bool:
    try:
        meta = json.loads((folder / "bundle.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("version") == BUNDLE_VERSION and (folder / "mmad.json").is_file()


def ensure_bundled(force: bool = False, progress: bool = True) -> Path:
    """The bundle's ``mmad.json``, building the bundle first when it is missing or outdated."""
    out = bundled_dir()
    if not force and _is_current(out):
        return out / "mmad.json"
    log.info("building the bundled benchmark in %s (once)", out)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_bundled(tmp, progress=progress)
        if not force and _is_current(out):  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "mmad.json"


# --------------------------------------------------------------------------- helpers
def _rng(name: str) -> np.random.Generator:
    """A generator seeded from a name (crc32: stable across runs and machines)."""
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


def _thumb(img: np.ndarray) -> np.ndarray:
    """32 x 32 grey thumbnail, zero mean, unit norm (for similar-template retrieval)."""
    g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    t = cv2.resize(g.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-6)


def _similar(query: np.ndarray, pool: list[str], thumbs: np.ndarray, k: int) -> list[str]:
    dist = np.linalg.norm(thumbs - _thumb(query)[None], axis=1)
    return [pool[i] for i in np.argsort(dist, kind="stable")[:k]]


def _save_png(root: Path, rel: str, arr: np.ndarray) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(p, format="PNG")


def _knowledge() -> Any:
    kb = Knowledge.load()
    for p in PRODUCTS:
        kb.add_object(ObjectInfo(
            name=normalise(p.category), description=p.description, synonyms=[normalise(s) for s in p.synonyms],
            structure=p.structure, details=p.details, function=p.function,
        ))
    return kb


def _in_class(rel: str) -> str:
    """A root-relative ``<dataset>/<class>/...`` path made relative to its class folder."""
    return "/".join(rel.split("/")[2:])


def _entry(rel: str, random_t: list[str], similar_t: list[str], conversation: list[dict], mask: str | None) -> dict:
    # The real file's layout: the key is root-relative, image_path and mask_path are relative to
    # the class folder (adcopilot.data.mmad_paths), templates root-relative.
    entry: dict[str, Any] = {"image_path": _in_class(rel)}
    if mask:
        entry["mask_path"] = _in_class(mask)
    entry.update(similar_templates=similar_t, random_templates=random_t, conversation=conversation)
    return entry


# --------------------------------------------------------------------------- ELPV
def _build_elpv(root: Path, kb: Any, balancer: Any, bar: tqdm) -> dict[str, dict]:
    split = elpv.split(seed=0)
    data: dict[str, dict] = {}
    for kind in ("mono", "poly"):
        rng = _rng(f"elpv/{kind}")
        train = sorted((c for c in split["train"] if c.kind == kind and c.probability == 0), key=lambda c: c.name)
        # A fixed pool of templates, so that reference features are reused across queries.
        train = sorted((train[int(i)] for i in rng.choice(len(train), ELPV_POOL, replace=False)), key=lambda c: c.name)
        normal = sorted((c for c in split["test"] if c.kind == kind and c.probability == 0), key=lambda c: c.name)
        defect = sorted((c for c in split["test"] if c.kind == kind and c.probability > 0.5), key=lambda c: c.name)
        pool = [f"{ELPV_DATASET}/{kind}/train/good/{c.name}" for c in train]
        thumbs = np.stack([_thumb(np.asarray(Image.open(c.path).convert("L"))) for c in train])
        picked = [(normal[int(i)], False) for i in rng.choice(len(normal), ELPV_PER_SIDE, replace=False)]
        picked += [(defect[int(i)], True) for i in rng.choice(len(defect), ELPV_PER_SIDE, replace=False)]
        picked.sort(key=lambda t: (t[1], t[0].name))
        used: set[int] = set()
        for cell, bad in picked:
            rel = f"{ELPV_DATASET}/{kind}/test/{'defect' if bad else 'good'}/{cell.name}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cell.path, root / rel)
            img = np.asarray(Image.open(cell.path).convert("L"))
            rand_idx = [int(i) for i in rng.choice(len(pool), N_REFS, replace=False)]
            random_t = [pool[i] for i in rand_idx]
            similar_t = _similar(img, pool, thumbs, N_REFS)
            used.update(rand_idx)
            used.update(pool.index(s) for s in similar_t)
            size = (int(img.shape[1]), int(img.shape[0]))
            item = LabelledItem(rel, "solar cell", "defect" if bad else None, None, size, None, ELPV_DATASET)
            conv = [q for q in mmad_conversation(item, kb, rng, balancer=balancer) if q["type"] == "Anomaly Detection"]
            data[rel] = _entry(rel, random_t, similar_t, conv, None)
            bar.update(1)
        for i in sorted(used):
            (root / pool[i]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(train[i].path, root / pool[i])
    return data


# --------------------------------------------------------------------------- held-out photos
def _product_crop(photo: np.ndarray) -> np.ndarray:
    h, w = photo.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(np.ascontiguousarray(photo[y : y + s, x : x + s]), (CROP, CROP), interpolation=cv2.INTER_AREA)


def defect_record(before: np.ndarray, d: Any) -> dict[str, Any]:
    """What one synthetic defect is: kind, mask area, and its *contrast*, the mean over the mask of
    the largest per-channel change (0-1), which tells a faint defect from a plain one."""
    m = d.mask > 0
    change = np.abs(d.image.astype(np.int16) - before.astype(np.int16)).max(axis=2) / 255.0
    return {
        "kind": d.kind,
        "label": d.label,
        "area_px": int(m.sum()),
        "contrast": round(float(change[m].mean()), 4) if m.any() else 0.0,
        "strength": round(float(d.params.get("strength", 0.0)), 4),
        "scale": round(float(d.params.get("scale", 0.0)), 4),
    }


def _build_photos(root: Path, kb: Any, balancer: Any, bar: tqdm, defects: dict[str, dict]) -> dict[str, dict]:
    photos = {n.name: n.image for n in licensed_normal_images()}
    missing = [p.source for p in PRODUCTS if p.source not in photos]
    if missing:
        raise AdcopilotError(
            f"the bundled benchmark needs the sample photos {', '.join(missing)}: pip install 'adcopilot[data]'"
        )
    data: dict[str, dict] = {}
    for p in PRODUCTS:
        rng = _rng(p.source)
        product = _product_crop(photos[p.source])
        cls = p.category.replace(" ", "_")
        pool, thumbs = [], []
        for i in range(N_TEMPLATES):
            shot = jitter(product, rng)
            rel = f"{PHOTOS_DATASET}/{cls}/train/good/{i:03d}.png"
            _save_png(root, rel, shot)
            pool.append(rel)
            thumbs.append(_thumb(shot))
        thumbs_arr = np.stack(thumbs)
        labels = [LABELS[k] for k in p.kinds]
        for i in range(N_NORMAL + N_DEFECT):
            bad = i >= N_NORMAL
            shot = jitter(product, rng)
            mask_rel = None
            label = None
            if bad:
                kind = p.kinds[(i - N_NORMAL) % len(p.kinds)]
                d = add_defect(shot, rng, kind)
                folder = d.label.replace(" ", "_")
                rel = f"{PHOTOS_DATASET}/{cls}/test/{folder}/{i:03d}.png"
                defects[rel] = defect_record(shot, d)
                shot, label = d.image, d.label
                mask_rel = f"{PHOTOS_DATASET}/{cls}/ground_truth/{folder}/{i:03d}_mask.png"
                _save_png(root, mask_rel, (d.mask > 0).astype(np.uint8) * 255)
            else:
                rel = f"{PHOTOS_DATASET}/{cls}/test/good/{i:03d}.png"
            _save_png(root, rel, shot)
            random_t = [pool[int(j)] for j in rng.choice(len(pool), N_REFS, replace=False)]
            similar_t = _similar(shot, pool, thumbs_arr, N_REFS)
            mask = None if mask_rel is None else (np.asarray(Image.open(root / mask_rel)) > 0)
            item = LabelledItem(rel, p.category, label, mask, (CROP, CROP), None, PHOTOS_DATASET)
            conv = mmad_conversation(item, kb, rng, defect_names=labels, balancer=balancer)
            data[rel] = _entry(rel, random_t, similar_t, conv, mask_rel)
            bar.update(1)
    return data


def build_bundled(out: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Write the bundle (``mmad.json``, images, masks, ``bundle.json``) into ``out``; its summary."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    kb = _knowledge()
    balancer = LetterBalancer()  # one for the whole bundle: answer letters balanced over it
    total = 4 * ELPV_PER_SIDE + len(PRODUCTS) * (N_NORMAL + N_DEFECT)
    with tqdm(total=total, desc="building bundled benchmark", unit="img", disable=not progress) as bar:
        data = _build_elpv(root, kb, balancer, bar)
        defects: dict[str, dict] = {}
        data.update(_build_photos(root, kb, balancer, bar, defects))
    (root / "mmad.json").write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    (root / "defects.json").write_text(json.dumps(defects, indent=1))
    questions: dict[str, int] = {}
    for entry in data.values():
        for q in entry["conversation"]:
            questions[q["type"]] = questions.get(q["type"], 0) + 1
    summary = {
        "version": BUNDLE_VERSION,
        "seed": SEED,
        "images": len(data),
        "normal": sum("good" in k for k in data),
        "questions": questions,
        "datasets": {
            ELPV_DATASET: "ELPV solar cells (elpv-dataset 1.0.0.post1), test split of elpv.split(seed=0); "
            "CC BY-NC-SA 4.0: evaluation only, do not redistribute commercially",
            PHOTOS_DATASET: "held-out sample photos with synthetic defects: "
            + "; ".join(f"{p.source} ({p.category})" for p in PRODUCTS),
        },
        "heldout_sources": list(BUNDLED_HELDOUT_SOURCES),
    }
    (root / "bundle.json").write_text(json.dumps(summary, indent=1))
    return summary
