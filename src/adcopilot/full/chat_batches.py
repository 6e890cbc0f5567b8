"""Chat-AD training data for the full-scale model: read the curation pipeline's JSONL, batch it.

One sample per line (the schema of :mod:`adcopilot.data.samples`; only these fields are used)::

    {"id": str, "task": str, "image": "query.png", "references": ["good.png", ...],
     "turns": [{"role": "user" | "assistant", "content": str}, ...], "split": "train"}

Images are shown references first, query last, at the start of the first user turn (or where its
text says ``<image>``); relative paths are relative to the JSONL file's folder. Malformed lines
and lines whose images are missing are skipped and reported; an image that turns out unreadable
at training time is replaced by the next sample in the stream, so every process keeps the same
batch size (a distributed step never waits on a process that skipped one).

Batches are a pure function of (seed, step, process): samples are drawn from a stream of seeded
permutations, so a resumed run sees exactly the batches an uninterrupted one would.

Usage::

    samples = read_chat_jsonl("chat_ad.jsonl", split="train", tasks=["caption", "vqa"])
    feed = ChatBatches(samples, processor, batch_size=2, seed=0, world_size=1, rank=0)
    batch = feed.batch(step=0)        # input_ids, labels, attention_mask, pixel_values, image_grid_thw
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adcopilot.errors import AdcopilotError, ImageError
from adcopilot.full.processing_adcopilot import IGNORE_INDEX
from adcopilot.imaging import load_thumbnail

log = logging.getLogger(__name__)


@dataclass
class ChatSample:
    """One conversation about images (references first, query last)."""

    id: str
    task: str
    images: list[str]
    turns: list[dict[str, str]]


def _parse_line(raw: Any, base: Path) -> ChatSample:
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    image = raw.get("image")
    refs = raw.get("references") or []
    turns = raw.get("turns")
    if not isinstance(image, str) or not image:
        raise ValueError("'image' must be a path")
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise ValueError("'references' must be a list of paths")
    if not isinstance(turns, list) or not turns:
        raise ValueError("'turns' must be a non-empty list")
    for t in turns:
        if not isinstance(t, dict) or t.get("role") not in ("user", "assistant") or not isinstance(t.get("content"), str):
            raise ValueError('each turn needs "role" ("user"/"assistant") and "content" (text)')
    if not any(t["role"] == "assistant" for t in turns):
        raise ValueError("no assistant turn to learn from")
    images = [str(p if Path(p).is_absolute() else base / p) for p in [*refs, image]]
    return ChatSample(id=str(raw.get("id", "")), task=str(raw.get("task", "")), images=images, turns=turns)


def read_chat_jsonl(
    path: str | os.PathLike,
    split: str | None = "train",
    tasks: Sequence[str] | None = None,
    check_files: bool = True,
) -> list[ChatSample]:
    """Samples of ``path`` in ``split`` (None: all) and ``tasks`` (None: all); bad lines skipped and reported."""
    file = Path(path)
    if not file.is_file():
        raise AdcopilotError(f"{file}: no such training data file")
    samples: list[ChatSample] = []
    bad: list[str] = []
    with file.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if split is not None and isinstance(raw, dict) and raw.get("split", split) != split:
                    continue
                if tasks is not None and isinstance(raw, dict) and raw.get("task") not in tasks:
                    continue
                s = _parse_line(raw, file.parent)
            except json.JSONDecodeError as exc:
                bad.append(f"line {n}: malformed JSON ({exc.msg})")
                continue
            except ValueError as exc:
                bad.append(f"line {n}: {exc}")
                continue
            missing = [p for p in s.images if check_files and not os.path.isfile(p)]
            if missing:
                bad.append(f"line {n}: missing image {missing[0]}")
                continue
            samples.append(s)
    if bad:
        log.warning("%s: skipped %d bad lines (%s%s)", file, len(bad), "; ".join(bad[:3]), "; ..." if len(bad) > 3 else "")
    if not samples:
        what = f" of split '{split}'" if split else ""
        what += f" and tasks {list(tasks)}" if tasks else ""
        raise AdcopilotError(f"{file}: no usable samples{what} ({len(bad)} bad lines)")
    return samples


def collate(items: list[dict[str, torch.Tensor]], pad_id: int, image_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded conversations into one batch; images concatenated in sample order."""
    longest = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = it["input_ids"], it["labels"], 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    batch["mm_token_type_ids"] = (ids == image_token_id).int()
    pix = [it["pixel_values"] for it in items if "pixel_values" in it]
    if pix:
        batch["pixel_values"] = torch.cat(pix)  # (sum of patches, 3*2*14*14)
        batch["image_grid_thw"] = torch.cat([it["image_grid_thw"] for it in items if "image_grid_thw" in it])
    return batch


class ChatBatches:
    """Deterministic batches of encoded conversations for one process of a (distributed) run."""

    def __init__(
        self,
        samples: list[ChatSample],
        processor: Any,
        *,
        batch_size: int,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        max_length: int | None = 4096,
        max_image_size: int | None = 512,
    ) -> None:
        if not samples:
            raise AdcopilotError("no training samples")
        self.samples = samples
        self.processor = processor
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.max_length = max_length
        self.max_image_size = max_image_size
        self.skipped: set[str] = set()
        self._perms: dict[int, np.ndarray] = {}

    def _index(self, position: int) -> int:
        """Sample at ``position`` of the stream of per-epoch permutations."""
        n = len(self.samples)
        epoch, within = divmod(position, n)
        if epoch not in self._perms:
            if len(self._perms) > 1:  # keep two: a batch may straddle an epoch boundary
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n)
        return int(self._perms[epoch][within])

    def encode(self, sample: ChatSample) -> dict[str, torch.Tensor]:
        images = [load_thumbnail(p, self.max_image_size) for p in sample.images]
        return self.processor.encode_conversation(images, sample.turns, max_length=self.max_length)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of micro-step ``step`` for this process."""
        start = (step * self.world_size + self.rank) * self.batch_size
        items = []
        for j in range(self.batch_size):
            pos = start + j
            for attempt in range(len(self.samples)):
                s = self.samples[self._index(pos + attempt * self.world_size * self.batch_size)]
                if s.id in self.skipped:
                    continue
                try:
                    items.append(self.encode(s))
                    break
                except (ImageError, AdcopilotError, ValueError) as exc:
                    self.skipped.add(s.id)
                    log.warning("skipping sample %s: %s", s.id or "?", exc)
            else:
                raise AdcopilotError("no readable training sample left")
        tok = self.processor.tokenizer
        return collate(items, tok.pad_token_id, self.processor.image_token_id)

    def epoch_steps(self) -> int:
        """Micro-steps that show every sample about once (per epoch, across all processes)."""
        return max(1, -(-len(self.samples) // (self.batch_size * self.world_size)))
