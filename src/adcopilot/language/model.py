"""NanoCopilot: visual tokens projected into SmolLM2-135M-Instruct (frozen base, optional LoRA).

    VisualInputs (frozen backbone + Comparison Encoder, see visual.py; C, D: the backbone's sizes)
      per image: glob (D) -> global token; base (9, C) -> 9 base tokens        (1 + 9, 576)
      per pair:  compare (16, 576) -> 16 comparison tokens                     (16, 576)
                 cells (9, 5 + 2C) -> 9 anomaly-map tokens                     (9, 576)
      -> spliced into the chat at the placeholders of prompt.py
      -> SmolLM2-135M-Instruct (frozen; LoRA adapters from stage 3) -> next-token logits

Every projector is a two-layer MLP; its output is RMS-normalised to the scale of the language
model's word embeddings, and base / anomaly-map tokens get a learned position embedding of their
grid cell. With one reference a sequence holds 10 + 10 + 25 = 45 image tokens.

Saved folder (``language/`` inside a checkpoint): ``config.json``, ``projectors.safetensors`` and,
after stage 3, ``adapter_model.safetensors`` (the LoRA weights, peft's key names). The language
model itself is not saved: it comes from its package (``llm`` in the config names it).

Usage::

    model = NanoCopilot.build(NanoCopilotConfig(), *load_llm("smollm2-135m"))
    loss, metrics = model.loss([(turns, visual_inputs), ...])
    model.save("checkpoint/language"); NanoCopilot.load("checkpoint/language")
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from adcopilot.errors import CheckpointError
from adcopilot.geometry import GRID_NAMES
from adcopilot.language.llm import end_of_turn_id, load_llm
from adcopilot.language.prompt import SYSTEM, Segment, conversation_segments
from adcopilot.language.visual import CELL_STATS, CELL_WIDTH, FEATURES, GLOBAL, GRID, VisualInputs

log = logging.getLogger(__name__)

ARCHITECTURE = "adcopilot-nano-language"
IGNORE = -100


@dataclass
class NanoCopilotConfig:
    llm: str = "smollm2-135m"  # asset name or local folder of the language model
    hidden: int = 576  # the language model's width
    compare_width: int = 576  # width of the Comparison Encoder's tokens
    num_compare: int = 16
    grid: int = GRID
    use_images: bool = True  # False: the text-only ablation (no image tokens at all)
    use_compare: bool = True  # False: base tokens only (no comparison / anomaly-map tokens)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    embed_rms: float = 0.0  # RMS of the language model's word embeddings (set when built)
    system: str = SYSTEM
    defect_labels: list[str] = field(default_factory=list)  # labels the model was trained to name
    anchored: bool = True  # vocabulary-anchored map, verdict and defect-type tokens (see Projectors)
    evidence: bool = True  # a "Detector:" line stating the dense head's findings in words
    evidence_threshold: float = 0.5  # image score at which the detector line says "defective"
    type_loss: float = 1.0  # weight of the defect-type classifier's auxiliary loss
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NanoCopilotConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("architecture") == ARCHITECTURE and "anchored" not in d:
            known["anchored"] = False  # saved before anchored tokens existed
        if d.get("architecture") == ARCHITECTURE and "evidence" not in d:
            known["evidence"] = False  # saved before the detector line existed
        return cls(**known)


def _mlp(cin: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(cin), nn.Linear(cin, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class Projectors(nn.Module):
    """Visual inputs -> LLM-width token blocks (the ``projector`` module group).

    Vocabulary anchors (``anchored``) make the comparison evidence legible to the frozen language
    model from the first step, instead of leaving it to be discovered by a few hundred LoRA steps:

    - anomaly-map token i = learned projection of cell i + gain * peak_i * E("<cell i's region>")
      (E: the mean word embedding of a phrase, e.g. " top left"): a hot cell reads like its name;
    - verdict token = (1 - s) E(" normal") + s E(" defective"), s = sigmoid((score - c) * k) of
      the detector's image score (c, k learned);
    - defect-type token = sum_k softmax(type_head(hottest cell))_k E(" <label k>") over the defect
      labels of the training data; ``type_head`` also gets an auxiliary classification loss.

    The anchors are buffers computed from the language model's embeddings when the model is built
    and saved with the projectors.
    """

    def __init__(self, cfg: NanoCopilotConfig) -> None:
        super().__init__()
        h, cells = cfg.hidden, cfg.grid * cfg.grid
        self.anchored = cfg.anchored
        self.glob = _mlp(GLOBAL, h)
        self.base = _mlp(FEATURES, h)
        self.base_pos = nn.Parameter(torch.randn(cells, h) * 0.02)
        self.compare = _mlp(cfg.compare_width, h)
        self.cell_feats = _mlp(CELL_WIDTH - CELL_STATS, h)
        self.cell_stats = nn.Sequential(nn.Linear(CELL_STATS, h), nn.GELU(), nn.Linear(h, h))
        self.cell_pos = nn.Parameter(torch.randn(cells, h) * 0.02)
        self.norm = nn.RMSNorm(h, eps=1e-6)
        if cfg.embed_rms > 0:
            nn.init.constant_(self.norm.weight, cfg.embed_rms)
        if self.anchored:
            k = max(1, len(cfg.defect_labels))
            # The learned part of anchored tokens starts small: the anchor speaks first.
            self.cell_norm = nn.RMSNorm(h, eps=1e-6)
            nn.init.constant_(self.cell_norm.weight, 0.1 * (cfg.embed_rms or 1.0))
            self.anchor_gain = nn.Parameter(torch.tensor(1.0))
            self.verdict_center = nn.Parameter(torch.tensor(0.5))
            self.verdict_scale = nn.Parameter(torch.tensor(10.0))
            self.type_head = nn.Sequential(nn.LayerNorm(CELL_WIDTH - CELL_STATS), nn.Linear(CELL_WIDTH - CELL_STATS, k))
            self.register_buffer("region_anchor", torch.zeros(cells, h))
            self.register_buffer("verdict_anchor", torch.zeros(2, h))
            self.register_buffer("label_anchor", torch.zeros(k, h))

    @torch.no_grad()
    def set_anchors(self, embed: Any, tokenizer: Any, labels: Sequence[str], grid: int) -> None:
        """Fill the anchor buffers from the language model's word embeddings."""
        if not self.anchored:
            return
        def word(text: str) -> torch.Tensor:
            ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            return embed(torch.tensor(ids, device=self.base_pos.device)).float().mean(0)

        if grid == 3:
            names = [n for row in GRID_NAMES for n in row]
        else:  # a finer grid: name each cell by the 3 x 3 region holding its centre
            names = [GRID_NAMES[min(2, int((r + 0.5) * 3 / grid))][min(2, int((c + 0.5) * 3 / grid))]
                     for r in range(grid) for c in range(grid)]
        self.region_anchor.copy_(torch.stack([word(n) for n in names]))
        self.verdict_anchor.copy_(torch.stack([word("normal"), word("defective")]))
        if labels:
            self.label_anchor.copy_(torch.stack([word(lab.lower()) for lab in labels]))

    def forward(self, v: VisualInputs, with_compare: bool = True) -> dict[str, torch.Tensor]:
        """{"ref<i>": (1 + G*G, H), "query": (1 + G*G, H), "compare": (L + G*G [+ 2], H)} and, when
        anchored, "type_logits": (K,)."""
        dev = self.base_pos.device
        base = self.base(v.base.to(dev)) + self.base_pos  # (n, G*G, H)
        glob = self.glob(v.glob.to(dev)).unsqueeze(1)  # (n, 1, H)
        images = self.norm(torch.cat([glob, base], dim=1))  # (n, 1 + G*G, H)
        out = {f"ref{i}": images[i] for i in range(images.shape[0] - 1)}
        out["query"] = images[-1]
        if not with_compare:
            return out
        cells = v.cells.to(dev)
        cell = self.cell_feats(cells[:, CELL_STATS:]) + self.cell_stats(cells[:, :CELL_STATS]) + self.cell_pos
        compare = self.norm(self.compare(v.compare.to(dev)))  # (L, H)
        if not self.anchored:
            out["compare"] = torch.cat([compare, self.norm(cell)], dim=0)  # (L + G*G, H)
            return out
        peak = cells[:, :1]  # (G*G, 1): peak anomaly probability per cell
        cell = self.cell_norm(cell) + self.anchor_gain * peak * self.region_anchor  # (G*G, H)
        s = torch.sigmoid((torch.as_tensor(v.score, device=dev) - self.verdict_center) * self.verdict_scale)
        verdict = (1 - s) * self.verdict_anchor[0] + s * self.verdict_anchor[1]  # (H,)
        hottest = cells[int(peak[:, 0].argmax()), CELL_STATS:]  # (2C,)
        type_logits = self.type_head(hottest)  # (K,)
        kind = type_logits.softmax(-1) @ self.label_anchor  # (H,)
        out["compare"] = torch.cat([compare, cell, verdict[None], kind[None]], dim=0)  # (L + G*G + 2, H)
        out["type_logits"] = type_logits
        return out


