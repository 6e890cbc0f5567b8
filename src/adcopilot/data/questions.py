"""MMAD-style multiple-choice questions for all seven sub-tasks, from labelled images.

A :class:`LabelledItem` is one query image with what is known about it (class, defect name or
None for a normal image, optionally a mask or boxes). :func:`mmad_conversation` turns it into
MMAD ``conversation`` entries ``{"Question", "Answer", "Options", "type", "annotation"}``:

========================  ======================================================================
type                      correct option / distractors
========================  ======================================================================
Anomaly Detection         "Yes." or "No." (both items)
Defect Classification     the defect type / other defect types of the class, then of the taxonomy
Defect Localization       the 3x3 cell(s) of the defect boxes / neighbouring cells
Defect Description        the taxonomy's description of the type / descriptions of other types
Defect Analysis           a likely cause or effect of the type / those of other types
Object Classification     the object's name / other objects of the knowledge base
Object Structure          the object's structure / other objects' structures
Object Details            the object's material and appearance / other objects'
Object Analysis           the object's function / other objects' functions
========================  ======================================================================

Normal items get Anomaly Detection and the object questions only. A question is left out when
its facts are missing (no mask or boxes: no localization; a defect the taxonomy does not know,
or a generic one like "defective" or "combined": no classification, description or analysis;
a class without a knowledge entry: only object classification; defects spread over more than
two grid cells: no localization). ``annotation`` is True for questions answered from the item's
own labels (defect name, mask) and False for those answered from the knowledge base.

Options are shuffled with the caller's generator; a :class:`LetterBalancer` shared across items
puts the correct answer on the least used letter so letters are balanced over a data set.

Usage::

    item = LabelledItem("bottle/test/broken_large/000.png", "bottle", "broken_large", mask, (900, 900), None)
    conv = mmad_conversation(item, Knowledge.load(), np.random.default_rng(0),
                             defect_names=["broken_small", "contamination"])
    conv[0]  # {"Question": "Is there any defect in the object?", "Answer": "B",
             #  "Options": {"A": "No.", "B": "Yes."}, "type": "Anomaly Detection", "annotation": True}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from adcopilot.data.knowledge import DefectType, Knowledge, normalise
from adcopilot.data.masks import mask_to_boxes
from adcopilot.geometry import GRID_NAMES, region_name

#: MMAD's sub-task names (``type`` values), in MMAD's order.
MMAD_TYPES = [
    "Anomaly Detection",
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Structure",
    "Object Details",
    "Object Analysis",
]
#: The seven reported sub-tasks; the last three object types are reported as Object Analysis.
MMAD_SUBTASK = {t: t for t in MMAD_TYPES[:6]} | {
    "Object Structure": "Object Analysis",
    "Object Details": "Object Analysis",
    "Object Analysis": "Object Analysis",
}
#: Defect types too generic to ask about their kind, look, cause or effect.
GENERIC_DEFECTS = {"defect", "combined"}
LETTERS = "ABCDE"
MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass
class LabelledItem:
    """One query image and its labels."""

    image_path: str
    category: str
    defect: str | None  # None = good
    mask: np.ndarray | None  # (H, W), any of bool / 0-1 / 0-255
    image_size: tuple[int, int]  # (w, h)
    boxes: list[list[int]] | None  # [[x1, y1, x2, y2], ...] pixels, x2/y2 exclusive
    dataset: str = "custom"


class LetterBalancer:
    """Places correct answers on the least used letter (ties broken by the generator)."""

    def __init__(self) -> None:
        self.counts: dict[int, Counter] = {}

    def position(self, n_options: int, rng: np.random.Generator) -> int:
        c = self.counts.setdefault(n_options, Counter())
        low = min(c[i] for i in range(n_options))
        least = [i for i in range(n_options) if c[i] == low]
        pos = int(least[int(rng.integers(len(least)))])
        c[pos] += 1
        return pos

    def record(self, letter: str, n_options: int) -> None:
        """Count an answer placed earlier (used when a run resumes)."""
        self.counts.setdefault(n_options, Counter())[LETTERS.index(letter)] += 1


def arrange(
    correct: str,
    distractors: list[str],
    rng: np.random.Generator,
    balancer: LetterBalancer | None = None,
) -> tuple[dict[str, str], str]:
    """Shuffle options -> ({"A": text, ...}, answer letter)."""
    wrong = list(distractors)
    order = rng.permutation(len(wrong)) if wrong else []
    wrong = [wrong[i] for i in order]
    n = len(wrong) + 1
    pos = balancer.position(n, rng) if balancer else int(rng.integers(n))
    texts = wrong[:pos] + [correct] + wrong[pos:]
    return {LETTERS[i]: t for i, t in enumerate(texts)}, LETTERS[pos]


def sentence(text: str) -> str:
    """Option style of MMAD: capital first letter, final full stop."""
    text = " ".join(text.split()).rstrip(".")
    return (text[:1].upper() + text[1:] + ".") if text else text


def format_mcq(question: str, options: dict[str, str]) -> str:
    """A question and its lettered options as one prompt, as MMAD's scripts ask it."""
    lines = [question] + [f"{k}. {v}" for k, v in options.items()]
    return "\n".join(lines + [MCQ_INSTRUCTION])


