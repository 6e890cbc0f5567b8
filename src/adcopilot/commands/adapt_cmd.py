"""``adcopilot adapt --normals DIR [--defects DIR] --out DIR``: fit the model to your product."""

from __future__ import annotations

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
        steps: int = typer.Option(300, "--steps", help="Training steps (about 1-2 s each on 2 CPU cores)."),
        batch_size: int = typer.Option(8, "--batch-size"),
        lr: float = typer.Option(1e-4, "--lr"),
        size: int = typer.Option(160, "--size", help="Training image size in pixels."),
        seed: int = typer.Option(0, "--seed"),
        licence: str = typer.Option(None, "--licence", help="Licence of your images, recorded in the model card."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted adaptation in OUT."),
    ) -> None:
        """Fine-tune the comparison model on your own good (and optionally bad) images, minutes on a CPU."""
        from adcopilot.data.folders import load_folder_groups
        from adcopilot.errors import AdcopilotError
        from adcopilot.train.adapt import AdaptSampler, adapt_card, default_licence_note, resolve_base
        from adcopilot.train.config import TrainConfig
        from adcopilot.train.loop import train
        from adcopilot.train.stage1 import Stage1Task

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
        cfg = TrainConfig(
            stage=1, name=out.name, seed=seed, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(20, steps),
            checkpoint_every=max(10, min(50, steps)), log_every=10, eval_every=0, eval_pairs=48,
            run_dir=str(out / "run"), init_from=str(base),
            # k-shot batches (2-5 references, other good images of the variant) as often as inspection uses them.
            data={"train_size": size, "multi_ref_prob": 0.3, "max_refs": 5},
        )
        card = adapt_card(sources, str(base), licence or default_licence_note())
        task = Stage1Task(cfg, sampler=AdaptSampler(good, bad_imgs, groups=groups, defect_groups=defect_groups), card_writer=card)
        final = train(task, cfg, resume=resume)
        # The adapted checkpoint lives directly in OUT (the run folder keeps logs and training state).
        for f in final.iterdir():
            (out / f.name).write_bytes(f.read_bytes())
        typer.echo(f"adapted model: {out}  (use: adcopilot inspect QUERY --ref REF --model {out})")
