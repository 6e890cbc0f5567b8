"""Stages 2 and 3 of AD-Copilot-nano: teaching SmolLM2 to talk about what the comparison saw.

Stage 2, alignment and domain knowledge: the projectors learn to speak to the frozen language
model on captions (detail captions, spot-the-difference captions) and inspection-knowledge text
grounded in the pair (what the object is, which defect it shows and what that defect is).

Stage 3, inspection instruction tuning: LoRA adapters on the language model plus the projectors,
on the Chat-AD mixture (multiple-choice questions of the seven MMAD sub-tasks, anomaly questions
balanced between normal and defective queries; multi-turn VQA; box labels; boxes as JSON;
captions).

Module groups (``adcopilot.model.stages``) in the nano model: ``projector`` = the projectors of
:class:`adcopilot.language.model.NanoCopilot`, ``lora`` = its LoRA adapters. The vision tower and
the whole Comparison Encoder (its layers *and* its comparison queries) stay frozen in both stages:
their outputs are precomputed once per sample (:mod:`adcopilot.train.language_data`), which is what
makes the two stages fit 90 minutes on 2 CPU cores, and the shipped detector (verdicts, boxes,
calibrated thresholds) stays exactly the stage-1 model. Stage-3's low-learning-rate update of the
Comparison Encoder in the shared stage table is therefore not applied at nano scale; the
LLM-side comparison projector, trained in both stages, adapts the comparison tokens instead.

Batches are a pure function of (seed, step), so ``--resume`` replays the same stream.

Usage::

    task = LanguageTask(load_config("configs/stage2.yaml"))
    train(task, task.cfg)
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adcopilot.data.knowledge import Knowledge
from adcopilot.data.questions import MMAD_SUBTASK, object_display, sentence
from adcopilot.errors import AdcopilotError
from adcopilot.geometry import region_name
from adcopilot.language.answer import answer_choice
from adcopilot.language.llm import load_llm
from adcopilot.language.model import NanoCopilot, NanoCopilotConfig
from adcopilot.language.prompt import mcq_answer, strip_preamble
from adcopilot.language.visual import CELL_STATS, VisualInputs
from adcopilot.model.stages import get_stage
from adcopilot.train.config import TrainConfig
from adcopilot.train.language_card import language_card
from adcopilot.train.language_data import KNOWLEDGE, ChatData, ChatDataConfig
from adcopilot.train.loop import SingleRateTask

log = logging.getLogger(__name__)

#: Mixture weights per stage: family -> probability of a conversation of that family.
MIXTURES: dict[int, dict[str, float]] = {
    2: {"caption": 0.2, "comparison": 0.1, "object": 0.35, "defect": 0.35},
    3: {"ad_normal": 0.12, "ad_defect": 0.12, "mcq": 0.42, "label": 0.08, "vqa": 0.1, "localization": 0.08,
        "caption": 0.05, "comparison": 0.03},
}
AD = "Anomaly Detection"
LABEL_ASK = "What type of defect is at the {region} of the image?"


def _turns(s: dict) -> list[dict[str, str]]:
    return [{"role": t["role"], "content": t["content"]} for t in s["turns"]]


class Mixture:
    """The conversations of one stage, drawn family by family (see :data:`MIXTURES`)."""

    def __init__(self, data: Any, stage: int, split: str = "train", frame: int = 256, max_vqa_turns: int = 2,
                 max_pack: int = 2) -> None:
        self.data = data
        self.weights = MIXTURES[stage]
        self.kb = Knowledge.load([KNOWLEDGE])
        self.frame = frame
        self.max_vqa_turns = max_vqa_turns
        self.max_pack = max_pack
        samples = data.samples(split)
        self.label_index = {lab: i for i, lab in enumerate(data.defect_labels())}
        self.pools: dict[str, list[dict]] = defaultdict(list)
        self.mcq_by_image: dict[str, list[dict]] = defaultdict(list)
        for s in samples:
            task = s["task"]
            if task == "mcq":
                self.mcq_by_image[s["image"]].append(s)
                if s.get("type") == AD:
                    self.pools["ad_defect" if s.get("defect") else "ad_normal"].append(s)
                else:
                    self.pools["mcq"].append(s)
            elif task in ("caption", "comparison", "vqa", "localization"):
                self.pools[task].append(s)
            if task == "caption":  # one per image: the grounded knowledge families
                self.pools["object"].append(s)
                if s.get("defect") is None or s.get("boxes"):
                    self.pools["defect"].append(s)
                if s.get("boxes"):
                    self.pools["label"].append(s)
        self.families = [f for f in self.weights if self.pools.get(f)]
        if not self.families:
            raise AdcopilotError(f"{data.root}: no samples for stage {stage}'s mixture")
        p = np.array([self.weights[f] for f in self.families])
        self.p = p / p.sum()

    def draw(self, rng: np.random.Generator) -> tuple[list[dict[str, str]], VisualInputs, int]:
        """One conversation, its visual inputs and the index of its defect label (-1: none)."""
        fam = self.families[int(rng.choice(len(self.families), p=self.p))]
        pool = self.pools[fam]
        s = pool[int(rng.integers(len(pool)))]
        label = self.label_index.get(s["boxes"][0]["label"], -1) if s.get("defect") and s.get("boxes") else -1
        return self.conversation(fam, s, rng), self.data.visual(s), label

    # ---------------------------------------------------------------- families
    def conversation(self, fam: str, s: dict, rng: np.random.Generator) -> list[dict[str, str]]:
        if fam in ("ad_normal", "ad_defect", "mcq"):
            return self._mcq(s, rng)
        if fam == "label":
            return self._label(s, rng)
        if fam == "object":
            return self._object(s)
        if fam == "defect":
            return self._defect(s)
        turns = _turns(s)
        if fam == "vqa":
            return turns[: 2 * self.max_vqa_turns]
        if fam == "localization":
            return self._localization(s, turns)
        return turns

    def _mcq(self, s: dict, rng: np.random.Generator) -> list[dict[str, str]]:
        # Up to max_pack questions about the same pair in one conversation (the image tokens are
        # paid once); the first is the drawn one, so families keep their weights.
        others = [o for o in self.mcq_by_image.get(s["image"], []) if o["id"] != s["id"]]
        k = int(rng.integers(0, min(self.max_pack, len(others) + 1)))
        chosen = [s] + [others[int(i)] for i in rng.choice(len(others), size=k, replace=False)] if k else [s]
        out: list[dict[str, str]] = []
        for q in chosen:
            out += [{"role": "user", "content": strip_preamble(q["turns"][0]["content"])},
                    {"role": "assistant", "content": mcq_answer(q["answer"], q["options"])}]
        return out

    def _label(self, s: dict, rng: np.random.Generator) -> list[dict[str, str]]:
        b = s["boxes"][int(rng.integers(len(s["boxes"])))]
        w, h = s["image_size"]
        return [{"role": "user", "content": LABEL_ASK.format(region=region_name(b["bbox_2d"], w, h))},
                {"role": "assistant", "content": f"{b['label']}."}]

    def _object(self, s: dict) -> list[dict[str, str]]:
        info = self.kb.object(s["category"])
        name = object_display(s["category"], self.kb)
        text = f"It is {'an' if name[:1] in 'aeiou' else 'a'} {name}."
        if info is not None and info.description:
            text += f" {sentence(info.description)}"
        return [{"role": "user", "content": "What is the object in the query image? Describe it."},
                {"role": "assistant", "content": text}]

    def _defect(self, s: dict) -> list[dict[str, str]]:
        ask = "Does the query have a defect? If so, what kind of defect is it?"
        if s.get("defect") is None:
            return [{"role": "user", "content": ask},
                    {"role": "assistant", "content": "No. The query matches the normal sample; it has no defect."}]
        label = s["boxes"][0]["label"]
        d = self.kb.defect(s["defect"])
        text = f"Yes. It has {'an' if label[:1] in 'aeiou' else 'a'} {label}."
        if d is not None and d.description:
            text += f" {sentence(d.description)}"
        return [{"role": "user", "content": ask}, {"role": "assistant", "content": text}]

    def _localization(self, s: dict, turns: list[dict[str, str]]) -> list[dict[str, str]]:
        """Boxes rescaled to the model's frame x frame input (what the model sees)."""
        w, h = s["image_size"]
        sx, sy = self.frame / float(w), self.frame / float(h)
        boxes = [{"bbox_2d": [round(b["bbox_2d"][0] * sx), round(b["bbox_2d"][1] * sy), round(b["bbox_2d"][2] * sx),
                              round(b["bbox_2d"][3] * sy)], "label": b["label"]} for b in s.get("boxes", [])]
        return [turns[0], {"role": "assistant", "content": json.dumps(boxes)}]


