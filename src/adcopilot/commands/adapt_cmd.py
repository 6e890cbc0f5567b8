"""``adcopilot adapt --normals DIR [--defects DIR] --out DIR``: fit the model to your product."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("adapt")
    def adapt(
        normals: Path = typer.Option(
            ..., "--normals",
            help="Folder of good images of the product (recursive; each sub-folder is a variant, and "
            "references and queries are paired within a variant).",
        ),
        defects: Path = typer.Option(
            None, "--defects",
            help="Optional folder of defective images (image-level labels; sub-folders named like "
            "those of --normals pair with that variant).",
        ),
        out: Path = typer.Option(..., "--out", help="Folder for the adapted checkpoint (inspect --model OUT)."),
        model: str = typer.Option("default", "--model", "-m", help="Checkpoint to start from."),
        steps: int = typer.Option(
            300, "--steps", help="Training steps (about 1-2 s each on 2 CPU cores); 0 builds the product memory only."
        ),
        batch_size: int = typer.Option(8, "--batch-size"),
        lr: float = typer.Option(1e-4, "--lr"),
        size: int = typer.Option(
            256, "--size",
            help="Training image size in pixels: the size inspection uses (on ELPV, 256 beat 160; 160 is ~2.5x faster).",
        ),
        seed: int = typer.Option(0, "--seed"),
        licence: str = typer.Option(None, "--licence", help="Licence of your images, recorded in the model card."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted adaptation in OUT."),
        memory_patches: int = typer.Option(
            8192, "--memory-patches",
            help="Normal patches kept per variant in the product memory (0: no memory; see model/memory.py).",
        ),
        memory_weight: str = typer.Option(
            "auto", "--memory-weight",
            help="Weight of the memory's map in the fused anomaly map: a number in 0-1, or 'auto' to choose it "
            "per variant on the --validation images.",
        ),
        validation: float = typer.Option(
            0.2, "--validation",
            help="With --memory-weight auto: share of each variant's images held out of training to choose the "
            "weight (variants under 10 good images keep all theirs, and the default weight 0.5).",
        ),
    ) -> None:
        """Fine-tune the comparison model on your own good (and optionally bad) images, minutes on a CPU."""
        from adcopilot.data.folders import load_folder_entries
        from adcopilot.errors import AdcopilotError
        from adcopilot.train.adapt import adapt_card, default_licence_note, resolve_base
        from adcopilot.train.validation import MIN_REAL_DEFECTS, holdout

        if steps < 0:
            raise AdcopilotError(f"--steps must be 0 or more, got {steps}")
        if memory_patches < 0:
            raise AdcopilotError(f"--memory-patches must be 0 or more, got {memory_patches}")
        weight = _parse_weight(memory_weight)
        if not 0.0 <= validation < 1.0:
            raise AdcopilotError(f"--validation must lie in [0, 1), got {validation}")
        if steps == 0 and memory_patches == 0:
            raise AdcopilotError("nothing to do: --steps 0 and --memory-patches 0")
        base = resolve_base(model)
        good, groups, good_paths, bad_good = load_folder_entries(normals, size)
        bad_imgs, defect_groups, defect_paths, bad_def = (
            load_folder_entries(defects, size) if defects is not None else ([], [], [], [])
        )
        for path, reason in bad_good + bad_def:
            typer.echo(f"skipped {path}: {reason}", err=True)
        if len(good) < 2:
            raise AdcopilotError(f"{normals}: adaptation needs at least two readable good images")
        variants = {g or ".": groups.count(g) for g in sorted(set(groups))}
        typer.echo("good images per variant: " + ", ".join(f"{g} {n}" for g, n in variants.items()), err=True)
        # Validation images (only to choose the memory weight): out of fine-tuning and of the memory's choice.
        split = validation if memory_patches and weight is None else 0.0
        held_good = holdout(groups, split, seed, salt=0)
        held_bad = holdout(defect_groups, split, seed, salt=1, min_held=MIN_REAL_DEFECTS)
        sources = {"normals": str(normals), "n_normals": len(good), "variants": variants}
        if defects is not None:
            sources.update({"defects": str(defects), "n_defects": len(bad_imgs)})
        if any(held_good):
            sources["validation"] = {"fraction": split, "seed": seed, "held_out_normals": sum(held_good),
                                     "held_out_defects": sum(held_bad), "file": "validation.json"}
            out.mkdir(parents=True, exist_ok=True)
            _write_split(out / "validation.json", normals, good_paths, held_good, defects, defect_paths, held_bad,
                         split, seed)
        if memory_patches:
            sources["memory"] = {"patches_per_variant": memory_patches, "seed": seed,
                                 "weight": "chosen per variant on the validation images" if weight is None else weight}
        card = adapt_card(sources, str(base), licence or default_licence_note())
        if steps == 0:
            _copy_base(base, out, card, seed)
        else:
            keep_g = [i for i, h in enumerate(held_good) if not h]
            keep_b = [i for i, h in enumerate(held_bad) if not h]
            _fine_tune(out, base, [good[i] for i in keep_g], [groups[i] for i in keep_g],
                       [bad_imgs[i] for i in keep_b], [defect_groups[i] for i in keep_b], card,
                       seed=seed, steps=steps, batch_size=batch_size, lr=lr, size=size, resume=resume)
        if memory_patches:
            _write_memory(out, normals, good, groups, memory_patches, weight, seed,
                          held_good=held_good, defects=(bad_imgs, defect_groups, held_bad), defects_dir=defects)
        typer.echo(f"adapted model: {out}  (use: adcopilot inspect QUERY --ref REF --model {out})")


def _parse_weight(text: str) -> float | None:
    """``--memory-weight``: None for "auto", else a number in [0, 1]."""
    from adcopilot.errors import AdcopilotError

    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise AdcopilotError(f"--memory-weight must be 'auto' or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise AdcopilotError(f"--memory-weight must lie in [0, 1], got {text}")
    return value


def _write_split(path: Path, normals: Path, good_paths: list[Path], held_good: list[bool], defects: Path | None,
                 defect_paths: list[Path], held_bad: list[bool], fraction: float, seed: int) -> None:
    """The validation split on disk: held-out files relative to their folders."""
    import json

    doc = {
        "fraction": fraction,
        "seed": seed,
        "normals": [p.relative_to(normals).as_posix() for p, h in zip(good_paths, held_good, strict=True) if h],
        "defects": [p.relative_to(defects).as_posix() for p, h in zip(defect_paths, held_bad, strict=True) if h] if defects else [],
    }
    path.write_text(json.dumps(doc, indent=1))


def _copy_base(base: Path, out: Path, card: Callable[..., str], seed: int) -> None:
    """The base model unchanged (no fine-tuning), with the adapted model's card."""
    from adcopilot.model.nano import NanoComparisonModel
    from adcopilot.train.config import TrainConfig

    model = NanoComparisonModel.load(base)
    model.cfg.name = out.name
    cfg = TrainConfig(stage=1, name=out.name, seed=seed, steps=0, batch_size=1)  # the card says: no fine-tuning
    model.save(out, card=card(cfg, {}), extra_config={"training": {"stage": 1, "seed": seed, "steps": 0}})


