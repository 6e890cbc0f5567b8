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
            None, "--memory-weight",
            help="Weight of the memory's map in the fused anomaly map: a number in 0-1 (default 0.5 after "
            "fine-tuning, 0.75 with --steps 0), or 'auto' to take, per variant, the weight with the best AUROC on "
            "the validation images (noisy with few of them).",
            show_default=False,
        ),
        validation: float = typer.Option(
            0.2, "--validation",
            help="Share of each variant's images held out of training to measure the adapted model (image AUROC "
            "in the model card); 0: none; at most 0.5. Variants under 10 good images keep all theirs.",
        ),
    ) -> None:
        """Fine-tune the comparison model on your own good (and optionally bad) images, minutes on a CPU."""
        from adcopilot.data.folders import load_folder_entries
        from adcopilot.errors import AdcopilotError
        from adcopilot.train.adapt import adapt_card, default_licence_note, resolve_base
        from adcopilot.train.adapt_finish import Images, finish
        from adcopilot.train.validation import validation_split, write_split

        if steps < 0:
            raise AdcopilotError(f"--steps must be 0 or more, got {steps}")
        if memory_patches < 0:
            raise AdcopilotError(f"--memory-patches must be 0 or more, got {memory_patches}")
        # Without fine-tuning the comparison model has never seen the product, so the memory, built from it,
        # weighs more; some weight stays with the comparison, which alone sees where things are (the memory is
        # position-free). On ELPV, 0.75 beat 0.5 at 1 and 5 shots on both cell types (benchmarks/RESULTS.md).
        weight = _parse_weight(memory_weight if memory_weight is not None else "0.75" if steps == 0 else "0.5")
        if not 0.0 <= validation <= 0.5:  # more would leave training too few images
            raise AdcopilotError(f"--validation must lie in [0, 0.5], got {validation}")
        if steps == 0 and memory_patches == 0:
            raise AdcopilotError("nothing to do: --steps 0 and --memory-patches 0")
        if weight is None and memory_patches == 0:
            raise AdcopilotError("--memory-weight auto needs a product memory (--memory-patches above 0)")
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
        # Validation images: out of fine-tuning and out of the memory they are measured with.
        held_good, held_bad = validation_split(groups, defect_groups, validation, seed)
        sources = {"normals": str(normals), "n_normals": len(good), "variants": variants}
        if defects is not None:
            sources.update({"defects": str(defects), "n_defects": len(bad_imgs)})
        if any(held_good):
            sources["validation"] = {"fraction": validation, "seed": seed, "held_out_normals": sum(held_good),
                                     "held_out_defects": sum(held_bad), "file": "validation.json"}
            out.mkdir(parents=True, exist_ok=True)
            write_split(out / "validation.json", (normals, good_paths, held_good), (defects, defect_paths, held_bad),
                        validation, seed)
        elif weight is None:
            typer.echo("--memory-weight auto: no variant has 10 good images to hold out; the weight stays 0.5", err=True)
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
        finish(out, Images(normals, good, groups, held_good), Images(defects, bad_imgs, defect_groups, held_bad),
               patches=memory_patches, weight=weight, seed=seed, echo=lambda m: typer.echo(m, err=True))
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
        num_workers=1,  # one background process draws the pairs while this one trains
        # k-shot batches (2-5 references, other good images of the variant) as often as inspection uses them.
        data={"train_size": size, "multi_ref_prob": 0.3, "max_refs": 5},
    )
    task = Stage1Task(cfg, sampler=AdaptSampler(good, bad_imgs, groups=groups, defect_groups=defect_groups), card_writer=card)
    final = train(task, cfg, resume=resume)
    # The adapted checkpoint lives directly in OUT (the run folder keeps logs and training state).
    for f in final.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
