"""The prompt of AD-Copilot-nano: where the image and comparison tokens sit in the sequence.

AD-Copilot's convention: the reference image(s) first, then the query, then the question. The
conversation is rendered with the language model's own chat template (ChatML for SmolLM2), with
placeholders that :class:`adcopilot.language.model.NanoCopilot` replaces by embeddings::

    <|im_start|>system
    You are an industrial inspection assistant.<|im_end|>
    <|im_start|>user
    The first image is a normal sample: [ref 0: 1 global + 9 base tokens]
    The second image is the query: [query: 1 global + 9 base tokens]
    Their comparison: [16 comparison tokens][9 anomaly-map tokens][verdict][defect type]
    Detector: defective (score 0.91); strongest difference at the top left; it looks like a scratch.
    <question><|im_end|>
    <|im_start|>assistant
    <answer><|im_end|>
    <|im_start|>user
    <next question><|im_end|>  ...

With k references the first lines read "Images 1 to k are normal samples: [ref 0] [ref 1] ...",
"Image k+1 is the query: [query]". The comparison tokens follow the query's base tokens,
as in AD-Copilot (each image's comparison tokens next to that image; references, compared with
themselves, carry none in the nano model). The "Detector:" line (``with_evidence``) states the
dense head's findings in words (:meth:`NanoCopilot.evidence_text`): the verdict at the model's
threshold, the grid cells where the anomaly map peaks and the defect-type head's best guess. Images appear in the first user turn only; later turns
are plain text. Ablations drop blocks: ``with_compare=False`` removes the comparison line and the
detector line (everything that comes from comparing the images), ``with_images=False`` removes
every image line (the text-only language model).

Usage::

    segs = conversation_segments(tok, [{"role": "user", "content": "Is there a defect?"}], n_refs=1)
    # [("text", "<|im_start|>system\\n..."), ("image", "ref0"), ("text", "\\nThe second ..."), ...]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from adcopilot.errors import AdcopilotError

SYSTEM = "You are an industrial inspection assistant."
#: The sentences curated samples open with; the prompt builder puts its own image lines there.
_PREAMBLES = (
    "The first image is a normal sample. The second image is the query sample.",
    "The first image shows a normal sample and the second image the query.",
    "Image 1 is a normal reference and image 2 is the query to inspect.",
)
_PLACEHOLDER = re.compile(r"<\|(ref\d+|query|compare|evidence|answer\d+)\|>")

SegmentKind = Literal["text", "image", "answer"]
Segment = tuple[SegmentKind, str]


def sanitize(text: str) -> str:
    """User text cannot open special tokens or placeholders."""
    return str(text).replace("<|", "< |")


def strip_preamble(text: str) -> str:
    """The question without the curated data's opening sentence about the images."""
    t = text.strip()
    for p in _PREAMBLES:
        if t.startswith(p):
            return t[len(p):].strip()
    return t


def image_block(
    n_refs: int, *, with_images: bool = True, with_compare: bool = True, with_evidence: bool = False
) -> str:
    """The image lines of the first user turn, with placeholders (empty without images)."""
    if not with_images:
        return ""
    if n_refs < 1:
        raise AdcopilotError("at least one normal reference image is needed")
    if n_refs == 1:
        lines = ["The first image is a normal sample: <|ref0|>", "The second image is the query: <|query|>"]
        cmp = "Their comparison: <|compare|>"
    else:
        refs = " ".join(f"<|ref{i}|>" for i in range(n_refs))
        lines = [f"Images 1 to {n_refs} are normal samples: {refs}", f"Image {n_refs + 1} is the query: <|query|>"]
        cmp = "Their comparison: <|compare|>"
    if with_compare:
        lines.append(cmp)
        if with_evidence:
            lines.append("<|evidence|>")
    return "\n".join(lines) + "\n"


def render(
    tokenizer: Any,
    turns: Sequence[dict[str, str]],
    n_refs: int,
    *,
    with_images: bool = True,
    with_compare: bool = True,
    add_generation_prompt: bool = False,
    system: str = SYSTEM,
    with_evidence: bool = False,
) -> tuple[str, list[str]]:
    """The chat-template text with placeholders, and the assistant answers in order."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    answers: list[str] = []
    first_user = True
    for t in turns:
        role, content = t.get("role"), str(t.get("content", ""))
        if role == "user":
            content = sanitize(strip_preamble(content) if first_user else content.strip())
            if first_user:
                content = image_block(n_refs, with_images=with_images, with_compare=with_compare,
                                      with_evidence=with_evidence) + content
                first_user = False
            messages.append({"role": "user", "content": content})
        elif role == "assistant":
            messages.append({"role": "assistant", "content": f"<|answer{len(answers)}|>"})
            answers.append(sanitize(content.strip()))
        else:
            raise AdcopilotError(f"unknown conversation role {role!r} (use 'user' or 'assistant')")
    if first_user:
        raise AdcopilotError("the conversation has no question")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text, answers


def conversation_segments(tokenizer: Any, turns: Sequence[dict[str, str]], n_refs: int, **layout: Any) -> list[Segment]:
    """Split the rendered conversation into text, image (``ref<i>``, ``query``, ``compare``) and
    answer segments, in sequence order; ``layout`` holds :func:`render`'s keyword options."""
    text, answers = render(tokenizer, turns, n_refs, **layout)
    out: list[Segment] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        if m.start() > pos:
            out.append(("text", text[pos : m.start()]))
        name = m.group(1)
        if name.startswith("answer"):
            out.append(("answer", answers[int(name[6:])]))
        else:
            out.append(("image", name))
        pos = m.end()
    if pos < len(text):
        out.append(("text", text[pos:]))
    return out


def mcq_question(question: str, options: dict[str, str]) -> str:
    """A multiple-choice question as MMAD asks it (question, lettered options, instruction)."""
    # Imported here: the question module reads masks with scipy, a second's import the copilot
    # only needs once a question is asked.
    from adcopilot.data.questions import format_mcq

    if not options:
        raise AdcopilotError("a multiple-choice question needs at least one option")
    return format_mcq(question.strip(), {str(k): str(v) for k, v in options.items()})


def mcq_answer(letter: str, options: dict[str, str]) -> str:
    """The trained answer to a multiple-choice question: the chosen option's text ("Top left.").

    The text rather than the letter: the option's own words carry the evidence (a small model
    copies "Scratch" from what it saw more easily than it binds "C" to the third option), and
    option likelihoods then compare the options' texts."""
    return options[letter]
