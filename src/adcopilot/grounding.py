"""Questions answered from the models' outputs, not the language model's words: defect? where? what type?

Two kinds of inspection question have an answer in the detector's own output:

``defect``
    A yes/no question about defects or normality ("Is there any defect in the object?", "Is the
    query normal?") that names no image region. Answer: the inspection verdict at the active
    threshold, with the question's polarity ("Yes" claims a defect unless the question asks about
    normality).
``location``
    A question asking where the defect is ("Where is the defect located?") whose options name
    cells of the 3x3 grid ("Top left.", "Center and bottom."). Answer: the option naming the grid
    cells of the two strongest boxes best (the anomaly map's peak when there is no box).

A third kind is answered by the language model's defect-type head rather than its words:

``type``
    "What type of defect is present?" whose options all name defect labels the model was trained
    on ("Stain.", "Holes", "Metal contamination"; :func:`type_options`). Answer: the option whose
    label the type head finds likeliest in the query's most anomalous grid cell (or the cell the
    question names). On the bundled benchmark's held-out photos it beats the language model's
    words (figures in ``benchmarks/RESULTS.md``).

Two more kinds are answered from what is known about the predicted type or the product:

``knowledge``
    A multiple-choice question about the defect that is neither where nor which type ("What is
    the most likely cause of this defect?", "How does the defect look?"): the options are matched
    to the domain knowledge retrieved for the type head's likely labels
    (:mod:`adcopilot.language.knowledge_match`).
``object``
    A question about the object ("Which object is being inspected?", "What is this object used
    for?") when the references carry the product's name (and material): answered from it and from
    the knowledge about that product; without it the language model answers.

A free answer about the defect (:func:`free_defect_question`) is composed from the inspection
(:func:`defect_facts`): the type head's label, the region and size of the strongest box and the
number of boxes, or, for a normal verdict, that there is no defect.

With a language model, ``Copilot.answer_choice`` answers these kinds this way by
default (``grounded=True``), and a free answer (``Copilot.ask``) to a yes/no defect question
starts with the verdict's "Yes." or "No.", which the language model continues
(:func:`grounded_start`): on the bundled benchmark the language model alone answered the first
two kinds worse than the detector it reads, and a chat answer that contradicts the verdict and boxes that
``inspect`` shows for the same pair misleads an inspector. The verdict also follows a calibrated
threshold, which the language model's detector line does not (see the model card). Every other
question goes to the language model.

Usage::

    letter = detector_choice(result, "Is there any defect?", {"A": "Yes.", "B": "No."})  # "A" / "B" / None
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from adcopilot.geometry import GRID_NAMES, region_name

_REGION_WORDS = sorted((n for row in GRID_NAMES for n in row), key=lambda n: -len(n.split()))
_CELL_POS = {name: (r, c) for r, row in enumerate(GRID_NAMES) for c, name in enumerate(row)}
_SYNONYMS = [
    (re.compile(r"\b(centre|middle|central)\b"), "center"),
    (re.compile(r"\bupper\b"), "top"),
    (re.compile(r"\blower\b"), "bottom"),
    (re.compile(r"\b(left-hand|leftmost)\b"), "left"),
    (re.compile(r"\b(right-hand|rightmost)\b"), "right"),
]
_DEFECT_WORDS = re.compile(r"\b(defect\w*|anomal\w*|damage\w*|flaw\w*|abnormal\w*)\b")
_NORMAL_WORDS = re.compile(r"\b(normal|good|intact|flawless|perfect)\b")
# A yes/no question naming no region is one about the whole part's verdict with these words too: beyond
# MMAD's own wording ("Is there any defect in the object?") the ways an inspector asks it ("faulty", "broken",
# "something wrong", "differs from the reference", "should it be rejected", "scrapped", "reworked", "NG", "any
# issues", "is anything missing", "foreign objects"; "OK", "acceptable", "would it pass inspection", "is the part
# fine" but not "is the crack fine", "would you ship it", "can I use it", "clean", "within spec"). Only for yes/no
# questions: in others such words may ask about the object or the defect.
_VERDICT_DEFECT_WORDS = re.compile(
    r"\b(defect\w*|anomal\w*|damage\w*|flaw\w*|abnormal\w*|fault\w*|broken|imperfect\w*|irregular\w*|wrong|"
    r"problems?|reject\w*|differ\w*|deviat\w*|scrap\w*|discard\w*|rework\w*|repair\w*|ng|n\.g\.|no good|not good|"
    r"throw\w* (it |this |that |them )?away|issues?|bad|missing|misalign\w*|foreign)\b")
_VERDICT_NORMAL_WORDS = re.compile(r"\b(normal|good|intact|flawless|perfect|ok|okay|acceptable|pass(es)?|conform\w*|looks? fine|"
                                   r"usable|useable|shippable|fit for use|be (used|shipped|sold|accepted|delivered|"
                                   r"installed|released)|ship|sell|deliver|install|release|(i|we|you|they) (use|keep)|"
                                   r"clean|correct|meets? (the )?spec\w*|within spec\w*|(part|product|item|unit|sample|"
                                   r"piece|object|cell|board|module|it|this|that|everything|all) (is |are |looks? |seems? )?"
                                   r"fine)\b")
# "What part is shown?" asks what the object is; "what part of the image" asks where.
_WHERE_WORDS = re.compile(r"\b(where|locat\w*|position\w*|region|which part|(which|what) (area|side|portion|quadrant|"
                          r"corner)|what part of the (image|picture|photo))\b")


def option_cells(text: str) -> list[str]:
    """3x3 grid cells a text names, in order ("Top left and center." -> [top left, center])."""
    t = " ".join(re.findall(r"[a-z]+", text.lower().replace("-", " ")))
    for pattern, word in _SYNONYMS:
        t = pattern.sub(word, t)
    words, cells, i = t.split(), [], 0
    while i < len(words):
        for name in _REGION_WORDS:
            n = name.split()
            if words[i : i + len(n)] == n:
                cells.append(name)
                i += len(n)
                break
        else:
            i += 1
    return list(dict.fromkeys(cells))


def pick_region_option(predicted: list[str], options: dict[str, str]) -> str:
    """The option letter naming ``predicted`` cells best: same set, else most shared cells,
    else the nearest cell on the grid. "" when no option names a cell."""
    named = {k: option_cells(v) for k, v in options.items()}
    named = {k: v for k, v in named.items() if v}
    if not named or not predicted:
        return ""
    for k, cells in named.items():
        if set(cells) == set(predicted):
            return k

    def dist(a: str, b: str) -> float:
        (r1, c1), (r2, c2) = _CELL_POS[a], _CELL_POS[b]
        return math.hypot(r1 - r2, c1 - c2)

    def rank(item: tuple[str, list[str]]) -> tuple[int, float, str]:
        k, cells = item
        shared = len(set(cells) & set(predicted))
        nearest = min(dist(c, predicted[0]) for c in cells)
        return (-shared, nearest + 0.01 * len(cells), k)

    return min(named.items(), key=rank)[0]


def yes_no_letters(options: dict[str, str]) -> tuple[str | None, str | None]:
    """(letter of the "Yes" option, letter of the "No" option)."""
    yes = no = None
    for k, v in options.items():
        first = (re.findall(r"[a-z]+", v.lower()) or [""])[0]
        if first == "yes":
            yes = k
        elif first == "no":
            no = k
    return yes, no


_NEGATED_DEFECT = re.compile(
    r"\b(free (of|from)|without|no|not have|lacks?|lacking)\s+(any\s+|a\s+|an\s+)?(visible\s+)?"
    r"(defect|anomal|damage|flaw|abnormal|fault|problem|irregular|imperfect)"
    r"|\b(defect|damage|flaw|fault|problem)s?[- ]free\b"
)


def yes_means_defect(question: str) -> bool:
    """Whether "Yes" claims a defect ("Is there any defect ...?") or normality ("Is it normal?",
    "Is the part free of defects?")."""
    t = question.lower()
    if _NEGATED_DEFECT.search(t):
        return False
    return bool(_VERDICT_DEFECT_WORDS.search(t)) or not _VERDICT_NORMAL_WORDS.search(t)


def question_kind(question: str, options: dict[str, str]) -> str | None:
    """``"defect"``, ``"location"`` or None (a question for the language model); see the module."""
    t = question.lower()
    yes, no = yes_no_letters(options)
    if yes is not None and no is not None and len(options) == 2:
        about_defects = bool(_VERDICT_DEFECT_WORDS.search(t) or _VERDICT_NORMAL_WORDS.search(t))
        # "Is there a defect at the top left?" asks about one region: not the image verdict.
        return "defect" if about_defects and not option_cells(question) else None
    # Options naming grid cells (one may be something else, e.g. "There is no defect.").
    named = sum(1 for v in options.values() if option_cells(v))
    if named >= 2 and named >= len(options) - 1 and _WHERE_WORDS.search(t):
        return "location"
    return None




def option_label(text: str, labels: list[str]) -> int | None:
    """Index of the defect label an option names ("Stain." -> "Stain", "Metal contamination" ->
    "Contamination", "Color" -> "Discoloration"), or None."""
    words = re.findall(r"[a-z]+", text.lower())
    # Singular forms too ("Scratches" -> "scratch", "Cracks" -> "crack").
    forms = [" ".join(words), " ".join(w[:-2] if w.endswith("ches") or w.endswith("shes") else
                                      w[:-1] if w.endswith("s") and not w.endswith("ss") else w for w in words)]
    forms = [f for f in dict.fromkeys(forms) if len(f) >= 3]
    for o in forms:
        for i, label in enumerate(labels):
            if o == label.lower():
                return i
    for o in forms:
        # Every word of the label in the option, in any order ("Material missing"), or the option
        # the label's beginning or end ("Missing", "Pits" -> "Pitting"); only when one label fits
        # ("Material" could be extra or missing material).
        fits = [i for i, label in enumerate(labels)
                if set(label.lower().split()) <= set(o.split()) or label.lower().startswith(o) or label.lower().endswith(o)]
        if len(fits) == 1:
            return fits[0]
    return None


_COUNT_QUESTION = re.compile(r"\b(how many|number of|count)\b")
_NUMBER_WORDS = {"no": 0, "none": 0, "zero": 0, "one": 1, "single": 1, "a": 1, "an": 1, "two": 2, "three": 3,
                 "four": 4, "five": 5, "six": 6}


def count_options(question: str, options: dict[str, str]) -> dict[str, tuple[float, float]] | None:
    """{letter: (least, most) defects the option says} when ``question`` asks how many defects there are and
    every option says a number ("None.", "One.", "Two defects", "3 or more", "Several."), else None."""
    t = question.lower()
    if not _COUNT_QUESTION.search(t) or not (_VERDICT_DEFECT_WORDS.search(t) or re.search(r"\b(region|spot|area)s?\b", t)):
        return None
    out: dict[str, tuple[float, float]] = {}
    for letter, text in options.items():
        words = re.findall(r"[a-z]+|\d+", text.lower())
        nums = [int(w) if w.isdigit() else _NUMBER_WORDS[w] for w in words if w.isdigit() or w in _NUMBER_WORDS]
        if any(w in ("several", "multiple", "many", "few") for w in words):  # "a few" is not one
            out[letter] = (2, math.inf)
        elif nums and re.search(r"\b(or more|more than|at least|over)\b", text.lower()):
            n = nums[0] + (1 if re.search(r"\b(more than|over)\b", text.lower()) else 0)
            out[letter] = (n, math.inf)
        elif nums:
            out[letter] = (nums[0], nums[0])
        else:
            return None
    return out


def count_choice(result: Any, counts: dict[str, tuple[float, float]]) -> str | None:
    """The option whose count holds the inspection's number of defect regions (0 for a normal verdict)."""
    n = len(result.boxes) if result.is_anomalous else 0
    if result.is_anomalous and n == 0:
        n = 1  # a diffuse difference: one defect with no compact region
    return next((k for k, (lo, hi) in counts.items() if lo <= n <= hi), None)


