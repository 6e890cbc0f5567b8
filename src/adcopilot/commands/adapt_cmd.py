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
        memory_weight: float = typer.Option(
            0.5, "--memory-weight", help="Weight of the memory's map in the fused anomaly map (0-1)."
        ),
    ) -> None:
        """Fine-tune the comparison model on your own good (and optionally bad) images, minutes on a CPU."""
        from adcopilot.data.folders import load_folder_groups
        from adcopilot.errors import AdcopilotError
        from adcopilot.train.adapt import adapt_card, default_licence_note, resolve_base

        if steps < 0:
            raise AdcopilotError(f"--steps must be 0 or more, got {steps}")
        if memory_patches < 0:
            raise AdcopilotError(f"--memory-patches must be 0 or more, got {memory_patches}")
        if not 0.0 <= memory_weight <= 1.0:
            raise AdcopilotError(f"--memory-weight must lie in [0, 1], got {memory_weight}")
        if steps == 0 and memory_patches == 0:
            raise AdcopilotError("nothing to do: --steps 0 and --memory-patches 0")
        base = resolve_base(model)
        good, groups, bad_good = load_folder_groups(normals, size)
        bad_imgs, defect_groups, bad_def = load_folder_groups(defects, size) if defects is not None else ([], [], [])
        for path, reason in bad_good + bad_def:
            typer.echo(f"skipped {path}: {reason}", err=True)
        if len(good) < 2:
            raise AdcopilotError(f"{normals}: adaptation needs at least two readable good images")
        variants = {g or ".": groups.count(g) for g in sorted(set(groups))}
        typer.echo("good images per variant: " + ", ".join(f"{g} {n}" for g, n in variants.items()), err=True)
        sources = {"normals": str(normals), "n_normals": len(good), "variants": variants}
        if defects is not None:
            sources.update({"defects": str(defects), "n_defects": len(bad_imgs)})
        if memory_patches:
            sources["memory"] = {"patches_per_variant": memory_patches, "weight": memory_weight, "seed": seed}
        card = adapt_card(sources, str(base), licence or default_licence_note())
        if steps == 0:
            _copy_base(base, out, card, seed)
        else:
            _fine_tune(out, base, good, groups, bad_imgs, defect_groups, card,
                       seed=seed, steps=steps, batch_size=batch_size, lr=lr, size=size, resume=resume)
        if memory_patches:
            _write_memory(out, normals, good, groups, memory_patches, memory_weight, seed)
        typer.echo(f"adapted model: {out}  (use: adcopilot inspect QUERY --ref REF --model {out})")


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
    out: Path, normals: Path, good: list, groups: list[str], patches: int, weight: float, seed: int
) -> None:
    """Build the product memory from the good images at the model's size; record it in config.json.

    ``good`` / ``groups`` are the images already loaded (uint8, training size), reused when that is the
    model's size; otherwise the folder is read again at the model's size.
    """
    import json

    import numpy as np
    from tqdm import tqdm

    from adcopilot.data.folders import load_folder_groups
    from adcopilot.model.memory import build_memory
    from adcopilot.model.nano import load_nano_detector

    detector, _ = load_nano_detector(out)
    size = detector.image_size
    if good[0].shape[0] != size:
        good, groups, _ = load_folder_groups(normals, size)  # bad files were reported above

    def features(image):  # uint8 -> float one image at a time: a float copy of all would be large
        return detector.patch_features(image.astype(np.float32) / 255.0)

    with tqdm(total=len(good), desc="product memory", unit="img") as bar:
        memory = build_memory(good, groups, features, patches=patches, seed=seed, progress=bar.update)
    if not memory.variants:
        typer.echo("no variant has two good images: the model is written without a product memory", err=True)
        return
    memory.save(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["memory_weight"] = weight
    config_path.write_text(json.dumps(config, indent=2))
    card = out / "MODEL_CARD.md"
    summary = json.dumps(memory.describe(), indent=2)
    card.write_text(card.read_text() + f"\n## Product memory (`{out.name}/memory.safetensors`, weight {weight})\n"
                    f"```json\n{summary}\n```\n")
