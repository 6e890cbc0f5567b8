"""Training and evaluation samples from one labelled image: captions, VQA, boxes, MCQ, comparison.

Every fact in a text comes from the item's labels (class, defect name), its mask (boxes, grid
cell, size, shape, count, brightness and colour measured by :mod:`adcopilot.data.masks`) or the
knowledge base (:mod:`adcopilot.data.knowledge`: description, causes, effects, acceptability);
a sentence whose fact is unknown is left out. Questions have several phrasings, picked with the
caller's seeded generator. Texts are short: a small language model is trained on them.

JSONL sample schema (one object per line)::

    {"id": str,                       # "<item key>:<task><n>", unique and stable
     "task": "caption" | "vqa" | "localization" | "mcq" | "comparison",
     "image": str,                    # the query image
     "references": [str],             # normal image(s) shown before the query
                                      # (paths: absolute, or relative to the curated folder for the
                                      # images it holds, e.g. synthetic/...)
     "category": str, "defect": str | None,   # None = good
     "dataset": str,
     "image_size": [w, h],            # of the query image, pixels
     "turns": [{"role": "user" | "assistant", "content": str}, ...],
     "boxes": [{"bbox_2d": [x1, y1, x2, y2], "label": str}],   # pixels of the query, x2/y2 exclusive
     "options": {"A": str, ...},      # mcq only
     "answer": "A".."E",              # mcq only
     "type": str,                     # mcq only: an MMAD type ("Defect Localization", ...)
     "split": "train" | "test"}

Task contents:

- ``caption``: AD-Copilot's detail caption, a JSON string
  ``{"description", "defect_details": [{"bbox_2d", "label"}], "defect_description"}`` (items
  with boxes, and good items);
- ``localization``: ``[{"bbox_2d": [...], "label": ...}]`` (``[]`` for a good item);
- ``vqa``: 3-6 turns among difference, type, location, shape, colour, size, count, likely cause,
  consequence and acceptability, first the difference;
- ``mcq``: one MMAD-style question (:mod:`adcopilot.data.questions`), answered with its letter;
- ``comparison``: "spot the difference" with a caption of the change; for synthetic defects the
  reference is the very image before the defect was painted, so "otherwise identical" is exact.

Usage::

    facts = ItemFacts(item, key="mvtec/bottle/test/crack/000.png", split="train",
                      references=["/data/bottle/train/good/000.png"], facts=describe_regions(img, mask))
    samples = make_samples(facts, Knowledge.load(), np.random.default_rng(0), defect_names=[...])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from adcopilot.data.knowledge import DefectType, Knowledge, display_label, normalise
from adcopilot.data.questions import (
    GENERIC_DEFECTS,
    LabelledItem,
    LetterBalancer,
    defect_cells,
    format_mcq,
    mmad_conversation,
    object_display,
)

TASKS = ("caption", "vqa", "localization", "mcq", "comparison")
_SIZE_QUALIFIERS = {"large", "small", "big", "tiny", "huge", "minor", "major"}


@dataclass
class ItemFacts:
    """One item with everything the generators may state about it."""

    item: LabelledItem  # boxes filled in when known; the mask is not needed any more
    key: str
    split: str
    references: list[str]
    facts: dict | None = None  # describe_regions() output, when a mask is known
    before: str | None = None  # the same image before a synthetic defect was painted


def _choice(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _pct(fraction: float) -> str:
    p = 100.0 * fraction
    if p < 0.1:
        return "less than 0.1%"
    return f"about {p:.1f}%" if p < 10 else f"about {p:.0f}%"


def _number(n: int) -> str:
    words = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    return words[n] if 0 <= n < len(words) else str(n)


class _Text:
    """The sentences one item supports, built from its facts only."""

    def __init__(self, f: ItemFacts, kb: Knowledge) -> None:
        self.f = f
        self.item = f.item
        self.kb = kb
        self.object = object_display(self.item.category, kb)
        self.info = kb.object(self.item.category)
        self.anomalous = self.item.defect is not None
        d = kb.defect(self.item.defect) if self.anomalous else None
        self.dtype: DefectType | None = d
        self.specific = d is not None and d.name not in GENERIC_DEFECTS
        if d is not None and d.name != "defect":
            self.noun = d.noun
        elif self.anomalous and (d is not None or not self.item.defect):
            self.noun = "defect"
        else:
            label = normalise(self.item.defect or "")
            self.noun = label if label.endswith("defect") else f"{label} defect"
        self.label = display_label(self.item.defect) if self.item.defect else ""
        self.boxes = [list(map(int, b)) for b in (self.item.boxes or [])]
        self.regions = (f.facts or {}).get("regions", [])
        self.cells = defect_cells(self.boxes, self.item.image_size) if self.boxes else []
        words = set(normalise(self.item.defect or "").split())
        self.size_in_label = bool(words & _SIZE_QUALIFIERS)

    # pieces ---------------------------------------------------------------------------------
    def where(self) -> str:
        return " and ".join(f"at the {c}" for c in self.cells)

    def box_json(self) -> list[dict]:
        return [{"bbox_2d": b, "label": self.label} for b in self.boxes]

    def there_is(self) -> str:
        """"there is a crack on the bottle, at the top left of the image" (location when known)."""
        text = f"there is {_article(self.noun)} on the {self.object}"
        if self.cells:
            text += f", {self.where()} of the image"
        if len(self.boxes) > 1:
            text += f", in {_number(len(self.boxes))} separate regions"
        return text

    def size(self) -> str | None:
        if not self.f.facts or not self.regions:
            return None
        frac = self.f.facts["area_fraction"]
        word = "" if self.size_in_label else f"{self.f.facts['size'].capitalize()}: "
        return f"{word}it covers {_pct(frac)} of the image."

    def shape(self) -> str | None:
        if not self.regions:
            return None
        r = self.regions[0]
        lead = "The largest region" if len(self.regions) > 1 else "It"
        if r["shape"] == "elongated":
            run = {"horizontal": "horizontally", "vertical": "vertically", "diagonal": "diagonally"}.get(
                r["orientation"], "")
            ratio = f"about {r['elongation']:.0f} times longer than wide"
            return f"{lead} is elongated, {ratio}" + (f", and runs {run}." if run else ".")
        if r["shape"] == "irregular":
            return f"{lead} has an irregular outline."
        return f"{lead} is compact, about as long as it is wide."

    def colour(self) -> str | None:
        if not self.regions or "brightness" not in self.regions[0]:
            return None
        r = self.regions[0]
        parts = []
        if r["brightness"] != "similar":
            parts.append(f"it is {r['brightness']} than the surrounding surface")
        if r["colour_differs"]:
            parts.append(f"it looks {r['colour']} against the {r['surround_colour']} around it")
        if not parts:
            return "Its brightness and colour are close to those of the surrounding surface."
        text = " and ".join(parts)
        return text[0].upper() + text[1:] + "."

    def count(self) -> str | None:
        if not self.anomalous:
            return "There are no defects."
        if not self.boxes:
            return None
        n = len(self.boxes)
        return "There is one defect region." if n == 1 else f"There are {_number(n)} separate defect regions."

    def location(self) -> str | None:
        if not self.boxes:
            return None
        if len(self.boxes) == 1:
            return f"It is {self.where()} of the image, in the box {self.boxes[0]}."
        return f"The defect regions are {self.where()} of the image, in the boxes " + ", ".join(
            str(b) for b in self.boxes) + "."

    def kind(self) -> str:
        if self.specific and self.dtype and self.dtype.description:
            return f"It is {_article(self.noun)}: {self.dtype.description}."
        return f"It is {_article(self.noun)}" + (f" (labelled {self.label})." if self.label else ".")

    def cause(self) -> str | None:
        if not (self.specific and self.dtype and self.dtype.causes):
            return None
        c = self.dtype.causes
        return f"{_article(self.noun).capitalize()} is usually caused by " + (
            c[0] if len(c) == 1 else ", ".join(c[:-1]) + " or " + c[-1]) + "."

    def consequence(self) -> str | None:
        if not (self.dtype and self.dtype.effects):
            return None
        e = self.dtype.effects
        return "Possible consequences: " + "; ".join(e) + "."

    def acceptable(self) -> str | None:
        if not self.anomalous:
            return f"Yes. No defect is visible, so the {self.object} passes inspection."
        if not self.dtype or self.dtype.acceptable is None:
            return None
        if self.dtype.acceptable:
            return f"Usually yes: {_article(self.noun)} is usually acceptable within the product's specification."
        return f"No. {_article(self.noun).capitalize()} is usually a reason to reject the {self.object}."

    def difference(self) -> str:
        if not self.anomalous:
            return f"There is no defect in the second image; like the first, it shows a normal {self.object}."
        loc = f" {self.where()} of the image" if self.cells else ""
        return f"The second image shows {_article(self.noun)}{loc} that the normal sample does not have."

    def description(self) -> str:
        if self.info and self.info.description:
            return self.info.description[0].upper() + self.info.description[1:] + "."
        return f"An image of {_article(self.object)}."

    def defect_description(self) -> str:
        if not self.anomalous:
            return f"In the second image, the {self.object} looks normal; there is no defect."
        text = f"In the second image, {self.there_is()}."
        extra = [s for s in (self.shape(), self.colour(), self.size()) if s]
        return " ".join([text, *extra])


_PREAMBLE = [
    "The first image is a normal sample. The second image is the query sample.",
    "The first image shows a normal sample and the second image the query.",
    "Image 1 is a normal reference and image 2 is the query to inspect.",
]
_CAPTION_ASK = [
    "Describe the query image in detail and list its defects with boxes as JSON.",
    "Give a detailed description of the query image in JSON, with every defect's box and label.",
    "Inspect the query and describe it in JSON: the object, the defect boxes and a defect description.",
]
_LOC_ASK = [
    'Locate every defect in the second image. Answer as JSON: [{"bbox_2d": [x1, y1, x2, y2], "label": name}].',
    "Output the bounding boxes of all defects in the query image as JSON.",
    "Where are the defects in the query? Give their boxes as JSON.",
]
_COMPARE_ASK = [
    "What is the key difference between the first and the second image?",
    "Spot the difference between the two images.",
    "What has changed from the first image to the second?",
]
_VQA_ASK: dict[str, list[str]] = {
    "difference": ["What is the primary difference between the two images?",
                   "How does the second image differ from the first?"],
    "type": ["What type of defect is it?", "What kind of defect is this?"],
    "location": ["Where is the defect?", "Where is the defect located in the image?"],
    "shape": ["What is the shape of the defect?", "How is the defect shaped?"],
    "colour": ["What colour is the defect compared with its surroundings?",
               "How does the defect look in brightness and colour?"],
    "size": ["How large is the defect?", "What is the size of the defect?"],
    "count": ["How many defects are there?", "How many defect regions can you see?"],
    "cause": ["What is the likely cause of this defect?", "What could have caused this defect?"],
    "consequence": ["What could this defect lead to?", "What is the consequence of this defect for the product?"],
    "acceptable": ["Is the part acceptable?", "Would this part pass inspection?"],
}
_VQA_ANSWER: dict[str, Callable[[_Text], str | None]] = {
    "type": lambda t: t.kind() if t.anomalous else None,
    "location": lambda t: t.location(),
    "shape": lambda t: t.shape(),
    "colour": lambda t: t.colour(),
    "size": lambda t: t.size(),
    "count": lambda t: t.count(),
    "cause": lambda t: t.cause(),
    "consequence": lambda t: t.consequence(),
    "acceptable": lambda t: t.acceptable(),
}


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    out = []
    for q, a in pairs:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


def _base(f: ItemFacts, t: _Text, task: str, n: int, turns: list[dict], references: list[str] | None = None) -> dict:
    return {
        "id": f"{f.key}:{task}{n}",
        "task": task,
        "image": f.item.image_path,
        "references": list(references if references is not None else f.references),
        "category": f.item.category,
        "defect": f.item.defect,
        "dataset": f.item.dataset,
        "image_size": list(f.item.image_size),
        "turns": turns,
        "boxes": t.box_json(),
        "split": f.split,
    }


def caption_sample(f: ItemFacts, kb: Knowledge, rng: np.random.Generator) -> dict | None:
    """AD-Copilot's detail caption; None for a defect without boxes (image-level label only)."""
    t = _Text(f, kb)
    if t.anomalous and not t.boxes:
        return None
    answer = {"description": t.description(), "defect_details": t.box_json(),
              "defect_description": t.defect_description()}
    q = f"{_choice(rng, _PREAMBLE)} {_choice(rng, _CAPTION_ASK)}"
    return _base(f, t, "caption", 0, _turns((q, json.dumps(answer))))


