"""Stage 1, visual comparison pretraining of the nano model (vision tower frozen).

Pairs come from :class:`adcopilot.data.pairs.PairSampler`: a normal reference view and a query that
is another (jittered) view of the same product, with a synthetic defect and its exact mask, or
defect-free; plus general "spot the difference" pairs. With probability ``data.multi_ref_prob``
a batch gets 2-3 references (extra jittered views), so the model also learns k-shot comparison.
Losses: focal + Dice on the per-patch map (targets pooled around each patch centre) and binary
cross-entropy on the image label.

The same task serves ``adcopilot adapt``: there the sampler draws the user's own normal images.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcopilot.data.pairs import PairSampler
from adcopilot.data.synth import jitter
from adcopilot.errors import AdcopilotError
from adcopilot.model.backbone import load_backbone
from adcopilot.model.nano import STRIDE, NanoComparisonModel, NanoConfig, image_size_problem
from adcopilot.model.upsample import upsample_centered
from adcopilot.train.config import TrainConfig
from adcopilot.train.loop import SingleRateTask
from adcopilot.train.losses import dice_loss, focal_loss, mask_to_cells

log = logging.getLogger(__name__)

EVAL_SEED = 987_654


class Stage1Task(SingleRateTask):
    """Stage-1 task for :func:`adcopilot.train.loop.train`."""

    def __init__(
        self,
        cfg: TrainConfig,
        sampler: Any | None = None,
        card_writer: Any | None = None,
        tower: nn.Module | None = None,
    ) -> None:
        self.cfg = cfg
        self.model_cfg = NanoConfig(**{"image_size": 256, **cfg.model})
        self.tower = tower if tower is not None else load_backbone()
        if sampler is None:
            opts = {k: v for k, v in cfg.data.items() if k not in ("multi_ref_prob", "max_refs", "train_size")}
            # The model is resolution-agnostic (relative positions, convolutional head): training at a
            # smaller size than inference costs quadratically less attention.
            size = cfg.data.get("train_size", self.model_cfg.image_size)
            problem = image_size_problem(size)
            if problem:
                raise AdcopilotError(f"data.train_size {problem}")
            sampler = PairSampler(size=size, seed=cfg.seed, **opts)
        self.sampler = sampler
        self.card_writer = card_writer
        self._eval_set: list[Any] | None = None

    # ---------------------------------------------------------------- model
    def build(self) -> nn.Module:
        if self.cfg.init_from:
            model = NanoComparisonModel.load(self.cfg.init_from)
            model.cfg.name = self.model_cfg.name
        else:
            model = NanoComparisonModel(self.model_cfg)
        model.train()
        return model

    # ---------------------------------------------------------------- data
    def _pairs(self, rng: np.random.Generator, n: int, k: int) -> dict[str, torch.Tensor]:
        return make_pairs(self.sampler, rng, n, k)

    def batches(self, start_step: int, process_index: int) -> Iterator[tuple[int, Any]]:
        stream = StepBatches(self.sampler, self.cfg, start_step, process_index)
        if self.cfg.num_workers <= 0:
            for i in range(len(stream)):
                yield start_step + i, stream[i]
            return
        # Background processes draw the pairs (CPU work) while this one trains; the DataLoader keeps
        # the order, so the stream is the same whatever the number of workers. "spawn", not fork:
        # a child forked after OpenCV's thread pool started can deadlock in its first cv2 call.
        loader = torch.utils.data.DataLoader(
            stream, batch_size=None, shuffle=False, num_workers=self.cfg.num_workers,
            prefetch_factor=4, worker_init_fn=_quiet_worker, multiprocessing_context="spawn",
        )
        for i, batch in enumerate(loader):
            yield start_step + i, batch

    # ---------------------------------------------------------------- loss
    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dev = next(model.parameters()).device
        if next(self.tower.parameters()).device != dev:  # the frozen tower follows the model (GPU runs)
            self.tower.to(dev)
        b, k = batch["refs"].shape[:2]
        with torch.no_grad():
            qf = NanoComparisonModel.features(self.tower, batch["query"].to(dev))  # (B, C, h, w)
            rf = NanoComparisonModel.features(self.tower, batch["refs"].flatten(0, 1).to(dev))  # (B*k, ...)
            rf = rf.view(b, k, *rf.shape[1:])  # (B, k, C, h, w)
        return model(qf, rf)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.forward(model, batch)
        dev = out["pixel_logits"].device
        mask = batch["mask"].to(dev)
        # A mask of -1 means "location unknown" (image-level labels, adapt --defects): no pixel loss.
        known = (mask >= 0).flatten(1).all(dim=1)  # (B,)
        lw = self.cfg.loss
        if known.any():
            target = mask_to_cells(mask[known], STRIDE)  # (b, 1, h, w)
            logits = out["pixel_logits"][known]
            l_focal = focal_loss(logits, target)
            l_dice = dice_loss(logits, target)
        else:
            l_focal = l_dice = out["pixel_logits"].sum() * 0.0
        l_img = F.binary_cross_entropy_with_logits(out["image_logit"], batch["label"].to(dev))
        total = (
            float(lw.get("focal", 5.0)) * l_focal
            + float(lw.get("dice", 1.0)) * l_dice
            + float(lw.get("image", 0.5)) * l_img
        )
        return total, {"focal": float(l_focal.detach()), "dice": float(l_dice.detach()), "image": float(l_img.detach())}

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Pixel and image AUROC on a fixed set of held-out synthetic pairs."""
        from sklearn.metrics import roc_auc_score

        if self._eval_set is None:
            rng = np.random.default_rng(EVAL_SEED)
            n = self.cfg.eval_pairs
            self._eval_set = [self._pairs(rng, min(16, n - i), 1) for i in range(0, n, 16)]
        was_training = model.training
        model.eval()
        pix_s, pix_t, img_s, img_t = [], [], [], []
        for batch in self._eval_set:
            out = self.forward(model, batch)
            prob = torch.sigmoid(upsample_centered(out["pixel_logits"], STRIDE))[:, 0]  # (B, S, S)
            known = (batch["mask"] >= 0).flatten(1).all(dim=1)
            pix_s.append(prob[known][:, ::4, ::4].flatten().cpu().numpy())
            pix_t.append(batch["mask"][known][:, ::4, ::4].flatten().numpy())
            img_s.append(torch.sigmoid(out["image_logit"]).cpu().numpy())
            img_t.append(batch["label"].numpy())
        model.train(was_training)
        ps, pt = np.concatenate(pix_s), np.concatenate(pix_t)
        is_, it = np.concatenate(img_s), np.concatenate(img_t)
        res: dict[str, float] = {}
        if 0 < pt.sum() < len(pt):
            res["pixel_auroc"] = round(float(roc_auc_score(pt > 0.5, ps)), 4)
        if 0 < it.sum() < len(it):
            res["image_auroc"] = round(float(roc_auc_score(it > 0.5, is_)), 4)
        return res

    # ---------------------------------------------------------------- export
    def export(self, model: nn.Module, folder: Path, metrics: dict[str, Any]) -> None:
        card = self.card_writer(self.cfg, metrics) if self.card_writer else None
        model.save(folder, card=card, extra_config={"training": {"stage": 1, "seed": self.cfg.seed, **metrics}})


