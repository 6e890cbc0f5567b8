"""The language side of AD-Copilot-nano: visual tokens, the SmolLM2 language model, prompts, answers.

Modules: :mod:`~adcopilot.language.visual` (frozen tower + Comparison Encoder -> per-sample visual
inputs), :mod:`~adcopilot.language.llm` (loading the language model and its tokenizer),
:mod:`~adcopilot.language.prompt` (where image and comparison tokens sit in the sequence),
:mod:`~adcopilot.language.model` (:class:`NanoCopilot`: projectors + LLM + LoRA),
:mod:`~adcopilot.language.answer` (multiple choice, free answers, boxes) and
:mod:`~adcopilot.language.handle` (the lazily loaded language model behind ``Copilot.ask``).
"""
