"""The defect-type head measured per type, and refitted on a larger synthetic set.

Three steps (CPU; the features are computed once, fitting takes seconds):

    # 1. paint and encode the set (split by product; parts may run as separate processes)
    python benchmarks/type_head.py build --out runs/typehead-data --part 0 --parts 2
    # 2. a checkpoint's head per type on a split (accuracy, confusion)
    python benchmarks/type_head.py measure --data runs/typehead-data --split test --model default
    # 3. choose steps / L2 / cell on the val split, refit on train, write a checkpoint with the new head
    python benchmarks/type_head.py fit --data runs/typehead-data --out runs/typehead-ckpt

``fit`` copies the base checkpoint and replaces only the type head's tensors in
``language/projectors.safetensors``; its choice and the per-type val/test accuracy go to
``OUT/type_head.json``. ``dc RUN`` prints an ``adcopilot eval mmad`` run's Defect Classification
answers by true type.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adcopilot.errors import AdcopilotError
from adcopilot.language.model import NanoCopilotConfig, Projectors
from adcopilot.model.checkpoint_kind import DEFAULT_CHECKPOINT
from adcopilot.train.stage_language import fit_head, merge_card
from adcopilot.train.type_head_data import SPLITS, TypeHeadDataConfig, build, load_split, read_set

log = logging.getLogger("type_head")
HEAD = "type_head."


def checkpoint(name: str) -> Path:
    return DEFAULT_CHECKPOINT if name == "default" else Path(name)


def load_head(ckpt: Path) -> tuple[torch.nn.Module, list[str]]:
    """The type head of a checkpoint's language model (no language model loaded) and its labels."""
    try:
        cfg = NanoCopilotConfig.from_dict(json.loads((ckpt / "language" / "config.json").read_text()))
        head = Projectors(cfg).type_head
        state = load_file(str(ckpt / "language" / "projectors.safetensors"))
        head.load_state_dict({k[len(HEAD):]: v for k, v in state.items() if k.startswith(HEAD)})
    except (OSError, ValueError, TypeError, RuntimeError) as exc:  # missing, corrupt, or no type head
        raise AdcopilotError(f"{ckpt}: no readable language model with a type head ({exc})") from exc
    return head.eval(), list(cfg.defect_labels)


@torch.no_grad()
def per_type(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, labels: list[str]) -> dict:
    """Accuracy overall, per true label, and the confusion matrix (rows true, columns predicted)."""
    pred = head(x).argmax(-1)
    k = len(labels)
    conf = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(y.tolist(), pred.tolist(), strict=True):
        conf[t, p] += 1
    per = {labels[i]: round(100 * float(conf[i, i]) / max(1, int(conf[i].sum())), 1) for i in range(k)}
    return {"n": len(y), "accuracy": round(100 * float((pred == y).float().mean()), 1),
            "balanced": round(float(np.mean(list(per.values()))), 1), "per_type": per,
            "confusion": conf.tolist()}


def print_table(res: dict, labels: list[str]) -> None:
    short = [lab[:5] for lab in labels]
    print(f"n={res['n']} accuracy {res['accuracy']} balanced {res['balanced']}")
    print(f"{'true / predicted':18s} " + " ".join(f"{s:>5s}" for s in short) + "   acc")
    for i, lab in enumerate(labels):
        print(f"{lab:18s} " + " ".join(f"{c:5d}" for c in res["confusion"][i]) + f" {res['per_type'][lab]:5.1f}")


def dc_per_type(answers: Path) -> dict[str, dict[str, int]]:
    """Defect Classification answers of an ``eval mmad`` run folder by true type: {true: {replied: n}}."""
    path = answers / "answers.jsonl"
    if not path.exists():
        raise AdcopilotError(f"{path}: missing; run adcopilot eval mmad --task DC --out {answers} first")
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                if r.get("type") != "Defect Classification":
                    continue
                opts = {k: v.rstrip(".") for k, v in r["options"].items()}
                row = out.setdefault(opts[r["gold"]], {})
            except (ValueError, KeyError, AttributeError, TypeError) as exc:
                raise AdcopilotError(f"{path}: line {n} is not an answer record ({exc})") from exc
            got = opts.get(r["reply"] or "", "(none)")
            row[got] = row.get(got, 0) + 1
    return out