_NO_DEFECT_OPTION = re.compile(r"\b(no (visible |apparent )?(defects?|anomal\w*|damage|flaws?|problems?)|none|nothing|"
                               r"(it|the \w+) is normal|defect-free)\b")


def no_defect_option(options: dict[str, str]) -> str | None:
    """The letter of the one option saying there is no defect ("Nothing.", "There is no defect."), or None."""
    found = [k for k, v in options.items() if _NO_DEFECT_OPTION.search(v.lower())]
    return found[0] if len(found) == 1 else None


def type_options(question: str, options: dict[str, str], labels: list[str]) -> dict[str, int] | None:
    """{letter: label index} when ``question`` asks about the defect (not where it is) and every
    option names one of ``labels`` (different ones): then it asks for the defect's type ("What
    type of defect ...?", "What is the defect in the query image?"); else None (a question for the
    language model's words)."""
    t = question.lower()
    # The broader words too ("What is wrong with the part?"): every option must name a trained label anyway.
    if not labels or len(options) < 2 or not _VERDICT_DEFECT_WORDS.search(t) or _WHERE_WORDS.search(t):
        return None
    idx = {k: option_label(v, labels) for k, v in options.items()}
    if any(i is None for i in idx.values()) or len(set(idx.values())) != len(idx):
        return None
    return idx  # type: ignore[return-value]


