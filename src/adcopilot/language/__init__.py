"""The language side of AD-Copilot-nano: visual tokens, the SmolLM2 language model, prompts, answers.

Modules: :mod:`~adcopilot.language.visual` (the inspection core's output and the backbone's features ->
per-sample visual inputs), :mod:`~adcopilot.language.llm` (loading the language model and its tokenizer),
:mod:`~adcopilot.language.prompt` (where image and comparison tokens sit in the sequence),
:mod:`~adcopilot.language.model` (:class:`NanoCopilot`: projectors + LLM + LoRA),
:mod:`~adcopilot.language.answer` (multiple choice, free answers, boxes),
:mod:`~adcopilot.language.nano_language` (the lazily loaded language model and its visual encoder)
and :mod:`~adcopilot.language.answering` (``ask``, ``answer_choice``, ``chat``, ``localize`` of
:class:`adcopilot.api.AnsweringCopilot`).
"""
