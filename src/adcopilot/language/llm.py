"""Loading the language model (SmolLM2-135M-Instruct from its package) and its tokenizer.

The shipped model names its language model by asset name (``"smollm2-135m"``); the weights come
from :func:`adcopilot.assets.smollm2_converted_dir` (a local folder, never a hub name). Tests and
experiments may pass any local folder holding a causal LM and a tokenizer instead.

Usage::

    llm, tok = load_llm("smollm2-135m")          # frozen, eval mode, fp32 on CPU
    llm, tok = load_llm("/path/to/local/model")
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch

from adcopilot import assets
from adcopilot.errors import CheckpointError

log = logging.getLogger(__name__)

#: Held while transformers models load: its lazy imports are not safe from two threads at once
#: (the background load of the language model and a first text match in another thread).
LOAD_LOCK = threading.RLock()
#: Asset names of language models this package knows how to find.
KNOWN_LLMS = ("smollm2-135m",)


def llm_dir(name: str | os.PathLike) -> Path:
    """The local folder of the language model ``name`` (an asset name or a folder)."""
    if str(name) in KNOWN_LLMS:
        assets.require("smollm2-135m")
        return assets.smollm2_converted_dir()
    path = Path(name)
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: not a language model folder (no config.json); use one of {KNOWN_LLMS}")
    return path


def load_llm(name: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) of a local causal language model, frozen and in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = llm_dir(name)
    with LOAD_LOCK:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        except OSError as exc:
            raise CheckpointError(f"{folder}: cannot load the language model ({exc})") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def end_of_turn_id(tokenizer: Any) -> int:
    """Id of the token that ends an assistant turn (``<|im_end|>`` for ChatML models, else EOS)."""
    tid = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
        return tid
    return int(tokenizer.eos_token_id)