_YES_NO_START = re.compile(r"^\s*(is|are|does|do|did|has|have|was|were|can|could|would|will|should)\b")


def verdict_question(question: str) -> bool:
    """Whether a free question is a yes/no question about defects or normality naming no region."""
    t = question.lower()
    return bool(_YES_NO_START.search(t) and (_VERDICT_DEFECT_WORDS.search(t) or _VERDICT_NORMAL_WORDS.search(t))
                and not option_cells(t))


_SIZE_WORDS = re.compile(r"\b(large|big|small|tiny|huge|long|short|deep|wide|narrow|thick|thin|serious|severe)\b")


def named_label(question: str, labels: list[str]) -> int | None:
    """Index of the trained defect label a yes/no question names ("Is it a scratch?", "Are these cracks?"), or
    None: every word of the label among the question's words (plurals read as singular)."""
    t = question.lower()
    if not _YES_NO_START.search(t) or _SIZE_WORDS.search(t):  # "Is the scratch deep?" asks its size, not its type
        return None
    words = {w[:-2] if w.endswith(("ches", "shes")) else w[:-1] if w.endswith("s") and not w.endswith("ss") else w
             for w in re.findall(r"[a-z]+", t)}
    found = [i for i, label in enumerate(labels) if set(label.lower().split()) <= words]
    return found[0] if len(found) == 1 else None