def localization_sample(f: ItemFacts, kb: Knowledge, rng: np.random.Generator) -> dict | None:
    """Boxes as JSON; None for a defect without boxes."""
    t = _Text(f, kb)
    if t.anomalous and not t.boxes:
        return None
    q = f"{_choice(rng, _PREAMBLE)} {_choice(rng, _LOC_ASK)}"
    return _base(f, t, "localization", 0, _turns((q, json.dumps(t.box_json()))))


def vqa_sample(f: ItemFacts, kb: Knowledge, rng: np.random.Generator, max_turns: int = 6) -> dict:
    """Multi-turn VQA: the difference first, then 2-5 other questions the facts can answer."""
    t = _Text(f, kb)
    available = [(k, a) for k, fn in _VQA_ANSWER.items() if (a := fn(t))]
    order = rng.permutation(len(available))
    k = int(rng.integers(min(2, len(available)), min(max_turns - 1, len(available)) + 1)) if available else 0
    chosen = [available[i] for i in order[:k]]
    first = f"{_choice(rng, _PREAMBLE)} {_choice(rng, _VQA_ASK['difference'])}"
    pairs = [(first, t.difference())] + [(_choice(rng, _VQA_ASK[key]), ans) for key, ans in chosen]
    return _base(f, t, "vqa", 0, _turns(*pairs))


