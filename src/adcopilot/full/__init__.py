"""The full-scale AD-Copilot model: the Comparison Encoder inside Hugging Face transformers' Qwen2.5-VL.

For GPUs and clusters: the 7B model of the paper (and fine-tunes of it), loaded from local
safetensors folders in the released layout, trained with Accelerate (see ``docs/scale.md``).

Usage::

    from adcopilot.full import load_full_model, load_processor, FullModel
    fm = FullModel.load("path/to/checkpoint", device="cuda", dtype="bfloat16")
    fm.generate(["good.png", "query.png"], "Is there any defect in the query object?")

Importing this package registers the ``ad_copilot`` model type with transformers' Auto classes
and the released key layout with its checkpoint conversion, so ``AutoModelForImageTextToText``
and ``from_pretrained`` work on local AD-Copilot folders too.
"""

from __future__ import annotations

from adcopilot.full.configuration_adcopilot import ADCopilotConfig
from adcopilot.full.loading import is_full_checkpoint, load_full_model, load_processor, save_full_model
from adcopilot.full.modeling_adcopilot import (
    ADCopilotForConditionalGeneration,
    ADCopilotModel,
    ADCopilotVLForConditionalGeneration,
)
from adcopilot.full.processing_adcopilot import ADCopilotProcessor


def _register() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
    from transformers.conversion_mapping import (
        USER_REGISTERED_MAPPINGS,
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    AutoConfig.register("ad_copilot", ADCopilotConfig, exist_ok=True)
    AutoModel.register(ADCopilotConfig, ADCopilotModel, exist_ok=True)
    AutoModelForImageTextToText.register(ADCopilotConfig, ADCopilotVLForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(ADCopilotConfig, ADCopilotProcessor, exist_ok=True)
    # Read (and write) the released 4.x key layout, as transformers does for Qwen2.5-VL.
    for ours, theirs in (
        ("ADCopilotVLForConditionalGeneration", "Qwen2VLForConditionalGeneration"),
        ("ADCopilotModel", "Qwen2VLModel"),
    ):
        if ours not in USER_REGISTERED_MAPPINGS:
            register_checkpoint_conversion_mapping(ours, get_checkpoint_conversion_mapping(theirs), overwrite=True)


_register()


def __getattr__(name: str):
    # Lazy: the inference wrapper imports the image pipeline; load it only when asked for.
    if name in ("FullModel", "FullCopilot"):
        from adcopilot.full import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)


__all__ = [
    "ADCopilotConfig",
    "ADCopilotForConditionalGeneration",
    "ADCopilotModel",
    "ADCopilotProcessor",
    "ADCopilotVLForConditionalGeneration",
    "FullCopilot",
    "FullModel",
    "is_full_checkpoint",
    "load_full_model",
    "load_processor",
    "save_full_model",
]