def cmd_dc(a: argparse.Namespace) -> None:
    total = right = 0
    for true, row in sorted(dc_per_type(Path(a.run)).items()):
        n, ok = sum(row.values()), row.get(true, 0)
        total, right = total + n, right + ok
        wrong = ", ".join(f"{k} {v}" for k, v in sorted(row.items(), key=lambda t: -t[1]) if k != true)
        print(f"{true:18s} {ok:3d}/{n:<3d} {100 * ok / n:5.1f}   wrong: {wrong or '-'}")
    print(f"{'all':18s} {right:3d}/{total:<3d} {100 * right / max(1, total):5.1f}")


def cmd_build(a: argparse.Namespace) -> None:
    cfg = TypeHeadDataConfig(seed=a.seed, instances=a.instances, photo_crops=a.photo_crops, per_kind=a.per_kind)
    n = build(Path(a.out), checkpoint(a.model), cfg, part=a.part, parts=a.parts)
    print(f"{n} samples in part {a.part} of {a.out}")


def cmd_measure(a: argparse.Namespace) -> None:
    head, labels = load_head(checkpoint(a.model))
    x, y = load_split(Path(a.data), a.split, labels)
    res = per_type(head, x, y, labels)
    print_table(res, labels)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


def card_section(report: dict, labels: list[str], data: Path) -> str:
    """The model card's section on the type head: labels, data, command, choice, per-type accuracy."""
    cfg = TypeHeadDataConfig(**json.loads((data / "manifest.json").read_text())["data"])
    rows, _ = read_set(data)
    n = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    prods = {s: len({r["product"] for r in rows if r["split"] == s}) for s in SPLITS}
    c = report["choice"]
    lines = [
        "## Defect-type head",
        "",
        f"The head (`type_head` in `language/projectors.safetensors`: LayerNorm + linear over the anomaly-weighted "
        f"query features of the hottest 3x3 cell and their difference from the reference) names {len(labels)} "
        f"labels: {', '.join(labels)}. They are the synthetic defect kinds of `adcopilot.data.synth` (every kind "
        "it paints); the knowledge matcher reads each label's entry in `adcopilot/data/knowledge/defects.yaml`.",
        "",
        "Refitted after stage 3 on its own labelled set (`adcopilot.train.type_head_data`; only the head's "
        "tensors changed): every synthetic kind painted "
        f"{cfg.per_kind} times on each of {sum(prods.values())} products: {cfg.instances} seeded instances of every "
        f"procedural category and {cfg.photo_crops} square crops (the centre one and random ones) of each training "
        "photo listed in the tables above (same licences; the evaluation photos excluded), each defect on a new "
        "jittered view (pose, light, blur, noise; objects inside their mask) against another view, "
        "features from this checkpoint's frozen detector. Split by product, seed 0: "
        + ", ".join(f"{s} {n[s]} defects of {prods[s]} products" for s in SPLITS) + ".",
        "",
        f"Fitted from the previous head's weights, full-batch Adam (lr 0.01), labels weighted equally; chosen on "
        f"the val split only (balanced accuracy over a grid of steps, L2 and training cell): {c['steps']} steps, "
        f"L2 {c['l2']}, training cell: {c['cell']}. Command: `python benchmarks/type_head.py build --out runs/typehead-data "
        "--part P --parts 2` (P = 0, 1), then `python benchmarks/type_head.py fit --data runs/typehead-data --model PREVIOUS "
        "--out runs/typehead-ckpt` (PREVIOUS: the checkpoint before this head; its head is the starting point).",
        "",
        "Accuracy (%) per true type, 14-way, on the val and test splits (products never fitted on), the "
        "previous head beside:",
        "",
        "| type | val previous | val | test previous | test |",
        "|---|---:|---:|---:|---:|",
    ]
    sh, nw = report["shipped"], report["new"]
    for lab in labels:
        lines.append(f"| {lab} | {sh['val']['per_type'][lab]} | {nw['val']['per_type'][lab]} | "
                     f"{sh['test']['per_type'][lab]} | {nw['test']['per_type'][lab]} |")
    for key, name in (("balanced", "mean over types"), ("accuracy", "all")):
        lines.append(f"| {name} | {sh['val'][key]} | {nw['val'][key]} | {sh['test'][key]} | {nw['test'][key]} |")
    lines += ["", f"The test split is small ({n['test']} defects of {prods['test']} products, about "
              f"{n['test'] // len(labels)} per type: one defect moves a type's figure by "
              f"{100 * len(labels) / max(1, n['test']):.1f} points). On the bundled benchmark the head answers the Defect Classification "
              "questions and steers Description and Analysis; those figures, the previous head beside, are in "
              "`benchmarks/RESULTS.md`."]
    return "\n".join(lines)