def _fine_tune(out, base, good, groups, bad_imgs, defect_groups, card, *, seed, steps, batch_size, lr, size,
               resume) -> None:
    from adcopilot.train.adapt import AdaptSampler
    from adcopilot.train.config import TrainConfig
    from adcopilot.train.loop import train
    from adcopilot.train.stage1 import Stage1Task

    cfg = TrainConfig(
        stage=1, name=out.name, seed=seed, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(20, steps),
        checkpoint_every=max(10, min(50, steps)), log_every=10, eval_every=0, eval_pairs=48,
        run_dir=str(out / "run"), init_from=str(base),
        # k-shot batches (2-5 references, other good images of the variant) as often as inspection uses them.
        data={"train_size": size, "multi_ref_prob": 0.3, "max_refs": 5},
    )
    task = Stage1Task(cfg, sampler=AdaptSampler(good, bad_imgs, groups=groups, defect_groups=defect_groups), card_writer=card)
    final = train(task, cfg, resume=resume)
    # The adapted checkpoint lives directly in OUT (the run folder keeps logs and training state).
    for f in final.iterdir():
        (out / f.name).write_bytes(f.read_bytes())


def _write_memory(
    out: Path, normals: Path, good: list, groups: list[str], patches: int, weight: float | None, seed: int,
    *, held_good: list[bool], defects: tuple[list, list[str], list[bool]], defects_dir: Path | None = None,
) -> None:
    """Build the product memory from the good images at the model's size, choose its weight (``None``:
    per variant, on the held-out images) and record both in config.json and the model card.

    ``good`` / ``groups`` are the images already loaded (uint8, training size), reused when that is the
    model's size; otherwise the folders are read again at the model's size (same files, same order).
    """
    import json

    import numpy as np
    from tqdm import tqdm

    from adcopilot.data.folders import load_folder_groups
    from adcopilot.model.memory import build_memory
    from adcopilot.model.nano import load_nano_detector

    detector, _ = load_nano_detector(out)
    detector.memory = None  # a memory left in OUT by an earlier run plays no part
    size = detector.image_size
    bad_imgs, defect_groups, held_bad = defects
    if good[0].shape[0] != size:
        good, groups, _ = load_folder_groups(normals, size)  # bad files were reported above
        if any(held_bad) and defects_dir is not None:
            bad_imgs, _, _ = load_folder_groups(defects_dir, size)

    def features(image):  # uint8 -> float one image at a time: a float copy of all would be large
        return detector.patch_features(image.astype(np.float32) / 255.0)

    choices = {}
    if weight is None and any(held_good):
        choices = _choose_weights(detector, features, good, groups, held_good, bad_imgs, defect_groups, held_bad,
                                  patches, seed)
    with tqdm(total=len(good), desc="product memory", unit="img") as bar:
        memory = build_memory(good, groups, features, patches=patches, seed=seed, progress=bar.update)
    if not memory.variants:
        typer.echo("no variant has two good images: the model is written without a product memory", err=True)
        return
    memory.save(out)
    default = 0.5 if weight is None else weight
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["memory_weight"] = default
    config["memory_weights"] = {name: c.weight for name, c in choices.items()}
    config_path.write_text(json.dumps(config, indent=2))
    card = out / "MODEL_CARD.md"
    summary = json.dumps(memory.describe(), indent=2)
    text = card.read_text() + f"\n## Product memory (`{out.name}/memory.safetensors`)\n```json\n{summary}\n```\n"
    text += _weights_section(choices, default, auto=weight is None)
    card.write_text(text)


