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
            "those of --normals pair with that variant). With --steps 0 all of them validate (nothing trains "
            "on them); otherwise a --validation share.",
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
            32768, "--memory-patches",
            help="Normal patches kept per variant in the product memory (0: no memory; see model/memory.py).",
        ),
        memory_weight: str = typer.Option(
            None, "--memory-weight",
            help="Weight of the memory's map in the fused anomaly map: a number in 0-1, or 'auto' to take, per "
            "variant, the weight with the best AUROC on the validation images (noisy with few of them). Default: "
            "0.5 after fine-tuning; 'auto' with --steps 0 (0.75 for variants too small to hold images out).",
            show_default=False,
        ),
        padim: str = typer.Option(
            None, "--padim",
            help="'auto': PaDiM statistics (a Gaussian of the good images' features per position, for aligned "
            "products) beside the memory, their share of the memory's map and image score (PaDiM's own: its "
            "map's peak) chosen per variant on the validation images (0 keeps them out); 'off': none. Default: "
            "'auto' with --steps 0, else 'off'.",
            show_default=False,
        ),
        validation: float = typer.Option(
            0.2, "--validation",
            help="Share of each variant's images held out of training to measure the adapted model (image AUROC "
            "in the model card); 0: none; at most 0.5. Variants under 10 good images keep all theirs.",
        ),
    ) -> None:
        """Fine-tune the comparison model on your own good (and optionally bad) images, minutes on a CPU."""
        from adcopilot.train.adapt_run import AdaptOptions, run_adapt

        options = AdaptOptions(
            normals=normals, defects=defects, out=out, model=model, steps=steps, batch_size=batch_size, lr=lr,
            size=size, seed=seed, licence=licence, resume=resume, memory_patches=memory_patches,
            memory_weight=memory_weight, padim=padim, validation=validation,
        )
        run_adapt(options, echo=lambda m: typer.echo(m, err=True))
        typer.echo(f"adapted model: {out}  (use: adcopilot inspect QUERY --ref REF --model {out})")