def region_question(question: str) -> list[str]:
    """The grid cells a yes/no question about the defect's place names ("Is the defect in the center?"), or []."""
    t = question.lower()
    if not _YES_NO_START.search(t) or not (_VERDICT_DEFECT_WORDS.search(t) or re.search(r"\b(it|this|that)\b", t)):
        return []
    return option_cells(t)


def grounded_start(result: Any, question: str) -> str:
    """How a free answer to ``question`` must begin: "Yes." / "No." from the inspection verdict for a
    :func:`verdict_question`, or from its boxes' grid cells for a :func:`region_question` ("No." for a normal
    verdict); the number of defect regions ("None.", "One.", ...) for "how many defects"; "" for anything else, and for a yes/no question on the defect's size, which the facts answer
    with a figure rather than a yes/no ("Is the defect large?": about 1.8 % of the image)."""
    cells = region_question(question)
    if cells:
        return "Yes." if result.is_anomalous and set(predicted_cells(result)) & set(cells) else "No."
    if _COUNT_QUESTION.search(question.lower()) and _VERDICT_DEFECT_WORDS.search(question.lower()):
        n = max(1, len(result.boxes)) if result.is_anomalous else 0  # "How many defects?": the regions found
        return {0: "None.", 1: "One.", 2: "Two.", 3: "Three."}.get(n, f"{n}.")
    if not verdict_question(question) or _SIZE_WORDS.search(question.lower()):
        return ""
    return "Yes." if result.is_anomalous == yes_means_defect(question) else "No."


# Asked with the object's words but about the inspection: what differs, what to do with it.
_NOT_ABOUT_OBJECT = re.compile(r"\b(compar\w*|what (should|do|can|must) (i|we|you) do)\b")
_KNOWLEDGE_OBJECT = re.compile(r"\b(object|product|item|part|thing|sample)s?\b")
_TRAIT_OF_IT = re.compile(r"\b(it|this|that)\b.*\b(made of|used for|for what|purpose|function\w*)\b|"
                          r"\b(what|which) (material|purpose|function)\b")
_FREE_DEFECT = re.compile(
    r"\b(wrong|differen\w*|differ\w*|problem\w*|type|kind|size|large|big|small|how many|count|what is it|"
    r"describe|description|why|caus\w*|reason|affect\w*|effect\w*|impact|consequen\w*|harm\w*|"
    r"sever\w*|serious\w*|critical\w*|how bad|issues?|see|explain\w*|summar\w*|results?|findings?)\b"
)