def comparison_sample(f: ItemFacts, kb: Knowledge, rng: np.random.Generator) -> dict | None:
    """Spot the difference, with a caption of the change; exact before/after for synthetic pairs."""
    t = _Text(f, kb)
    refs = [f.before] if f.before else f.references
    if not refs:
        return None
    q = _choice(rng, _COMPARE_ASK)
    loc = f" {t.where()} of the image" if t.cells else ""
    if f.before:
        a = f"The second image has {_article(t.noun)}{loc} that the first image does not have; otherwise the two images are identical."
    elif t.anomalous:
        a = f"The second image shows {_article(t.noun)} on the {t.object}{loc}; the first image, a normal sample, has none."
    else:
        a = f"Both images show a normal {t.object}; neither has a defect."
    return _base(f, t, "comparison", 0, _turns((q, a)), refs)


def mcq_samples(
    f: ItemFacts,
    kb: Knowledge,
    rng: np.random.Generator,
    *,
    defect_names: list[str] | None = None,
    balancer: LetterBalancer | None = None,
    conversation: list[dict] | None = None,
) -> list[dict]:
    """One sample per MMAD question (generated, or ``conversation`` as given, e.g. MMAD's own)."""
    t = _Text(f, kb)
    conv = conversation if conversation is not None else mmad_conversation(
        f.item, kb, rng, defect_names=defect_names, balancer=balancer)
    out = []
    for i, q in enumerate(conv):
        prompt = f"{_choice(rng, _PREAMBLE)}\n{format_mcq(q['Question'], q['Options'])}"
        s = _base(f, t, "mcq", i, _turns((prompt, q["Answer"])))
        s.update(options=dict(q["Options"]), answer=q["Answer"], type=q["type"])
        out.append(s)
    return out


def make_samples(
    f: ItemFacts,
    kb: Knowledge,
    rng: np.random.Generator,
    *,
    defect_names: list[str] | None = None,
    balancer: LetterBalancer | None = None,
    tasks: tuple[str, ...] = TASKS,
) -> list[dict]:
    """Every sample of ``tasks`` that the item's facts support, in :data:`TASKS` order."""
    out: list[dict] = []
    for task in TASKS:
        if task not in tasks:
            continue
        if task == "mcq":
            out += mcq_samples(f, kb, rng, defect_names=defect_names, balancer=balancer)
            continue
        maker = {"caption": caption_sample, "vqa": vqa_sample, "localization": localization_sample,
                 "comparison": comparison_sample}[task]
        s = maker(f, kb, rng)
        if s is not None:
            out.append(s)
    return out