def item_boxes(item: LabelledItem) -> list[list[int]] | None:
    """The item's boxes, from ``boxes`` or else from its mask; None when neither is known."""
    if item.boxes is not None:
        return [list(map(int, b)) for b in item.boxes]
    if item.mask is not None:
        return [r.bbox_2d for r in mask_to_boxes(item.mask)]
    return None


def defect_cells(boxes: list[list[int]], size: tuple[int, int]) -> list[str]:
    """Distinct grid cells of the boxes, largest box first."""
    w, h = size
    cells: list[str] = []
    for b in sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
        name = region_name(b, w, h)
        if name not in cells:
            cells.append(name)
    return cells


def join_cells(cells: list[str]) -> str:
    return " and ".join(cells)


_CELL_POS = {name: (r, c) for r, row in enumerate(GRID_NAMES) for c, name in enumerate(row)}


def neighbour_cells(cell: str) -> list[str]:
    """Grid cells next to ``cell`` (including diagonally)."""
    r, c = _CELL_POS[cell]
    return [
        GRID_NAMES[rr][cc]
        for rr in range(max(0, r - 1), min(3, r + 2))
        for cc in range(max(0, c - 1), min(3, c + 2))
        if (rr, cc) != (r, c)
    ]


def _pick(pool: list[str], k: int, rng: np.random.Generator, exclude: set[str]) -> list[str]:
    """Up to k distinct entries of pool (in a random order), skipping ``exclude`` (normalised)."""
    seen = set(exclude)
    out: list[str] = []
    for i in rng.permutation(len(pool)) if pool else []:
        key = normalise(pool[i])
        if key in seen:
            continue
        seen.add(key)
        out.append(pool[i])
        if len(out) == k:
            break
    return out


#: Words too common in the knowledge texts to tell two of them apart.
_COMMON = {"during", "with", "that", "from", "into", "which", "their", "other", "than", "part", "parts",
           "surface", "material", "product", "defect", "around", "where", "usually", "area", "mostly", "there"}


def _words(text: str) -> set[str]:
    return {w for w in "".join(c if c.isalpha() else " " for c in text.lower()).split()
            if len(w) >= 5 and w not in _COMMON}


def _unlike(pool: list[str], truths: list[str], max_shared: int) -> list[str]:
    """Pool entries sharing at most ``max_shared`` distinctive words with every true text, so a
    distractor is not a second right answer in other words ("impact during handling")."""
    true_words = [_words(t) for t in truths]
    return [p for p in pool if all(len(_words(p) & tw) <= max_shared for tw in true_words)]