def knowledge_question(question: str, options: dict[str, str], labels: list[str]) -> bool:
    """Whether a multiple-choice question about the defect asks neither yes/no, where, nor which
    trained type: what it looks like, its cause, its effect (answered from domain knowledge)."""
    t = question.lower()
    if len(options) < 2 or not _DEFECT_WORDS.search(t) or _WHERE_WORDS.search(t):
        return False
    if question_kind(question, options) is not None or all(yes_no_letters(options)):
        return False
    return type_options(question, options, labels) is None


def object_question(question: str) -> bool:
    """Whether a question asks about the object itself (what it is, its build, surface, use)."""
    t = question.lower()
    # Not "Is this part OK?": a question on the verdict in an inspector's words. "What is it made of?" names no
    # object but asks about one.
    about = _KNOWLEDGE_OBJECT.search(t) or _TRAIT_OF_IT.search(t)
    # "Compare the part with the reference", "What should I do with this part?": the inspection answers them.
    return (bool(about) and not _VERDICT_DEFECT_WORDS.search(t) and not _VERDICT_NORMAL_WORDS.search(t)
            and not _NOT_ABOUT_OBJECT.search(t))


_OBJECT_TRAITS = re.compile(
    r"\b(look\w*|surface|structure|built|made|consist\w*|function\w*|used?|purpose|material|colou?r\w*|"
    r"appearance|shape\w*|texture)\b"
)


def names_the_object(question: str, options: dict[str, str]) -> bool:
    """Whether a question asks what the object is and its options are short names ("Gravel.",
    "Metal nut."), not what it looks like, is built of or is for."""
    short = all(len(re.findall(r"[A-Za-z]+", v)) <= 4 for v in options.values())
    return short and not _OBJECT_TRAITS.search(question.lower())


def identity_question(question: str) -> bool:
    """Whether a free question asks only what the object is ("What is this object?"), not what it
    looks like, is built of or is for."""
    return object_question(question) and not _OBJECT_TRAITS.search(question.lower())


def free_defect_question(question: str) -> bool:
    """Whether a free question asks about the defect (what, where, how large, how many, whether)."""
    t = question.lower()
    return bool(verdict_question(question) or _DEFECT_WORDS.search(t) or _WHERE_WORDS.search(t)
                or _NOT_ABOUT_OBJECT.search(t) or score_question(question)
                or (_FREE_DEFECT.search(t) and not object_question(question)))


def strongest_box(result: Any) -> Any | None:
    """The inspection's highest-scoring box, or None."""
    return max(result.boxes, key=lambda b: b.score, default=None)


def defect_facts(result: Any, label: str | None) -> str:
    """What ``inspect`` found, in a sentence: for an anomalous verdict the type ``label``, the
    region and size of the strongest box and the number of boxes; for a normal one, no defect; for a query the global
    check refused (a blank frame, another product), why, and no type: the comparison was not read."""
    check = getattr(result, "image_check", None)
    if check:
        return (f"Not inspected as the product: {check} (the global check against the references failed), so "
                "nothing is said of a defect's type or place.")
    if not result.is_anomalous:
        return (f"No defect: the query matches the normal reference (score {result.score:.2f}, "
                f"below the threshold {result.threshold:.2f}).")
    what = label or "A defect"
    box = strongest_box(result)
    if box is None:
        return (f"{what}: the query differs from the normal reference (score {result.score:.2f}, "
                f"threshold {result.threshold:.2f}), but no compact defect region stands out.")
    w, h = result.image_size
    x1, y1, x2, y2 = box.bbox_2d
    frac = 100.0 * (x2 - x1) * (y2 - y1) / float(max(1, w * h))
    n = len(result.boxes)
    more = f"; {n} defect regions in all" if n > 1 else ""
    return (f"{what} at the {region_name(box.bbox_2d, w, h)} of the image, box {list(box.bbox_2d)}, "
            f"about {frac:.1f}% of the image{more}.")


_SCORE_QUESTION = re.compile(r"\b(confiden\w*|sure|certain\w*|scores?|probabilit\w*|how likely)\b")


def score_question(question: str) -> bool:
    """Whether a question asks how sure the verdict is ("How confident are you?", "What's the anomaly score?")."""
    return bool(_SCORE_QUESTION.search(question.lower()))


