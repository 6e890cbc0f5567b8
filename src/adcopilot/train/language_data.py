"""Chat-AD training data for stages 2 and 3 from licence-clean sources, with precomputed features.

Build (resumable, deterministic for the seed), into ``data.dir`` of the stage config:

1. ``normals/``: folders of normal images, one folder per product instance ("class"): procedural
   products (:mod:`adcopilot.data.procedural`, every category, ``instances`` each) and the licensed
   sample photos (:mod:`adcopilot.data.normals`, centre crops) without the held-out ones
   (``HELDOUT_FOR_EVALUATION`` and the bundled benchmark's). Each folder holds ``shots`` views of
   its product (:func:`adcopilot.data.synth.jitter`: pose, light, noise), the way the bundled
   benchmark photographs its products.
2. ``curated/``: the curation pipeline on those folders as ``normal`` sources (``variants``
   synthetic defects with exact masks per image; captions, VQA, boxes, MMAD-style questions),
   with object knowledge for the photos (``train/knowledge/photo_objects.yaml``).
3. ``features/``: :class:`adcopilot.language.visual.VisualInputs` of every (query, references) pair,
   computed once with the frozen tower and the stage-1 comparison model named by ``comparison``
   (safetensors shards; a manifest records the comparison checkpoint's hash, and features made
   with another checkpoint are refused).

No ELPV, MVTec, VisA or MMAD image is used. Usage::

    data = ChatData.prepare(Path("runs/chatdata"), comparison=Path("checkpoints/nano"), seed=0)
    data.samples("train")[0]["task"], data.visual(data.samples("train")[0])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from adcopilot.data import procedural
from adcopilot.data.curate import CurateConfig, curate
from adcopilot.data.normals import HELDOUT_FOR_EVALUATION, licensed_normal_images
from adcopilot.data.synth import jitter
from adcopilot.errors import AdcopilotError
from adcopilot.language.visual import VisualEncoder, VisualInputs, sample_key
from adcopilot.model.nano import NanoConfig, load_nano_detector

log = logging.getLogger(__name__)

KNOWLEDGE = Path(__file__).resolve().parent / "knowledge" / "photo_objects.yaml"
#: Folder (class) names of the training photos; their knowledge is in photo_objects.yaml.
PHOTO_CLASSES = {
    "skimage/brick": "brick_wall", "skimage/grass": "grass", "skimage/camera": "camera_operator",
    "skimage/chelsea": "cat", "skimage/cell": "cell_culture", "skimage/retina": "retina",
    "skimage/horse": "horse_silhouette", "skimage/microaneurysms": "retina_scan", "skimage/astronaut": "astronaut",
    "skimage/rocket": "rocket", "skimage/hubble": "galaxy_field", "skimage/clock": "wall_clock",
    "skimage/text": "printed_text", "sklearn/china": "temple",
}
SHARD = 128


@dataclass
class ChatDataConfig:
    seed: int = 0
    size: int = 256
    instances: int = 2  # procedural instances per category
    shots: int = 4  # normal views per product
    photo_shots: int = 6
    variants: int = 2  # synthetic defects per normal image
    test_fraction: float = 0.2
    # Spot-the-difference samples are left out by default: their reference (the image before the
    # defect was painted) would double the features to precompute, and captions say the same.
    tasks: list[str] = field(default_factory=lambda: ["caption", "vqa", "localization", "mcq"])
    categories: list[str] | None = None  # procedural categories (None: all)
    photos: bool = True  # the licensed sample photos as products
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatDataConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _square(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(np.ascontiguousarray(img[y : y + s, x : x + s]), (size, size), interpolation=cv2.INTER_AREA)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(arr).save(tmp, format="PNG")
    tmp.replace(path)


def training_photos() -> list[tuple[str, np.ndarray]]:
    """(class name, image) of the licensed photos allowed in training (held-out ones excluded)."""
    banned = set(HELDOUT_FOR_EVALUATION)  # the bundled benchmark's photos among them
    return [(PHOTO_CLASSES[p.name], p.image) for p in licensed_normal_images()
            if p.name not in banned and p.name in PHOTO_CLASSES]


def write_normals(out: Path, cfg: ChatDataConfig, progress: bool = True) -> list[str]:
    """Write the normal folders (skipping files already there); returns the curation source specs."""
    jobs: list[tuple[Path, str, int]] = []  # (folder, kind, index)
    for cat in cfg.categories if cfg.categories is not None else procedural.CATEGORIES:
        for i in range(cfg.instances):
            jobs.append((out / "procedural" / f"{cat}_{i}", cat, i))
    photos = dict(training_photos()) if cfg.photos else {}
    for name in sorted(photos):
        jobs.append((out / "photos" / name, "photo:" + name, 0))
    for folder, kind, i in tqdm(jobs, desc="normal images", disable=not progress):
        n = cfg.photo_shots if kind.startswith("photo:") else cfg.shots
        if all((folder / f"{j:02d}.png").exists() for j in range(n)):
            continue
        seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}/{kind}/{i}".encode()).digest()[:4], "little")
        rng = np.random.default_rng(seed)
        if kind.startswith("photo:"):
            product = _square(photos[kind[6:]], cfg.size)
        else:
            product, _ = procedural.render(kind, rng, cfg.size)
        for j in range(n):
            _save(folder / f"{j:02d}.png", jitter(product, rng))
    return [f"normal:{out / sub}" for sub in ("procedural", "photos") if (out / sub).is_dir()]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` for the duration of the block (POSIX; no-op elsewhere)."""
    with open(path, "a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def comparison_hash(folder: Path) -> str:
    """Identity of a comparison checkpoint: its weights and the settings that change its outputs."""
    h = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        cfg = {}
    # Resolved settings (defaults filled in), so a changed default is noticed too.
    settings = {k: v for k, v in vars(NanoConfig.from_dict(cfg)).items() if k not in ("name", "extra")}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


class ChatData:
    """Curated samples and their precomputed visual inputs (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._samples: dict[str, list[dict]] = {}
        self._index: dict[str, str] | None = None
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    # ---------------------------------------------------------------- build
    @classmethod
    def prepare(
        cls, root: str | os.PathLike, comparison: str | os.PathLike, cfg: ChatDataConfig | None = None,
        progress: bool = True, workers: int = 1, detector: Any = None,
    ) -> ChatData:
        """Build (or finish building) the data in ``root`` for the comparison checkpoint ``comparison``."""
        cfg = cfg or ChatDataConfig()
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / ".lock"):  # two trainings may start on one data folder
            return cls._prepare(root, Path(comparison), cfg, progress, workers, detector)

    @classmethod
    def _prepare(
        cls, root: Path, comparison: Path, cfg: ChatDataConfig, progress: bool, workers: int, detector: Any
    ) -> ChatData:
        weights = comparison / "model.safetensors"
        if not weights.exists():
            raise AdcopilotError(f"{comparison}: no stage-1 comparison checkpoint there (model.safetensors missing)")
        manifest_path = root / "manifest.json"
        want = {"data": {k: v for k, v in asdict(cfg).items() if k != "extra"},
                "comparison_hash": comparison_hash(comparison)}
        if manifest_path.exists():
            have = json.loads(manifest_path.read_text())
            defaults = {k: v for k, v in asdict(ChatDataConfig()).items() if k != "extra"}
            if {**defaults, **(have.get("data") or {})} != want["data"]:
                raise AdcopilotError(f"{root}: built with other data settings {have.get('data')}; use another data.dir")
            if have.get("comparison_hash") != want["comparison_hash"]:
                log.warning("%s: features were made with another comparison checkpoint; recomputing them", root)
                for p in (root / "features").glob("*"):
                    p.unlink()
        manifest_path.write_text(json.dumps({**want, "comparison": str(comparison)}, indent=1))
        sources = write_normals(root / "normals", cfg, progress)
        report_file = root / "curated" / "train.jsonl"
        if not report_file.exists():
            curate(CurateConfig(sources=sources, out=root / "curated", seed=cfg.seed, test_fraction=cfg.test_fraction,
                                references=1, variants=cfg.variants, knowledge=[str(KNOWLEDGE)], tasks=tuple(cfg.tasks),
                                workers=workers, progress=progress))
        data = cls(root)
        data._compute_features(comparison, progress, detector)
        return data

    def _compute_features(self, comparison: Path, progress: bool, detector: Any = None) -> None:
        feats = self.root / "features"
        feats.mkdir(exist_ok=True)
        done = set(self.index())
        todo: dict[str, dict] = {}
        for split in ("train", "test"):
            for s in self.samples(split):
                k = self.key(s)
                if k not in done:
                    todo.setdefault(k, s)
        if not todo:
            return
        if detector is None:  # the checkpoint's comparison model on the pretrained tower
            detector, _ = load_nano_detector(comparison)
        enc = VisualEncoder(detector, cache_size=16)
        n_shards = len(list(feats.glob("shard-*.safetensors")))
        buf: dict[str, torch.Tensor] = {}
        keys = sorted(todo, key=lambda k: (todo[k]["image"], k))  # neighbours share images: cache hits

        def flush() -> None:
            nonlocal buf, n_shards
            if buf:
                tmp = feats / f"shard-{n_shards:05d}.tmp"
                save_file(buf, str(tmp))
                tmp.replace(feats / f"shard-{n_shards:05d}.safetensors")
                n_shards += 1
                buf = {}

        for k in tqdm(keys, desc="visual features", disable=not progress):
            s = todo[k]
            v = enc.encode(self.path(s["image"]), [self.path(r) for r in s["references"]])
            buf.update(v.to_tensors(k))
            if len(buf) >= SHARD * 5:
                flush()
        flush()
        self._index = None

    # ---------------------------------------------------------------- access
    def path(self, p: str) -> str:
        """Sample paths are relative to the curated folder unless absolute."""
        q = Path(p)
        return str(q if q.is_absolute() else self.root / "curated" / q)

    @staticmethod
    def key(sample: dict) -> str:
        return sample_key(sample["image"], sample["references"])

    def samples(self, split: str) -> list[dict]:
        if split not in self._samples:
            path = self.root / "curated" / f"{split}.jsonl"
            if not path.exists():
                raise AdcopilotError(f"{path}: missing; build the training data first")
            with open(path, encoding="utf-8") as f:
                self._samples[split] = [json.loads(line) for line in f if line.strip()]
        return self._samples[split]

    def index(self) -> dict[str, str]:
        """Sample key -> shard file name."""
        if self._index is None:
            idx: dict[str, str] = {}
            for shard in sorted((self.root / "features").glob("shard-*.safetensors")):
                from safetensors import safe_open

                with safe_open(str(shard), "pt") as f:
                    for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                        if name.endswith(".score"):
                            idx[name[: -len(".score")]] = shard.name
            self._index = idx
        return self._index

    def visual(self, sample: dict) -> VisualInputs:
        k = self.key(sample)
        shard = self.index().get(k)
        if shard is None:
            raise AdcopilotError(f"{self.root}: no precomputed features for {sample['id']}")
        if shard not in self._shards:
            self._shards[shard] = load_file(str(self.root / "features" / shard))
        return VisualInputs.from_tensors(self._shards[shard], k)

    def defect_labels(self) -> list[str]:
        """Box labels of the training split (what the model learns to name)."""
        return sorted({b["label"] for s in self.samples("train") for b in s.get("boxes", []) if b.get("label")})