@dataclass
class Encoded:
    """One tokenised conversation: embeddings and labels (IGNORE where no loss)."""

    embeds: torch.Tensor  # (T, H)
    labels: torch.Tensor  # (T,)
    type_logits: torch.Tensor | None = None  # (K,) of the defect-type head, when anchored


class NanoCopilot(nn.Module):
    """Projectors + a causal language model (frozen, optionally with LoRA adapters)."""

    def __init__(self, cfg: NanoCopilotConfig, llm: Any, tokenizer: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.projectors = Projectors(cfg)
        self.llm = llm
        self.tokenizer = tokenizer
        self.eot_id = end_of_turn_id(tokenizer)
        self._lora_on = False
        self._merged = False  # adapters folded into the weights (inference only)
        if cfg.lora:
            self.enable_lora()

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(cls, cfg: NanoCopilotConfig, llm: Any, tokenizer: Any) -> NanoCopilot:
        """A fresh model; the projectors' output scale is matched to the word embeddings."""
        if cfg.embed_rms <= 0:
            w = llm.get_input_embeddings().weight
            cfg.embed_rms = float(w.detach().float().pow(2).mean().sqrt())
        if cfg.hidden != llm.config.hidden_size:
            raise CheckpointError(f"config hidden {cfg.hidden} != language model width {llm.config.hidden_size}")
        model = cls(cfg, llm, tokenizer)
        model.projectors.set_anchors(llm.get_input_embeddings(), tokenizer, cfg.defect_labels, cfg.grid)
        return model

    def enable_lora(self) -> None:
        """Wrap the language model with LoRA adapters (stage 3); the base stays frozen."""
        if self._lora_on:
            return
        if self._merged:
            raise ValueError("this language model's adapters were merged for answering; load the checkpoint to train it")
        from peft import LoraConfig, get_peft_model

        pc = LoraConfig(r=self.cfg.lora_r, lora_alpha=self.cfg.lora_alpha, lora_dropout=0.0,
                        target_modules=list(self.cfg.lora_targets), bias="none")
        with warnings.catch_warnings():  # peft probes a transformers attribute deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.llm = get_peft_model(self.llm, pc)
        self.cfg.lora = True
        self._lora_on = True

    def merge_adapters(self) -> None:
        """Fold the LoRA adapters into the language model's weights for answering: the same
        answers, faster on a CPU (benchmarks/RESULTS.md). The model can no longer be trained or saved."""
        if not self._lora_on:
            return
        self.llm = self.llm.merge_and_unload()
        self._lora_on = False
        self._merged = True

    @property
    def causal_lm(self) -> Any:
        """The causal LM (with its LoRA layers injected when enabled)."""
        return self.llm.get_base_model() if self._lora_on else self.llm

    @property
    def device(self) -> torch.device:
        return self.projectors.base_pos.device

    # ---------------------------------------------------------------- sequences
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def segments(self, turns: Sequence[dict[str, str]], n_refs: int, add_generation_prompt: bool = False) -> list[Segment]:
        return conversation_segments(
            self.tokenizer, turns, n_refs, with_images=self.cfg.use_images, with_compare=self.cfg.use_compare,
            add_generation_prompt=add_generation_prompt, system=self.cfg.system,
            with_evidence=self.cfg.evidence and self.projectors.anchored,
        )

    @torch.no_grad()
    def evidence_text(self, v: VisualInputs) -> str:
        """The dense head's findings in words, e.g. "Detector: defective (score 0.91); strongest
        difference at the top left; it looks like a scratch." (the verdict at
        ``evidence_threshold``; up to two grid cells whose peak is at least 0.8 of the highest; the
        defect-type head's best label, said only for a defective verdict)."""
        defective = v.score >= self.cfg.evidence_threshold
        parts = [f"Detector: {'defective' if defective else 'normal'} (score {v.score:.2f})"]
        peak = v.cells[:, 0]
        g = self.cfg.grid
        names = ([n for row in GRID_NAMES for n in row] if g == 3 else
                 [GRID_NAMES[min(2, int((r + 0.5) * 3 / g))][min(2, int((c + 0.5) * 3 / g))]
                  for r in range(g) for c in range(g)])
        top = float(peak.max())
        if top < 0.3:
            parts.append("no localized difference")
        else:
            order = [int(i) for i in torch.argsort(peak, descending=True)]
            cells = [names[order[0]]] + [names[i] for i in order[1:2] if float(peak[i]) >= 0.8 * top]
            parts.append("strongest difference at the " + " and the ".join(dict.fromkeys(cells)))
        if defective and self.cfg.defect_labels:
            hottest = v.cells[int(peak.argmax()), CELL_STATS:].to(self.device)
            label = self.cfg.defect_labels[int(self.projectors.type_head(hottest).argmax())]
            parts.append(f"it looks like {'an' if label[:1].lower() in 'aeiou' else 'a'} {label.lower()}")
        return "; ".join(parts) + "."

    def encode(self, segments: Sequence[Segment], visual: VisualInputs | None) -> Encoded:
        """Embeddings (T, H) and labels (T,) of a segmented conversation (loss on answers and the
        end-of-turn token after each)."""
        emb_layer = self.llm.get_input_embeddings()
        blocks = None
        if any(kind == "image" for kind, _ in segments):
            if visual is None:
                raise CheckpointError("this prompt has image placeholders but no visual inputs were given")
            blocks = self.projectors(visual, with_compare=self.cfg.use_compare)
        parts: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        after_answer = False
        for kind, value in segments:
            if kind == "image" and value == "evidence":
                assert visual is not None
                kind, value = "text", self.evidence_text(visual)
            if kind == "image":
                assert blocks is not None
                if value not in blocks:
                    raise CheckpointError(f"prompt asks for image block {value!r}, visual inputs have {sorted(blocks)}")
                parts.append(blocks[value])
                labels.append(torch.full((blocks[value].shape[0],), IGNORE, dtype=torch.long))
                after_answer = False
                continue
            ids = self._ids(value)
            if not ids:
                continue
            t = torch.tensor(ids, dtype=torch.long)
            lab = t.clone() if kind == "answer" else torch.full_like(t, IGNORE)
            if kind == "text" and after_answer and ids[0] == self.eot_id:
                lab[0] = ids[0]  # learn to stop
            parts.append(emb_layer(t.to(self.device)))
            labels.append(lab)
            after_answer = kind == "answer"
        return Encoded(torch.cat(parts, dim=0), torch.cat(labels, dim=0),
                       blocks.get("type_logits") if blocks is not None else None)

    def encode_turns(
        self, turns: Sequence[dict[str, str]], visual: VisualInputs | None, n_refs: int | None = None,
        add_generation_prompt: bool = False,
    ) -> Encoded:
        n = n_refs if n_refs is not None else (visual.n_refs if visual is not None else 1)
        return self.encode(self.segments(turns, n, add_generation_prompt), visual if self.cfg.use_images else None)

    @staticmethod
    def collate(items: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded (B, T, H) embeddings, (B, T) attention mask, (B, T) labels."""
        t = max(e.embeds.shape[0] for e in items)
        h = items[0].embeds.shape[1]
        emb = items[0].embeds.new_zeros(len(items), t, h)
        mask = torch.zeros(len(items), t, dtype=torch.long)
        labels = torch.full((len(items), t), IGNORE, dtype=torch.long)
        for i, e in enumerate(items):
            n = e.embeds.shape[0]
            emb[i, :n] = e.embeds
            mask[i, :n] = 1
            labels[i, :n] = e.labels
        return emb, mask, labels

    def hidden_states(self, embeds: torch.Tensor, mask: torch.Tensor | None = None, **kw: Any) -> Any:
        """The decoder's outputs (last hidden states, cache) for input embeddings (B, T, H)."""
        inner = self.causal_lm.model
        return inner(inputs_embeds=embeds, attention_mask=None if mask is None else mask.to(embeds.device), **kw)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.lm_head(hidden)

    # ---------------------------------------------------------------- training
    def forward(self, batch: Sequence[tuple[Any, ...]]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training forward = :meth:`loss`; data-parallel wrappers (DDP) call ``forward`` and sync its gradients."""
        return self.loss(batch)

    def loss(self, batch: Sequence[tuple[Any, ...]]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean next-token cross-entropy over the answer tokens of a batch of (turns, visual inputs
        [, defect label index or -1]), plus the defect-type head's auxiliary loss (anchored models).

        Conversations are run in micro-batches of similar length (sorted, padding under ~15%),
        which on a CPU costs the same as one padded batch without the padding's wasted work."""
        encoded = []
        type_terms = []
        for item in batch:
            e = self.encode_turns(item[0], item[1])
            encoded.append(e)
            label = int(item[2]) if len(item) > 2 and item[2] is not None else -1
            if label >= 0 and e.type_logits is not None:
                type_terms.append(F.cross_entropy(e.type_logits[None].float(), torch.tensor([label], device=self.device)))
        items = sorted(encoded, key=lambda e: e.embeds.shape[0])
        total = torch.zeros((), device=self.device)
        n_tok, n_hit = 0, 0
        for chunk in _length_chunks(items):
            emb, mask, labels = self.collate(chunk)
            hid = self.hidden_states(emb, mask).last_hidden_state  # (b, T, H)
            target = labels[:, 1:].to(hid.device)  # position t predicts token t + 1
            sel = target != IGNORE
            if not sel.any():
                continue
            logits = self.logits(hid[:, :-1][sel])  # only where there is a target: (N, V)
            total = total + F.cross_entropy(logits.float(), target[sel], reduction="sum")
            n_tok += int(sel.sum())
            n_hit += int((logits.argmax(-1) == target[sel]).sum())
        if n_tok == 0:
            raise CheckpointError("a training batch has no answer tokens")
        lm = total / n_tok
        metrics = {"token_acc": n_hit / n_tok, "tokens": float(n_tok), "lm": float(lm.detach())}
        if type_terms:
            aux = torch.stack(type_terms).mean()
            metrics["type"] = float(aux.detach())
            return lm + self.cfg.type_loss * aux, metrics
        return lm, metrics

    # ---------------------------------------------------------------- persistence
    def _saved(self, key: str) -> bool:
        return not key.startswith("llm.") or "lora_" in key

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """Only the trained parts (projectors, LoRA): the frozen language model is not saved."""
        full = super().state_dict(*args, **kwargs)
        return type(full)((k, v) for k, v in full.items() if self._saved(k))

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        own = {k for k in super().state_dict() if self._saved(k)}
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if strict and (missing or unexpected):
            raise CheckpointError(f"language state does not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return super().load_state_dict(state, strict=False, assign=assign)

    def save(self, folder: str | os.PathLike, card: str | None = None) -> Path:
        if self._merged:
            raise ValueError("this language model's adapters were merged for answering; save the loaded checkpoint instead")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        proj = {k: v.detach().contiguous().cpu() for k, v in self.projectors.state_dict().items()}
        save_file(proj, str(folder / "projectors.safetensors"), metadata={"architecture": ARCHITECTURE})
        if self._lora_on:
            from peft import get_peft_model_state_dict

            lora = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(self.llm).items()}
            save_file(lora, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        else:
            (folder / "adapter_model.safetensors").unlink(missing_ok=True)
        config = {"architecture": ARCHITECTURE, **asdict(self.cfg)}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        if card is not None:
            (folder / "MODEL_CARD.md").write_text(card)
        return folder

    @staticmethod
    def read_config(folder: str | os.PathLike) -> NanoCopilotConfig:
        path = Path(folder) / "config.json"
        if not path.exists():
            raise CheckpointError(f"{path}: missing; a language checkpoint holds config.json and projectors.safetensors")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        if raw.get("architecture") != ARCHITECTURE:
            raise CheckpointError(f"{path}: not an {ARCHITECTURE} checkpoint (architecture={raw.get('architecture')!r})")
        return NanoCopilotConfig.from_dict(raw)

    @classmethod
    def load(
        cls, folder: str | os.PathLike, llm: Any = None, tokenizer: Any = None, *, lora: bool | None = None
    ) -> NanoCopilot:
        """Load a saved language checkpoint onto its language model (``llm``/``tokenizer`` to reuse
        one already loaded). ``lora=True`` adds fresh adapters to a checkpoint saved without them."""
        folder = Path(folder)
        cfg = cls.read_config(folder)
        if llm is None or tokenizer is None:
            llm, tokenizer = load_llm(cfg.llm)
        has_lora = cfg.lora
        cfg.lora = False
        model = cls(cfg, llm, tokenizer)
        _load_into(model.projectors, folder / "projectors.safetensors")
        if has_lora:
            adapter = folder / "adapter_model.safetensors"
            if not adapter.exists():
                raise CheckpointError(f"{adapter}: missing; the config says the model has LoRA adapters")
            model.enable_lora()
            from peft import set_peft_model_state_dict

            try:
                state = load_file(str(adapter))
            except Exception as exc:
                raise CheckpointError(f"{adapter}: cannot read safetensors ({exc})") from None
            result = set_peft_model_state_dict(model.llm, state)
            bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
            if bad:
                raise CheckpointError(f"{adapter}: adapters do not match the language model ({bad[:3]})")
        elif lora:
            model.enable_lora()
        model.eval()
        return model


def _length_chunks(items: list[Encoded], waste: float = 0.15) -> list[list[Encoded]]:
    """Consecutive groups of length-sorted items whose padding stays under ``waste``."""
    chunks: list[list[Encoded]] = []
    cur: list[Encoded] = []
    for e in items:
        cand = [*cur, e]
        longest = max(x.embeds.shape[0] for x in cand)
        if cur and longest * len(cand) > (1 + waste) * sum(x.embeds.shape[0] for x in cand):
            chunks.append(cur)
            cand = [e]
        cur = cand
    if cur:
        chunks.append(cur)
    return chunks


def _load_into(module: nn.Module, path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from None
    own = module.state_dict()
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{path}: does not match the config (missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {bad[:3]})"
        )
    module.load_state_dict(state)


def count_parameters(module: nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)