def score_sentence(result: Any) -> str:
    """The verdict's score against its threshold, in a sentence (a query the global check refused is anomalous
    whatever its score, and the sentence says so)."""
    side = "above" if result.score >= result.threshold else "below"
    why = "anomalous" if result.is_anomalous else "normal"
    if getattr(result, "image_check", None):
        why = "anomalous all the same: the global check refused the query"
    return f"The anomaly score is {result.score:.2f}, {side} the threshold {result.threshold:.2f} ({why})."


def predicted_cells(result: Any) -> list[str]:
    """Grid cells of an inspection result's two strongest boxes, or of its map's peak when none."""
    w, h = result.image_size
    cells = [region_name(b.bbox_2d, w, h) for b in result.boxes]
    if not cells and result.anomaly_map is not None:
        y, x = np.unravel_index(int(np.argmax(result.anomaly_map)), result.anomaly_map.shape)
        cells = [region_name([x, y, x + 1, y + 1], w, h)]
    return list(dict.fromkeys(cells))[:2]


def detector_choice(result: Any, question: str, options: dict[str, str]) -> str | None:
    """The option letter the inspection ``result`` gives, or None when the question is not a
    defect or location question (or the options cannot be matched)."""
    kind = question_kind(question, options)
    if kind == "defect":
        yes, no = yes_no_letters(options)
        return yes if result.is_anomalous == yes_means_defect(question) else no
    if kind == "location":
        return pick_region_option(predicted_cells(result), options) or None
    return None


# A lettered option: "A. text", "A: text", "A) text" or "(A) text", at the start of the text or after white space.
_OPTION_MARK = re.compile(r"(?:^|(?<=\s))(?:\(([A-H])\)|([A-H])[.:)])\s+")
_STEM_LEAD = re.compile(r"^\s*question\s*:\s*", re.I)
_STEM_TAIL = re.compile(r"\s*\b(options|choices|answers?)\s*:?\s*$", re.I)


def _option_text(text: str, mark: int, start: int, end: int) -> str:
    """An option's text: up to the next option, or to the end of its line when it begins a line (what follows the
    last option's line is an instruction, "Answer with the option's letter.")."""
    body = text[start:end]
    if mark == 0 or text[mark - 1] == "\n":
        body = body.split("\n", 1)[0]
    return body.strip().rstrip(",;").strip()


def question_options(text: str) -> tuple[str, dict[str, str]] | None:
    """(question, options) of a question that carries its lettered options in its text, on lines of their own or
    inline ("What type of defect is it?\\nA. Crack\\nB. Scratch", "Is it defective? A: Yes B: No", MMAD's
    "Question: ..." block), or None. The options run A, B, C, ... to the end of the text, two at least, each
    with some text, after a question of its own that ends where the first begins (a line, "?", ":" or "."); anything
    else (a lone "grade A. part", "plan A: rework or plan B: scrap?") is not a choice. Options on
    lines of their own end with their line, so an instruction after them is not part of the last one."""
    marks = [(m.start(), m.end(), m.group(1) or m.group(2)) for m in _OPTION_MARK.finditer(text)]
    for i, (start, _, letter) in enumerate(marks):
        # The first option begins a line or follows the question's end ("?", ":", "."): not "plan A: rework".
        if letter != "A" or not (start == 0 or text[start - 1] == "\n" or text[:start].rstrip().endswith(("?", ":", "."))):
            continue
        run = [marks[i]]
        for mark in marks[i + 1 :]:
            if mark[2] == chr(ord(run[-1][2]) + 1):
                run.append(mark)
        if len(run) < 2:
            continue
        ends = [m[0] for m in run[1:]] + [len(text)]
        options = {m[2]: _option_text(text, m[0], m[1], end) for m, end in zip(run, ends, strict=True)}
        stem = _STEM_TAIL.sub("", _STEM_LEAD.sub("", text[:start])).strip()
        if stem and all(options.values()) and not any(_OPTION_MARK.search(v) for v in options.values()):
            return stem, options
    return None


def choice_text(letter: str, options: dict[str, str]) -> str:
    """A chosen option as an answer says it: "C. Dark region" ("" when none was chosen: a model whose words name
    no option)."""
    return f"{letter}. {options[letter]}" if letter in options else ""
