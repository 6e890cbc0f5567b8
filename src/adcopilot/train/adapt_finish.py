"""The end of ``adcopilot adapt``: validation on the held-out images, the product memory, config and card.

With ``padim`` the memories also hold PaDiM statistics (a Gaussian per position, model/padim.py): the
validation measures the memory's map and score at each PaDiM share (0: the nearest-patch map alone, 1:
PaDiM alone) beside each memory weight, and the final memory keeps PaDiM, with its share, only for the
variants whose validation chose a share above 0.

Order matters: the validation runs with a memory built from the *training* good images only (the
held-out ones must not be in it, or they would look perfectly normal); the memory written beside the
model is then rebuilt from all good images, since the user's inspection benefits from every one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adcopilot.data.folders import load_folder_groups
from adcopilot.errors import AdcopilotError
from adcopilot.model.detector import to_batch
from adcopilot.model.memory import MEMORY_FILE, ProductMemory, build_memory
from adcopilot.model.nano import NanoDetector, load_nano_detector
from adcopilot.model.padim import stretch_grey
from adcopilot.model.score import pooled_score
from adcopilot.registration import onto_reference, register
from adcopilot.train.validation import (
    MIN_REAL_DEFECTS,
    MIN_THRESHOLD_IMAGES,
    NORMAL_QUANTILE,
    SHARES,
    WEIGHTS,
    VariantChoice,
    normal_threshold,
    validate,
)

log = logging.getLogger(__name__)

#: PaDiM's statistics fitted on grey-level-stretched images, and queries stretched alike (chosen on ELPV's
#: validation cells, the training split only: benchmarks/RESULTS.md).
PADIM_STRETCH = True
#: PaDiM reads each position's features averaged over its 3 x 3 neighbours (chosen on ELPV's validation cells, the
#: training split only, as the lot PaDiM's window: benchmarks/RESULTS.md).
PADIM_NEIGHBOURHOOD = 3


@dataclass
class Images:
    """Images given to ``adapt`` (uint8 (S, S, 3) at the training size), their variants and which
    are held out for validation; ``folder`` is None when none were given."""

    folder: Path | None
    images: list[np.ndarray]
    groups: list[str]
    held: list[bool]

    def at_size(self, size: int) -> Images:
        """The same images at ``size`` (the folder is read again: same files, same order)."""
        if not self.images or self.images[0].shape[0] == size or self.folder is None:
            return self
        images, groups, _ = load_folder_groups(self.folder, size)  # bad files were reported before
        if len(images) != len(self.images):
            raise AdcopilotError(f"{self.folder}: its images changed during the adaptation; run it again")
        return Images(self.folder, images, groups, self.held)

    def by_variant(self, held: bool) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {}
        for img, g, h in zip(self.images, self.groups, self.held, strict=True):
            if h == held:
                out.setdefault(g, []).append(img)
        return out


def finish(
    out: Path, good: Images, defects: Images, *, patches: int, weight: float | None, seed: int,
    fallback: float = 0.5, echo: Callable[[str], None] = log.info, padim: bool = False,
) -> None:
    """Validate the adapted model in ``out`` on the held-out images, write its product memory (when
    ``patches`` > 0) with the memory weight (``None``: per variant, the best on validation, and
    ``fallback`` for variants without validation images) and, with ``padim``, the PaDiM share chosen per
    variant on validation, and record them in config.json and MODEL_CARD.md."""
    (out / MEMORY_FILE).unlink(missing_ok=True)  # a memory left in OUT by an earlier run is not this model's
    detector, _ = load_nano_detector(out)
    size = detector.image_size
    good, defects = good.at_size(size), defects.at_size(size)

    def features(image: np.ndarray):  # uint8 -> float one image at a time: a float copy of all would be large
        return detector.patch_features(image.astype(np.float32) / 255.0)

    def scales(image: np.ndarray):  # the raw stage outputs, for PaDiM
        return detector.fused_tower.patch_features(to_batch([image.astype(np.float32) / 255.0]))

    choices: dict[str, VariantChoice] = {}
    if any(good.held):
        choices = _validate(detector, features, scales if padim else None, good, defects, patches, weight, seed)
        for name, c in choices.items():
            echo(f"validation, variant {name or '.'}: image AUROC "
                 + ", ".join(f"{a:.3f} at memory weight {w}" if len(c.auroc) > 1 else f"{a:.3f}" for w, a in c.auroc.items())
                 + (f" (PaDiM share {c.share})" if c.by_share else "")
                 + f" ({c.normals} good, {c.anomalies} {c.anomaly_source} defective)"
                 + (f"; weight kept {c.weight}" if len(c.auroc) > 1 else ""))
    default = fallback if weight is None else weight
    text = ""
    if patches:
        with tqdm(total=len(good.images), desc="product memory", unit="img") as bar:
            shares = {name: c.share for name, c in choices.items() if c.share > 0}
            memory = build_memory(good.images, good.groups, features, patches=patches, seed=seed, progress=bar.update,
                                  scales=scales if shares else None, padim=shares, padim_stretch=PADIM_STRETCH,
                                  padim_neighbourhood=PADIM_NEIGHBOURHOOD,
                                  pool=lambda m: pooled_score(m, detector.model.cfg.topk_frac))
        if memory.variants:
            memory.save(out)
            config_path = out / "config.json"
            config = json.loads(config_path.read_text())
            config["memory_weight"] = default
            config["memory_weights"] = {name: c.weight for name, c in choices.items()} if weight is None else {}
            # The memory's scores are on its own scale (1: about the 95th percentile of good images' maxima), fused
            # with the comparison model's by the weight, so 0.5 means little on them (it flagged every good ELPV
            # poly test cell where the memory alone scores): good images each scored without itself set it. Where
            # the memory alone scores, its calibration images are such images too.
            memory_only = bool(choices) and all(
                (choices[name].weight if name in choices else default) == 1.0 for name in memory.variants)
            validated = bool(choices) and all(name in choices for name in memory.variants)
            found = normal_threshold(choices, [v for m in memory.variants.values() for v in m.normal_scores]
                                     if memory_only else ()) if validated else None
            if found is not None and found[1] < MIN_THRESHOLD_IMAGES:
                echo(f"threshold {config['threshold']} kept: {found[1]} good images held out are too few to set it")
                found = None
            if found is not None:
                config["threshold"] = round(found[0], 4)
                echo(f"threshold {config['threshold']}: the {NORMAL_QUANTILE:.0%} quantile of {found[1]} good images' "
                     "scores, each without itself (`adcopilot calibrate` with labelled parts sets it by their costs)")
            config_path.write_text(json.dumps(config, indent=2))
            summary = json.dumps(memory.describe(), indent=2)
            text += f"\n## Product memory (`{out.name}/memory.safetensors`)\n```json\n{summary}\n```\n"
            text += _weight_note(choices, default, auto=weight is None)
            text += _threshold_note(found, config["threshold"], memory_only)
        else:
            echo("no variant has two good images: the model is written without a product memory")
    text += _validation_section(choices)
    card = out / "MODEL_CARD.md"
    card.write_text(card.read_text() + text)


def _validate(detector: NanoDetector, features, scales, good: Images, defects: Images, patches: int,
              weight: float | None, seed: int) -> dict[str, VariantChoice]:
    """1-shot inspection of the held-out images, with a memory of the training good images only (with PaDiM
    statistics of them when ``scales`` is given)."""
    train = [i for i, h in enumerate(good.held) if not h]
    memory: ProductMemory | None = None
    if patches:
        groups = [good.groups[i] for i in train]
        with tqdm(total=len(train), desc="validation memory", unit="img") as bar:
            memory = build_memory([good.images[i] for i in train], groups, features, patches=patches, seed=seed,
                                  progress=bar.update, scales=scales, padim_stretch=PADIM_STRETCH,
                                  padim_neighbourhood=PADIM_NEIGHBOURHOOD,
                                  padim=dict.fromkeys(groups, 0.0) if scales is not None else None)

    def maps(query: np.ndarray, reference: np.ndarray):
        q, r = query.astype(np.float32) / 255.0, reference.astype(np.float32) / 255.0
        reg = register(q, r)  # as inspection does
        moved = reg.method != "identity"
        compared = onto_reference(q, r, reg.matrix) if moved else q
        ref = detector.encode_reference(r)
        prob, _, _ = detector.maps(compared, [ref])  # the comparison model's map (no memory on the detector)
        if memory is None:
            return prob, None
        qf = detector.patch_features(compared)  # (1, C, h, w)
        # PaDiM reads the query in its own frame (its statistics hold there) and its map follows registration.
        own = None if scales is None else detector.fused_tower.patch_features(
            to_batch([stretch_grey(q) if PADIM_STRETCH else q]))
        m = memory.maps(qf[0].flatten(1).T, ref.tokens[0], tuple(qf.shape[2:]), detector.image_size, scales=own,
                        padim_warp=reg.matrix if moved else None)
        # Per share: the map pooled with the comparison's and PaDiM's peak added, as the built memory scores.
        return prob, m.near if m.padim is None else {share: m.scored(share, "peak") for share in SHARES}

    def score(m: np.ndarray) -> float:
        return pooled_score(m, detector.model.cfg.topk_frac)

    val_good, val_bad = good.by_variant(True), defects.by_variant(True)
    total = sum(len(v) + (len(val_bad.get(k, [])) if len(val_bad.get(k, [])) >= MIN_REAL_DEFECTS else len(v))
                for k, v in val_good.items())
    with tqdm(total=total, desc="validation", unit="img") as bar, torch.inference_mode():
        return validate(maps, score, good.by_variant(False), val_good, val_bad, seed, fixed=weight,
                        progress=bar.update)


def _weight_note(choices: dict[str, VariantChoice], default: float, auto: bool) -> str:
    if not auto:
        note = (f"\nMemory weight in the fused map: {default} (`--memory-weight`; by default 0.5 after fine-tuning, "
                "chosen per variant on the validation images without).\n")
    elif not choices:
        return (f"\nMemory weight in the fused map: {default} (chosen on validation images, but no variant had "
                "enough good images to hold some out).\n")
    else:
        kept = ", ".join(f"{name or '.'} {c.weight}" for name, c in choices.items())
        note = (f"\nMemory weight per variant, chosen on the validation images (the simplest within one standard error "
                f"of the best AUROC): {kept}; other variants {default}.\n")
    if any(c.by_share for c in choices.values()):
        shares = ", ".join(f"{name or '.'} {c.share}" for name, c in choices.items())
        note += ("\nPaDiM's share of the memory's map per variant, chosen with the weight (0: nearest patches alone, "
                 f"1: PaDiM alone; other variants 0; the image score takes PaDiM's peak by its share): {shares}.\n")
    return note


def _threshold_note(found: tuple[float, int] | None, threshold: float, memory_only: bool) -> str:
    if found is None:
        return (f"\nThreshold: {threshold} (too few good images were held out to set it on this memory's scale; run "
                "`adcopilot calibrate` with labelled parts).\n")
    sources = ("the held-out ones inspected 1-shot against the validation memory, and the memory's calibration images "
               "against a bank of the others" if memory_only else
               "the held-out ones inspected 1-shot against the validation memory")
    return (f"\nThreshold: {threshold}, the {NORMAL_QUANTILE:.0%} quantile of {found[1]} good images' scores, each "
            f"without itself ({sources}): about {1 - NORMAL_QUANTILE:.0%} of good parts flagged when they are many, "
            "more with few. `adcopilot calibrate` with labelled parts sets it by the cost of a miss and of a false "
            "alarm.\n")


def _validation_section(choices: dict[str, VariantChoice]) -> str:
    """The model card's held-out measure: image AUROC per variant and memory weight."""
    if not choices:
        return ""
    with_memory = any(len(c.auroc) > 1 for c in choices.values())
    weights = WEIGHTS if with_memory else (0.0,)
    head = " | ".join(f"weight {w}" for w in weights) if with_memory else "image AUROC"
    def row(name: str, c: VariantChoice, share: float, aurocs: dict[float, float]) -> str:
        label = f"{name or '.'}" + (f", PaDiM share {share}" if c.by_share else "")
        kept = share == c.share
        return (f"| {label} | {c.normals} | {c.anomalies} ({c.anomaly_source}) | "
                + " | ".join(f"**{aurocs[w]:.3f}**" if kept and w == c.weight else f"{aurocs[w]:.3f}" for w in weights)
                + " |")

    rows = "\n".join(row(name, c, share, aurocs) for name, c in choices.items()
                     for share, aurocs in (c.by_share or {c.share: c.auroc}).items())
    return (
        "\n## Validation (held-out images, `validation.json`)\n\n"
        "Images held out of fine-tuning" + (" and of the memory they were inspected with" if with_memory else "")
        + "; 1-shot, registered, each "
        "with a reference drawn from the variant's training images. Image AUROC"
        + (" by the memory's weight in the fused map (0: comparison model alone, 1: memory alone; bold: the "
           "weight kept)" if with_memory else " of the pooled map (`inspect` scores one reference with the config's "
           "`image_score`)") + ":\n\n"
        f"| variant | good | defective | {head} |\n|---|---|---|{'---|' * len(weights)}\n{rows}\n"
    )
