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
from safetensors.torch import load_file, save_file

from adcopilot.errors import AdcopilotError
from adcopilot.language.model import NanoCopilotConfig, Projectors
from adcopilot.model.checkpoint_kind import DEFAULT_CHECKPOINT
from adcopilot.train.stage_language import fit_head
from adcopilot.train.type_head_data import SPLITS, TypeHeadDataConfig, build, load_split

log = logging.getLogger("type_head")
HEAD = "type_head."


def checkpoint(name: str) -> Path:
    return DEFAULT_CHECKPOINT if name == "default" else Path(name)


def load_head(ckpt: Path) -> tuple[torch.nn.Module, list[str]]:
    """The type head of a checkpoint's language model (no language model loaded) and its labels."""
    cfg = NanoCopilotConfig.from_dict(json.loads((ckpt / "language" / "config.json").read_text()))
    head = Projectors(cfg).type_head
    state = load_file(str(ckpt / "language" / "projectors.safetensors"))
    head.load_state_dict({k[len(HEAD):]: v for k, v in state.items() if k.startswith(HEAD)})
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
        for line in f:
            r = json.loads(line)
            if r.get("type") != "Defect Classification":
                continue
            opts = {k: v.rstrip(".") for k, v in r["options"].items()}
            row = out.setdefault(opts[r["gold"]], {})
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


def cmd_fit(a: argparse.Namespace) -> None:
    base = checkpoint(a.model)
    head, labels = load_head(base)
    data = Path(a.data)
    xv, yv = load_split(data, "val", labels)
    shipped_val = per_type(head, xv, yv, labels)
    grid = []
    for cell in ("hottest", "defect"):
        x, y = load_split(data, "train", labels, cell=cell)
        for l2 in a.l2:
            for steps in a.steps:
                cand, _ = load_head(base)
                fit_head(cand, x, y, steps=steps, l2=l2, seed=a.seed, balanced=True)
                r = per_type(cand, xv, yv, labels)
                grid.append({"cell": cell, "l2": l2, "steps": steps, "val_accuracy": r["accuracy"],
                             "val_balanced": r["balanced"]})
                log.info("%s", grid[-1])
    best = max(grid, key=lambda g: (g["val_balanced"], g["val_accuracy"]))
    x, y = load_split(data, "train", labels, cell=best["cell"])
    fitted, _ = load_head(base)
    fit_head(fitted, x, y, steps=best["steps"], l2=best["l2"], seed=a.seed, balanced=True)
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    state = load_file(str(base / "language" / "projectors.safetensors"))
    for k, v in fitted.state_dict().items():
        assert state[HEAD + k].shape == v.shape
        state[HEAD + k] = v.detach().contiguous()
    save_file(state, str(out / "language" / "projectors.safetensors"))
    report = {"choice": best, "grid": grid, "shipped": {"val": shipped_val}, "new": {}}
    for split in ("val", "test"):
        xs, ys = load_split(data, split, labels)
        report["new"][split] = per_type(fitted.eval(), xs, ys, labels)
        report["shipped"][split] = per_type(head, xs, ys, labels)
    (out / "type_head.json").write_text(json.dumps(report, indent=1))
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
    f.add_argument("--steps", type=int, nargs="+", default=[200, 400, 800, 1600])
    f.add_argument("--l2", type=float, nargs="+", default=[0.0, 0.01, 0.03, 0.1, 0.3])
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
