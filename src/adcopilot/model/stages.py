"""The multi-stage training recipe of AD-Copilot as plain data, shared by every trainer.

Both the nano trainer (CPU, EfficientNet-Lite0 + SmolLM2) and the full-scale trainer
(Qwen2.5-VL, Accelerate) read these definitions, so that "stage 2" means the same thing at both
scales. A stage names *module groups*; each trainer maps the groups onto its own modules and
ignores groups its model does not have (the full model has no dense anomaly head, for example):

=============  ==============================================================================
group          modules
=============  ==============================================================================
``tower``      the vision tower (EfficientNet-Lite0 / the Qwen2.5-VL ViT blocks)
``compare``    the Comparison Encoder's encoder and decoder layers (cross-attentions, norms, MLPs)
``queries``    the learnable comparison queries (``query_embeddings``)
``projector``  projectors into the LLM: the comparison projector and the base-token projector/merger
``heads``      task heads on the comparison features (the nano model's dense anomaly head, score head)
``lora``       LoRA adapters on the language model
``llm``        the language model's own weights (full fine-tuning)
=============  ==============================================================================

Losses: ``lm`` (next-token cross-entropy on the answers), ``dense`` (pixel anomaly map against
the defect mask), ``score`` (image-level normal/anomalous).

Usage::

    from adcopilot.model.stages import STAGES, get_stage
    st = get_stage(2)
    st.trainable, st.lr, st.losses
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from adcopilot.errors import AdcopilotError

#: Every module group a stage may name.
GROUPS = ("tower", "compare", "queries", "projector", "heads", "lora", "llm")
#: Every loss a stage may name.
LOSSES = ("lm", "dense", "score")


@dataclass(frozen=True)
class Stage:
    """One training stage: what is trained, what is frozen, at which learning rate, with which losses."""

    name: str
    number: int
    trainable: list[str]
    frozen: list[str]
    lr: float
    losses: list[str]
    description: str
    #: Per-group learning rates that differ from ``lr`` (e.g. a low rate for a nearly frozen group).
    group_lr: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for g in [*self.trainable, *self.frozen, *self.group_lr]:
            if g not in GROUPS:
                raise ValueError(f"stage {self.number}: unknown module group {g!r} (known: {', '.join(GROUPS)})")
        overlap = set(self.trainable) & set(self.frozen)
        if overlap:
            raise ValueError(f"stage {self.number}: groups both trained and frozen: {sorted(overlap)}")
        for loss in self.losses:
            if loss not in LOSSES:
                raise ValueError(f"stage {self.number}: unknown loss {loss!r} (known: {', '.join(LOSSES)})")

    def lr_for(self, group: str) -> float:
        """Learning rate of ``group`` in this stage (0.0 when the group is frozen)."""
        if group in self.group_lr:
            return self.group_lr[group]
        return self.lr if group in self.trainable else 0.0

    def with_full_finetune(self) -> Stage:
        """This stage with the language model fully trained instead of through LoRA adapters."""
        if "lora" not in self.trainable:
            return self
        trainable = ["llm" if g == "lora" else g for g in self.trainable]
        frozen = [g for g in self.frozen if g != "llm"] + ["lora"]
        return replace(self, trainable=trainable, frozen=frozen)

    def to_dict(self) -> dict:
        return asdict(self)


STAGES: dict[int, Stage] = {
    1: Stage(
        name="comparison-pretraining",
        number=1,
        trainable=["compare", "queries", "heads", "projector"],
        frozen=["tower", "llm", "lora"],
        lr=1e-4,
        losses=["lm", "dense", "score"],
        description="Visual comparison pretraining: the Comparison Encoder, its queries, the task heads and "
        "the projector learn to find differences on comparison pairs (general before/after pairs and "
        "synthetic defect pairs); the vision tower and the language model stay frozen.",
    ),
    2: Stage(
        name="alignment",
        number=2,
        trainable=["projector", "queries"],
        frozen=["tower", "compare", "heads", "llm", "lora"],
        lr=5e-5,
        losses=["lm"],
        description="Alignment and domain knowledge: the projectors and the comparison queries learn to speak "
        "to the frozen language model on captions and domain-knowledge text of industrial images.",
    ),
    3: Stage(
        name="instruction-tuning",
        number=3,
        trainable=["lora", "projector", "compare"],
        frozen=["tower", "llm", "queries", "heads"],
        lr=2e-5,
        losses=["lm"],
        group_lr={"compare": 2e-6},
        description="Instruction tuning on Chat-AD (captions, VQA, localization, multiple choice): LoRA "
        "adapters (or, with full fine-tuning, the language model itself) and the projectors; the "
        "Comparison Encoder follows at a tenth of the learning rate.",
    ),
}


def get_stage(number: int) -> Stage:
    """The stage numbered ``number``; an :class:`AdcopilotError` naming the known stages otherwise."""
    try:
        return STAGES[int(number)]
    except (KeyError, ValueError, TypeError):
        raise AdcopilotError(f"unknown training stage {number!r}; known stages: {sorted(STAGES)}") from None
