"""The full-scale (Qwen2.5-VL) AD-Copilot classes, under the model package.

They live in :mod:`adcopilot.full` (configuration / modeling / processing / loading, as
transformers splits a model); this module re-exports them for code that looks for the model
classes here, e.g. the ``transformers`` evaluation backend. Importing it registers the
``ad_copilot`` model type with transformers' Auto classes.

Usage::

    from adcopilot.model.qwen import ADCopilotForConditionalGeneration, load_full_model
    model = load_full_model("path/to/checkpoint")
"""

from adcopilot.full import (
    ADCopilotConfig,
    ADCopilotForConditionalGeneration,
    ADCopilotProcessor,
    ADCopilotVLForConditionalGeneration,
    load_full_model,
    load_processor,
)

__all__ = [
    "ADCopilotConfig",
    "ADCopilotForConditionalGeneration",
    "ADCopilotProcessor",
    "ADCopilotVLForConditionalGeneration",
    "load_full_model",
    "load_processor",
]