def train_set(data: Path, labels: list[str], cell: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split's features at ``cell`` ("hottest", "defect", or "both": each defect twice)."""
    if cell != "both":
        return load_split(data, "train", labels, cell=cell)
    (xh, yh), (xd, yd) = (load_split(data, "train", labels, cell=c) for c in ("hottest", "defect"))
    return torch.cat([xh, xd]), torch.cat([yh, yd])


def cmd_fit(a: argparse.Namespace) -> None:
    base = checkpoint(a.model)
    head, labels = load_head(base)
    data = Path(a.data)
    xv, yv = load_split(data, "val", labels)
    shipped_val = per_type(head, xv, yv, labels)
    grid = []
    marks = set(a.steps)
    for cell in ("hottest", "defect", "both"):
        x, y = train_set(data, labels, cell)
        for l2 in a.l2:
            cand, _ = load_head(base)

            def validate(step: int, cell: str = cell, l2: float = l2, cand: torch.nn.Module = cand) -> None:
                if step in marks:
                    r = per_type(cand, xv, yv, labels)
                    grid.append({"cell": cell, "l2": l2, "steps": step, "val_accuracy": r["accuracy"],
                                 "val_balanced": r["balanced"]})
                    log.info("%s", grid[-1])

            fit_head(cand, x, y, steps=max(marks), l2=l2, seed=a.seed, balanced=True, after_step=validate)
    best = max(grid, key=lambda g: (g["val_balanced"], g["val_accuracy"]))
    x, y = train_set(data, labels, best["cell"])
    fitted, _ = load_head(base)
    fit_head(fitted, x, y, steps=best["steps"], l2=best["l2"], seed=a.seed, balanced=True)
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    src = base / "language" / "projectors.safetensors"
    state = load_file(str(src))
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    for k, v in fitted.state_dict().items():
        assert state[HEAD + k].shape == v.shape
        state[HEAD + k] = v.detach().contiguous()
    save_file(state, str(out / "language" / "projectors.safetensors"), metadata=meta)
    report = {"choice": best, "grid": grid, "shipped": {"val": shipped_val}, "new": {}}
    for split in ("val", "test"):
        xs, ys = load_split(data, split, labels)
        report["new"][split] = per_type(fitted.eval(), xs, ys, labels)
        report["shipped"][split] = per_type(head, xs, ys, labels)
    (out / "type_head.json").write_text(json.dumps(report, indent=1))
    card = out / "MODEL_CARD.md"
    card.write_text(merge_card(card.read_text(), "type head", card_section(report, labels, data)))
    print(f"chosen on val: {best}")
    for split in ("val", "test"):
        print(f"--- {split}: shipped head")
        print_table(report["shipped"][split], labels)
        print(f"--- {split}: new head")
        print_table(report["new"][split], labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="paint and encode the labelled set")
    b.add_argument("--out", required=True)
    b.add_argument("--model", default="default", help="checkpoint whose detector gives the features")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--instances", type=int, default=TypeHeadDataConfig.instances)
    b.add_argument("--photo-crops", type=int, default=TypeHeadDataConfig.photo_crops)
    b.add_argument("--per-kind", type=int, default=TypeHeadDataConfig.per_kind)
    b.add_argument("--part", type=int, default=0)
    b.add_argument("--parts", type=int, default=1)
    m = sub.add_parser("measure", help="a checkpoint's type head per type on a split")
    m.add_argument("--data", required=True)
    m.add_argument("--model", default="default")
    m.add_argument("--split", default="test", choices=SPLITS)
    m.add_argument("--json", help="also write the figures here")
    f = sub.add_parser("fit", help="refit the head (choices on val) into a copy of the checkpoint")
    f.add_argument("--data", required=True)
    f.add_argument("--model", default="default", help="the checkpoint to copy")
    f.add_argument("--out", required=True)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    f.add_argument("--l2", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0, 10.0])
    d = sub.add_parser("dc", help="an eval mmad run's Defect Classification answers by true type")
    d.add_argument("run", help="the run folder (--out of adcopilot eval mmad)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    try:
        {"build": cmd_build, "measure": cmd_measure, "fit": cmd_fit, "dc": cmd_dc}[a.cmd](a)
    except AdcopilotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