def make_pairs(sampler: Any, rng: np.random.Generator, n: int, k: int) -> dict[str, torch.Tensor]:
    """``n`` pairs with ``k`` references each, stacked into tensors."""
    # A sampler that can draw k references itself (adapt: other good images) is asked for them;
    # otherwise extra references are jittered views of the one it gives.
    takes_refs = "n_refs" in inspect.signature(sampler.sample).parameters

    refs, queries, masks, labels = [], [], [], []
    for _ in range(n):
        p = sampler.sample(rng, n_refs=k) if takes_refs else sampler.sample(rng)
        views = [p.reference, *p.more_references[: k - 1]]
        while len(views) < k:
            extra = jitter((p.reference * 255).astype(np.uint8), rng)
            views.append(extra.astype(np.float32) / 255.0)
        refs.append(np.stack(views))
        queries.append(p.query)
        masks.append(p.mask)
        labels.append(p.label)
    return {
        "refs": torch.from_numpy(np.stack(refs)).permute(0, 1, 4, 2, 3).float(),  # (B, k, 3, S, S)
        "query": torch.from_numpy(np.stack(queries)).permute(0, 3, 1, 2).float(),  # (B, 3, S, S)
        "mask": torch.from_numpy(np.stack(masks)).float(),  # (B, S, S)
        "label": torch.tensor(labels, dtype=torch.float32),
    }


class StepBatches(torch.utils.data.Dataset):
    """Item ``i`` is the batch of step ``start + i``: a pure function of (seed, step, process), so a
    resumed run, or one with more data workers, sees exactly the batches of an uninterrupted one."""

    def __init__(self, sampler: Any, cfg: TrainConfig, start: int, process_index: int) -> None:
        self.sampler = sampler
        self.seed, self.batch_size = cfg.seed, cfg.batch_size
        self.multi_ref_prob = float(cfg.data.get("multi_ref_prob", 0.2))
        self.max_refs = int(cfg.data.get("max_refs", 3))
        self.start, self.stop = start, max(start, cfg.steps)
        self.process_index = process_index

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, self.start + i, self.process_index])
        k = 1
        if rng.random() < self.multi_ref_prob:
            k = int(rng.integers(2, self.max_refs + 1))
        return make_pairs(self.sampler, rng, self.batch_size, k)


def _quiet_worker(_: int) -> None:
    # One thread per data worker: the workers already run in parallel.
    cv2.setNumThreads(1)