def _pick_preferred(
    first: list[str], rest: list[str], k: int, rng: np.random.Generator, exclude: set[str]
) -> list[str]:
    got = _pick(first, k, rng, exclude)
    if len(got) < k:
        got += _pick(rest, k - len(got), rng, exclude | {normalise(g) for g in got})
    return got


_Q = {
    "Anomaly Detection": [
        "Is there any defect in the object?",
        "Is there any anomaly in the query image?",
        "Does the object in the query image have a defect?",
        "Compared with the normal sample, is the query object defective?",
    ],
    "Defect Classification": [
        "What type of defect is present in the object?",
        "Which kind of defect does the object have?",
        "What is the defect in the query image?",
    ],
    "Defect Localization": [
        "Where is the defect located in the image?",
        "In which part of the image is the defect?",
        "Where on the image can the defect be found?",
    ],
    "Defect Description": [
        "Which description best matches the defect?",
        "How does the defect look?",
        "What is the appearance of the defect?",
    ],
    "Defect Analysis cause": [
        "What is the most likely cause of this defect?",
        "What probably caused the defect?",
    ],
    "Defect Analysis effect": [
        "What effect could this defect have on the product?",
        "What is a likely consequence of this defect?",
    ],
    "Object Classification": [
        "What is the object in the image?",
        "What kind of object is shown?",
        "Which object is being inspected?",
    ],
    "Object Structure": [
        "Which option best describes the structure of the object?",
        "How is the object built?",
    ],
    "Object Details": [
        "Which option best describes the material and appearance of the object?",
        "What does the surface of the object look like?",
    ],
    "Object Analysis": [
        "What is this object mainly used for?",
        "What is the function of this object?",
    ],
}


def phrase(key: str, rng: np.random.Generator) -> str:
    options = _Q[key]
    return options[int(rng.integers(len(options)))]


def _singular(name: str) -> str:
    """Folder names are often plural ("plates", "batteries"); sentences speak of one object."""
    *head, last = name.split(" ")
    if len(last) > 4 and last.endswith("ies"):
        last = last[:-3] + "y"
    elif len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        last = last[:-1]
    return " ".join([*head, last])


def object_display(category: str, knowledge: Knowledge) -> str:
    """The object's name for options: the knowledge entry's name or the class, without digits."""
    info = knowledge.object(category)
    name = info.name if info else normalise(category)
    name = name.rstrip("0123456789").strip() or name
    if info is None:
        name = _singular(name)
    # Short names of known objects are acronyms ("pcb" -> "PCB").
    return name.upper() if info is not None and len(name) <= 3 and " " not in name else name


def _entry(q: str, options: dict[str, str], answer: str, qtype: str, annotation: bool) -> dict:
    return {"Question": q, "Answer": answer, "Options": options, "type": qtype, "annotation": annotation}


def _specific_type(knowledge: Knowledge, label: str | None) -> DefectType | None:
    d = knowledge.defect(label)
    return d if d is not None and d.name not in GENERIC_DEFECTS else None