def _choose_weights(detector, features, good, groups, held_good, bad_imgs, defect_groups, held_bad, patches, seed):
    """Per variant, the memory weight with the best 1-shot image AUROC on the held-out images, with a
    memory built from the training images only (:mod:`adcopilot.train.validation`)."""
    from tqdm import tqdm

    from adcopilot.model.memory import build_memory
    from adcopilot.model.nano import pooled_score
    from adcopilot.registration import register, warp
    from adcopilot.train.validation import MIN_REAL_DEFECTS, select_weights

    train = [i for i, h in enumerate(held_good) if not h]
    with tqdm(total=len(train), desc="validation memory", unit="img") as bar:
        detector.memory = build_memory([good[i] for i in train], [groups[i] for i in train], features,
                                       patches=patches, seed=seed, progress=bar.update)

    def by_variant(images, names, mask, keep):
        d: dict[str, list] = {}
        for img, g, h in zip(images, names, mask, strict=True):
            if h == keep:
                d.setdefault(g, []).append(img)
        return d

    def maps(query, reference):
        q, r = query.astype("float32") / 255.0, reference.astype("float32") / 255.0
        reg = register(q, r)  # as inspection does
        q = warp(q, reg.matrix) if reg.method != "identity" else q
        prob, mem, _ = detector.maps(q, [detector.encode_reference(r)])
        return prob, mem

    def score(m):
        return pooled_score(m, detector.model.cfg.topk_frac)

    val_good = by_variant(good, groups, held_good, True)
    val_bad = by_variant(bad_imgs, defect_groups, held_bad, True)
    total = sum(len(v) + (len(val_bad.get(k, [])) if len(val_bad.get(k, [])) >= MIN_REAL_DEFECTS else len(v))
                for k, v in val_good.items())
    with tqdm(total=total, desc="choosing the memory weight", unit="img") as bar:
        choices = select_weights(maps, score, by_variant(good, groups, held_good, False), val_good, val_bad, seed,
                                 progress=bar.update)
    detector.memory = None
    for name, c in choices.items():
        typer.echo(f"variant {name or '.'}: memory weight {c.weight} (validation AUROC by weight: "
                   + ", ".join(f"{w}: {a:.3f}" for w, a in c.auroc.items()) + f"; {c.anomaly_source} defects)", err=True)
    return choices


def _weights_section(choices, default: float, auto: bool) -> str:
    """The model card's account of the memory weight."""
    if not choices:
        why = ("the default: no variant had enough good images to hold some out (10)" if auto
               else "set with --memory-weight")
        return f"\nMemory weight in the fused map: {default} ({why}).\n"
    from adcopilot.train.validation import WEIGHTS

    rows = "\n".join(
        f"| {name or '.'} | {c.normals} | {c.anomalies} ({c.anomaly_source}) | "
        + " | ".join(f"{c.auroc[w]:.3f}" for w in WEIGHTS) + f" | **{c.weight}** |"
        for name, c in choices.items()
    )
    head = " | ".join(str(w) for w in WEIGHTS)
    return (
        "\nMemory weight chosen per variant on the validation images (held out of fine-tuning and of this "
        "choice's memory; 1-shot, registered, references from the training images; `validation.json`). "
        f"Image AUROC by weight (0 = comparison model only, 1 = memory only); other variants use {default}:\n\n"
        f"| variant | normal | anomalous | {head} | chosen |\n|---|---|---|{'---|' * len(WEIGHTS)}---|\n{rows}\n"
    )