class LanguageTask(SingleRateTask):
    """Stage 2 or 3 for :func:`adcopilot.train.loop.train`.

    Config: ``init_from`` is the checkpoint to start from (stage 2: a stage-1 comparison
    checkpoint; stage 3: a stage-2 export); ``data`` holds ``dir`` (where the training data is
    built) and :class:`~adcopilot.train.language_data.ChatDataConfig` keys; ``model`` holds
    :class:`~adcopilot.language.model.NanoCopilotConfig` overrides (e.g. ``use_compare: false``
    for the ablation)."""

    def __init__(self, cfg: TrainConfig, llm: Any = None, tokenizer: Any = None, data: Any = None,
                 progress: bool = True) -> None:
        if cfg.stage not in (2, 3):
            raise AdcopilotError(f"LanguageTask trains stages 2 and 3, not {cfg.stage}")
        if not cfg.init_from:
            what = "a stage-1 comparison checkpoint" if cfg.stage == 2 else "a stage-2 export"
            raise AdcopilotError(f"stage {cfg.stage} needs --init-from: {what}")
        self.cfg = cfg
        if cfg.data.get("threads"):  # on a shared CPU one thread per process is often fastest
            torch.set_num_threads(int(cfg.data["threads"]))
        self.stage = get_stage(cfg.stage)
        self.init = Path(cfg.init_from)
        # The text-only ablation has no projectors to align: it may start from a stage-1 checkpoint.
        self.text_only = cfg.model.get("use_images") is False
        if not (self.init / "model.safetensors").exists():
            raise AdcopilotError(f"{self.init}: not a checkpoint folder (model.safetensors missing)")
        if cfg.stage == 3 and not self.text_only and not (self.init / "language" / "config.json").exists():
            raise AdcopilotError(f"{self.init}: no language/ folder; stage 3 starts from a stage-2 export")
        # The comparison model whose outputs the language model learns from. Stage 3 continues the
        # language model of its init_from, so it keeps that model's comparison copy
        # (language/comparison/; the root's detector may have been retrained since); a new language
        # model (stage 2, the text-only ablation) learns from the checkpoint's own detector.
        own = self.init / "language" / "comparison"
        continues = cfg.stage == 3 and not self.text_only
        self.comparison = own if continues and (own / "model.safetensors").exists() else self.init
        if data is None:
            opts = {k: v for k, v in cfg.data.items() if k not in ("dir", "threads")}
            root = Path(cfg.data.get("dir", Path(cfg.run_dir).parent / "chatdata"))
            data = ChatData.prepare(root, self.comparison, ChatDataConfig.from_dict(opts), progress=progress)
        self.data = data
        self.llm, self.tokenizer = llm, tokenizer
        self.mixture = Mixture(data, cfg.stage, frame=self._frame())
        self._eval: list[dict] | None = None

    def _frame(self) -> int:
        return int(json.loads((self.comparison / "config.json").read_text()).get("image_size", 256))

    # ---------------------------------------------------------------- model
    def build(self) -> nn.Module:
        overrides = dict(self.cfg.model)
        if self.cfg.stage == 2:
            if self.llm is None:
                self.llm, self.tokenizer = load_llm(overrides.get("llm", NanoCopilotConfig.llm))
            cfg = NanoCopilotConfig.from_dict({**overrides, "lora": False, "defect_labels": self.data.defect_labels()})
            model = NanoCopilot.build(cfg, self.llm, self.tokenizer)
        elif self.text_only:  # a new text-only language model (the ablation), from any checkpoint
            if self.llm is None:
                self.llm, self.tokenizer = load_llm(overrides.get("llm", NanoCopilotConfig.llm))
            cfg = NanoCopilotConfig.from_dict({**overrides, "lora": False, "defect_labels": self.data.defect_labels()})
            model = NanoCopilot.build(cfg, self.llm, self.tokenizer)
            model.enable_lora()
        else:
            model = NanoCopilot.load(self.init / "language", self.llm, self.tokenizer)
            for k in ("use_images", "use_compare", "lora_r", "lora_alpha", "lora_targets", "system"):
                if k in overrides:
                    setattr(model.cfg, k, overrides[k])
            model.enable_lora()
        if getattr(model.projectors, "anchored", False) and model.cfg.use_images and model.cfg.use_compare:
            if self.cfg.stage == 3:  # the detector line (a stage-2 export may predate it)
                model.cfg.evidence = bool(overrides.get("evidence", True))
            fit_type_head(model.projectors, self.data, seed=self.cfg.seed)
            model.cfg.evidence_threshold = fit_evidence_threshold(self.data)
        if model.cfg.defect_labels != self.data.defect_labels():
            raise AdcopilotError(f"{self.init}: trained on other defect labels than the data in {self.data.root}")
        groups = {"projector": model.projectors.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for g in self.stage.trainable:
            for p in groups.get(g, []):
                p.requires_grad_(True)
        if "lora" in self.stage.trainable:
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(True)
        skipped = [g for g in self.stage.trainable if g not in ("projector", "lora")]
        if skipped:
            log.info("stage %d: groups %s stay frozen at nano scale (their outputs are precomputed)",
                     self.cfg.stage, skipped)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("stage %d: %d trainable parameters", self.cfg.stage, n)
        model.train()
        return model

    # ---------------------------------------------------------------- data
    def batches(self, start_step: int, process_index: int) -> Iterator[tuple[int, Any]]:
        step = start_step
        while True:
            rng = np.random.default_rng([self.cfg.seed, step, process_index])
            yield step, [self.mixture.draw(rng) for _ in range(self.cfg.batch_size)]
            step += 1

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return model(batch)  # forward = loss, through the data-parallel wrapper when there is one

    # ---------------------------------------------------------------- evaluation
    def _eval_questions(self) -> list[dict]:
        """A fixed, type-balanced set of held-out multiple-choice questions."""
        if self._eval is None:
            by_type: dict[str, list[dict]] = defaultdict(list)
            for s in self.data.samples("test"):
                if s["task"] == "mcq":
                    by_type[s["type"]].append(s)
            rng = np.random.default_rng(4242)
            n = max(1, self.cfg.eval_pairs // max(1, len(by_type)))
            out: list[dict] = []
            for t in sorted(by_type):
                pool = by_type[t]
                out += [pool[int(i)] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]
            self._eval = out
        return self._eval

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Multiple-choice accuracy on held-out curated questions (likelihood answers)."""
        was = model.training
        model.eval()
        hits: dict[str, list[float]] = defaultdict(list)
        for s in self._eval_questions():
            q = strip_preamble(s["turns"][0]["content"]).split("\n")[0]
            v = self.data.visual(s) if model.cfg.use_images else None  # type: ignore[union-attr]
            letter = answer_choice(model, v, q, s["options"])  # type: ignore[arg-type]
            hits[MMAD_SUBTASK.get(s["type"], s["type"])].append(float(letter == s["answer"]))
        model.train(was)
        res = {k: round(100 * float(np.mean(v)), 1) for k, v in sorted(hits.items())}
        if res:
            res["mean"] = round(float(np.mean(list(res.values()))), 1)
        return res

    # ---------------------------------------------------------------- export
    def export(self, model: nn.Module, folder: Path, metrics: dict[str, Any]) -> None:
        """A complete checkpoint: the detector of ``init_from`` (copied) + ``language/``, which keeps
        in ``language/comparison/`` the comparison model its visual inputs came from."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(self.init / name, folder / name)
        model.cfg.training = {"stage": self.cfg.stage, "seed": self.cfg.seed, **metrics}  # type: ignore[union-attr]
        model.save(folder / "language")  # type: ignore[operator]
        (folder / "language" / "comparison").mkdir(exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(self.comparison / name, folder / "language" / "comparison" / name)
        card = language_card(self.cfg, metrics, self.init, model.cfg)  # type: ignore[arg-type]
        previous = (self.init / "MODEL_CARD.md").read_text() if (self.init / "MODEL_CARD.md").exists() else ""
        (folder / "MODEL_CARD.md").write_text(merge_card(previous, f"stage {self.cfg.stage}", card))


def fit_evidence_threshold(data: Any) -> float:
    """The image score that best separates normal from defective training queries (balanced
    accuracy), used by the detector line of the prompt."""
    scores, bad = [], []
    for s in data.samples("train"):
        if s["task"] == "caption":  # one per image
            scores.append(data.visual(s).score)
            bad.append(s.get("defect") is not None)
    x, y = np.array(scores), np.array(bad)
    if not y.any() or y.all():
        return 0.5
    cands = np.unique(x)
    bal = [((x >= t)[y].mean() + (x < t)[~y].mean()) / 2 for t in cands]
    t = float(cands[int(np.argmax(bal))])
    log.info("detector line threshold %.3f (balanced accuracy %.3f on %d training images)", t, max(bal), len(x))
    return t


def fit_type_head(projectors: nn.Module, data: Any, *, steps: int = 400, l2: float = 0.1, seed: int = 0) -> float:
    """Fit the defect-type head on the precomputed features of every labelled training defect.

    A regularised softmax regression on the hottest cell's features, seconds on a CPU; the
    stages then fine-tune it with its auxiliary loss. Without this the head would learn from the
    few labelled conversations of each training step only. Returns the final training loss."""
    index = {lab: i for i, lab in enumerate(data.defect_labels())}
    xs, ys = [], []
    for s in data.samples("train"):
        if s["task"] == "caption" and s.get("defect") and s.get("boxes"):  # one per image
            cells = data.visual(s).cells
            xs.append(cells[int(cells[:, 0].argmax()), CELL_STATS:])
            ys.append(index[s["boxes"][0]["label"]])
    if not xs:
        return float("nan")
    return fit_head(projectors.type_head, torch.stack(xs), torch.tensor(ys), steps=steps, l2=l2, seed=seed)


def fit_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 400, l2: float = 0.1, seed: int = 0,
             lr: float = 1e-2, balanced: bool = False, after_step: Callable[[int], None] | None = None) -> float:
    """Full-batch Adam on the type head (LayerNorm + Linear): cross-entropy of features x (N, 2C)
    against label indices y (N,) plus ``l2`` times the squared weights of its last layer.
    ``balanced``: every label weighs the same in the loss whatever its count; ``after_step(n)`` is
    called after the n-th step (e.g. to validate along the way). Returns the final loss."""
    dev = next(head.parameters()).device
    x, y = x.to(dev), y.to(dev)
    k = head[-1].out_features
    weight = None
    if balanced:
        counts = torch.bincount(y, minlength=k).float()
        weight = torch.where(counts > 0, counts.sum() / (k * counts.clamp(min=1)), torch.zeros_like(counts))
    torch.manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for step in range(1, steps + 1):
        logits = head(x)
        loss = torch.nn.functional.cross_entropy(logits, y, weight=weight) + l2 * head[-1].weight.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(step)
    with torch.no_grad():
        acc = float((head(x).argmax(-1) == y).float().mean())
    final = float(loss.detach())
    log.info("defect-type head fitted on %d labelled defects: loss %.3f, training accuracy %.3f", len(y), final, acc)
    return final


def merge_card(text: str, key: str, section: str) -> str:
    """Replace (or append) the section marked ``<!-- language:{key} -->`` in a model card."""
    start, end = f"<!-- language:{key} -->", f"<!-- /language:{key} -->"
    block = f"{start}\n{section.strip()}\n{end}\n"
    if start in text and end in text:
        a, b = text.index(start), text.index(end) + len(end)
        return text[:a] + block.rstrip("\n") + text[b:]
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