def mmad_conversation(
    item: LabelledItem,
    knowledge: Knowledge,
    rng: np.random.Generator,
    *,
    defect_names: list[str] | None = None,  # other defects of this category, for distractors
    balancer: LetterBalancer | None = None,
) -> list[dict]:
    """MMAD ``conversation`` entries for one item, in MMAD's type order (see the module doc)."""
    out: list[dict] = []
    anomalous = item.defect is not None

    def add(qkey: str, qtype: str, correct: str, wrong: list[str], annotation: bool) -> None:
        if not wrong:
            return
        options, answer = arrange(sentence(correct), [sentence(w) for w in wrong], rng, balancer)
        out.append(_entry(phrase(qkey, rng), options, answer, qtype, annotation))

    # Anomaly Detection: Yes/No, for every item.
    add("Anomaly Detection", "Anomaly Detection", "Yes" if anomalous else "No",
        ["No" if anomalous else "Yes"], True)

    dtype = _specific_type(knowledge, item.defect) if anomalous else None
    others = [n for n in (defect_names or []) if n != item.defect]
    other_types = []
    for n in others:
        t = _specific_type(knowledge, n)
        if t is not None and (dtype is None or t.name != dtype.name) and t not in other_types:
            other_types.append(t)
    pool_types = [t for t in knowledge.defects.values() if t.name not in GENERIC_DEFECTS]
    exclude_type = {dtype.name, *dtype.synonyms} if dtype else set()

    if dtype is not None:
        wrong = _pick_preferred([t.name for t in other_types], [t.name for t in pool_types], 3, rng, exclude_type)
        add("Defect Classification", "Defect Classification", dtype.name, wrong, True)

    if anomalous:
        boxes = item_boxes(item)
        cells = defect_cells(boxes, item.image_size) if boxes else []
        if 1 <= len(cells) <= 2:
            wrong_sets: list[str] = []
            near = [n for c in cells for n in neighbour_cells(c) if n not in cells]
            far = [n for row in GRID_NAMES for n in row if n not in cells]
            if len(cells) == 1:
                wrong_sets = _pick_preferred(near, far, 3, rng, set())
            else:
                # Two cells: each distractor swaps one or both cells for a neighbour.
                cands = []
                for i, c in enumerate(cells):
                    for n in neighbour_cells(c):
                        if n not in cells:
                            pair = list(cells)
                            pair[i] = n
                            cands.append(join_cells(pair))
                cands += [join_cells([a, b]) for a in far for b in far if a < b]
                wrong_sets = _pick(cands, 3, rng, {normalise(join_cells(cells)), normalise(join_cells(cells[::-1]))})
            add("Defect Localization", "Defect Localization", join_cells(cells), wrong_sets, True)

    if dtype is not None and dtype.description:
        descs = {t.name: t.description for t in pool_types if t.description and t.name != dtype.name}
        first = [t.description for t in other_types if t.description]
        truth = [dtype.description]
        wrong = _pick_preferred(_unlike(first, truth, 1), _unlike(list(descs.values()), truth, 1), 3, rng,
                                {normalise(dtype.description)})
        add("Defect Description", "Defect Description", dtype.description, wrong, True)

    if dtype is not None:
        intents = [k for k, v in (("cause", dtype.causes), ("effect", dtype.effects)) if v]
        if intents:
            intent = intents[int(rng.integers(len(intents)))]
            attr = "causes" if intent == "cause" else "effects"
            own = getattr(dtype, attr)
            correct = own[int(rng.integers(len(own)))]
            first = [x for t in other_types for x in getattr(t, attr)]
            rest = [x for t in pool_types if t.name != dtype.name for x in getattr(t, attr)]
            wrong = _pick_preferred(_unlike(first, own, 0), _unlike(rest, own, 0), 3, rng, {normalise(x) for x in own})
            add(f"Defect Analysis {intent}", "Defect Analysis", correct, wrong, True)

    # Object questions, answered from the knowledge base.
    name = object_display(item.category, knowledge)
    names = [object_display(k, knowledge) for k in knowledge.objects]
    names = [n for n in names if _singular(n) != _singular(name)]  # not "capsules" for "capsule"
    add("Object Classification", "Object Classification", name, _pick(names, 3, rng, {normalise(name)}), False)
    info = knowledge.object(item.category)
    if info is not None:
        for qtype, attr in (("Object Structure", "structure"), ("Object Details", "details"),
                            ("Object Analysis", "function")):
            own = getattr(info, attr)
            if not own:
                continue
            pool = [getattr(o, attr) for o in knowledge.objects.values() if o.name != info.name and getattr(o, attr)]
            add(qtype, qtype, own, _pick(_unlike(pool, [own], 1), 3, rng, {normalise(own)}), False)
    return out
