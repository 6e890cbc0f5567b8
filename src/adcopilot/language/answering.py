"""The nano copilot's answers: ``ask``, ``answer_choice``, ``chat`` and ``localize``.

:class:`LanguageAnswers` gives an inspector with a nano language model (``self.language``, a
:class:`~adcopilot.language.nano_language.NanoLanguage`) the :class:`adcopilot.protocols.Answerer` and
:class:`adcopilot.protocols.Localizer` methods. Grounded answers (default) read the inspection:
a defect yes/no or defect-location question is answered from ``inspect``'s verdict and boxes at
this copilot's threshold, a defect-type question naming trained labels by the type head, a
question on the defect's look, cause or effect by matching its options to the domain knowledge
of the type head's likely labels, and an object question from the product context the references
carry (:mod:`adcopilot.grounding`), or without it, a multiple-choice one from what the object looks
like to the vision tower's ImageNet classifier (:mod:`adcopilot.language.objects`). A free answer about the defect is composed from the same
facts (type, region, size, count; "no defect" for a normal verdict) and a sentence of knowledge;
boxes, in JSON or text, are the detector's. The language model reads the same image score as
``inspect`` (its visual inputs are built on the inspection core) and answers everything else.

Usage::

    class AnsweringCopilot(LanguageAnswers, Copilot): ...      # see adcopilot.api
    cp.ask("query.png", ["good.png"], "What is the defect and where is it?")
    cp.ask("query.png", ["good.png"], "What is this object?", product="bottle", material="brown glass")
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from adcopilot.data.knowledge import Knowledge, display_label
from adcopilot.errors import AdcopilotError
from adcopilot.geometry import region_name
from adcopilot.grounding import (
    choice_text,
    count_choice,
    count_options,
    defect_facts,
    detector_choice,
    free_defect_question,
    grounded_start,
    identity_question,
    knowledge_question,
    named_label,
    names_the_object,
    no_defect_option,
    object_question,
    option_cells,
    question_kind,
    question_options,
    region_question,
    score_question,
    score_sentence,
    strongest_box,
    type_options,
    yes_no_letters,
)
from adcopilot.imaging import ImageInput, load_image
from adcopilot.inputs import as_references, source_name
from adcopilot.language import answer as answers
from adcopilot.language.knowledge_match import (
    TextMatcher,
    best_sentences,
    choose_by_knowledge,
    choose_option,
    default_matcher,
    label_sentences,
    sentences,
)
from adcopilot.language.objects import choose_object, class_names, class_probabilities
from adcopilot.protocols import References, Turns
from adcopilot.results import InspectionResult

_BOX_REQUEST = re.compile(r"\b(bbox(_2d)?|bounding[ -]box(es)?|boxes)\b", re.IGNORECASE)
DEFAULT_MAX_NEW_TOKENS = 64
_WHY = re.compile(r"\b(why|cause\w*|effect\w*|consequen\w*|impact|affect\w*|risk\w*|problem\w*|lead to|reason\w*|origin)\b",
                  re.IGNORECASE)
# Which field of the taxonomy an object question asks for (the first that matches); else the closest sentence.
_OBJECT_FIELDS = [
    ("function", re.compile(r"\b(used? for|use of|purpose|function\w*|what (is it|does it) do|what does the \w+ do)\b", re.I)),
    ("structure", re.compile(r"\b(structure|built|parts?|consist\w*|components?|arranged)\b", re.I)),
    ("details", re.compile(r"\b(made of|material|colou?r\w*|surface|finish)\b", re.I)),
    ("description", re.compile(r"\b(look\w*|appearance|shape\w*)\b", re.I)),
]
# Which of the two a why-question asks: what the defect does ("Why is it a problem?") or where it comes from.
_ASKS_EFFECT = re.compile(r"\b(effect\w*|consequen\w*|impact|affect\w*|risk\w*|problem\w*|lead to|matter\w*|harm\w*)\b",
                          re.IGNORECASE)
_ASKS_CAUSE = re.compile(r"\b(why|cause\w*|reason\w*|origin|come from|happen\w*)\b", re.IGNORECASE)


def is_box_request(question: str) -> bool:
    """Whether a question asks for defect boxes (answered with ``bbox_2d`` JSON)."""
    return bool(_BOX_REQUEST.search(question))


def product_text(product: str | None, material: str | None) -> str:
    """The product context as a phrase: "a bottle (brown glass)"; "" without a product."""
    if not product or not product.strip():
        return ""
    name = " ".join(product.split())
    return f"{name} ({' '.join(material.split())})" if material and material.strip() else name


def context_options(
    answerer: object, product: str | None, material: str | None, knowledge: Sequence[str] | None = None
) -> dict[str, str]:
    """The ``ask``/``chat`` keyword arguments of the CLI's ``--product``/``--material`` (and loads
    ``--knowledge`` files); an error when ``answerer`` cannot use them (a model without the nano
    language side)."""
    given = {k: " ".join(v.split()) for k, v in (("product", product), ("material", material)) if v and v.strip()}
    if (given or knowledge) and not isinstance(answerer, LanguageAnswers):
        raise AdcopilotError("--product, --material and --knowledge need a model with the nano language side")
    if material and not product:
        raise AdcopilotError("--material describes a product: give --product too")
    if knowledge:
        answerer.use_knowledge(list(knowledge))  # type: ignore[union-attr]
    return given


class LanguageAnswers:
    """Answerer and Localizer methods for an inspector that has a nano language model.

    The host class provides ``inspect``, ``threshold`` and ``language`` (a :class:`NanoLanguage`).
    """

    threshold: float
    inspect: Any  # the host's Inspector.inspect
    _knowledge: Knowledge | None = None

    @property
    def knowledge(self) -> Knowledge:
        """The domain knowledge searched by grounded answers (built-ins unless :meth:`use_knowledge`)."""
        if self._knowledge is None:
            self._knowledge = Knowledge.load()
        return self._knowledge

    def use_knowledge(self, files: Sequence[str]) -> None:
        """Search the built-in knowledge plus ``files`` (YAML of the built-in shape, or MMAD's
        ``domain_knowledge.json`` format); a missing or malformed file is an error."""
        self._knowledge = Knowledge.load(files)

    @property
    def matcher(self) -> TextMatcher:
        return default_matcher()

    def preload_language(self) -> None:
        """Start loading the language model in the background (a question is coming)."""
        self.language.preload()

    def ask(
        self, query: ImageInput, references: References, question: str, history: Turns | None = None,
        *, result: InspectionResult | None = None, max_new_tokens: int | None = None,
        grounded: bool = True,
        product: str | None = None,
        material: str | None = None,
    ) -> str:
        """The answer to ``question`` about the pair, after the ``history`` turns.

        A request for boxes ("... bounding boxes ... as JSON") is answered with the detector's
        boxes (``result``'s when given). A question that carries lettered options in its text ("What type
        is it? A. Crack B. Scratch", :func:`~adcopilot.grounding.question_options`) is answered as
        :meth:`answer_choice` answers it, as "B. Scratch" (the ``history`` does not count).
        ``grounded`` (default): a question about the defect (whether, what, where, how large, how
        sure) is answered from ``inspect``'s result at this copilot's
        threshold (yes/no first for a yes/no question), the type head's label and a sentence of
        domain knowledge about it; a question about the object, when ``product`` is given, from
        that context (the answer says so). Every other question, or all with ``grounded=False``,
        goes to the language model."""
        return "".join(self.ask_stream(query, references, question, history, result=result,
                                       max_new_tokens=max_new_tokens, grounded=grounded,
                                       product=product, material=material))

    def ask_stream(
        self, query: ImageInput, references: References, question: str, history: Turns | None = None,
        *, result: InspectionResult | None = None, max_new_tokens: int | None = None,
        grounded: bool = True,
        product: str | None = None,
        material: str | None = None,
    ) -> Iterator[str]:
        """:meth:`ask`'s answer as it is written: an answer composed from the product context or
        boxes in one piece, one composed from the inspection in one or two (what the inspection
        alone says first: the yes/no, a normal verdict's facts; then what needs the type head), the
        language model's one piece per token. The question is checked at once; the work happens as
        the pieces are consumed."""
        refs = as_references(references)
        q = (question or "").strip()
        if not q:
            raise AdcopilotError("the question is empty")
        for t in history or []:
            if not isinstance(t, dict) or t.get("role") not in ("user", "assistant") or not isinstance(t.get("content"), str):
                raise AdcopilotError("history: each turn must be {'role': 'user' | 'assistant', 'content': str}")
        return self._answer_pieces(query, refs, q, history, result, max_new_tokens, grounded, product, material)

    def _answer_pieces(
        self, query: ImageInput, refs: list[ImageInput], q: str, history: Sequence[dict[str, str]] | None,
        result: InspectionResult | None, max_new_tokens: int | None, grounded: bool,
        product: str | None, material: str | None,
    ) -> Iterator[str]:
        lang = self.language
        if is_box_request(q):
            yield json.dumps(self.localize(query, refs, result=result, grounded=grounded))
            return
        choice = question_options(q)  # lettered options in the question: one of them is the answer
        if choice is not None:
            stem, options = choice
            letter = self.answer_choice(query, refs, stem, options, grounded=grounded, result=result,
                                        product=product, material=material)
            yield choice_text(letter, options)
            return
        if grounded and object_question(q) and product_text(product, material):
            yield self._object_answer(q, product, material)
            return
        if grounded and object_question(q):  # no product context: a guess, said to be one
            yield self._looks_like(query, refs, traits=not identity_question(q))
            return
        # "Is it a scratch?" and "Is it in the center?" are about the defect too, without naming one.
        about_defect = (free_defect_question(q) or bool(region_question(q))
                        or named_label(q, list(lang.model.cfg.defect_labels)) is not None)
        if grounded and about_defect:
            yield from self._defect_pieces(query, refs, q, result if result is not None else self.inspect(query, refs))
            return
        turns = [*(history or []), {"role": "user", "content": q}]
        t = (result.threshold if result is not None else self.threshold_for(refs)) if grounded else None
        yield from answers.generate_stream(lang.model, lang.visual(query, refs, t), turns,
                                           max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                                           prefix=lang.prefix(query, refs, t))

    def _defect_pieces(
        self, query: ImageInput, refs: list[ImageInput], question: str, r: InspectionResult
    ) -> Iterator[str]:
        """The inspection's facts (type head label, strongest box's region and size, count; or no
        defect), after "Yes."/"No." for a yes/no question, then what is known about the type. What
        the inspection alone says (the yes/no, a normal verdict's facts) comes first, before the
        pair's visual inputs are computed for the type head."""
        labels = list(self.language.model.cfg.defect_labels)
        named = named_label(question, labels)  # "Is it a scratch?": the type head's label decides
        refused = bool(r.image_check)  # not the product: no type or place to read
        start = "No." if named is not None and (refused or not r.is_anomalous) else grounded_start(r, question)
        if score_question(question):  # "How sure are you?": the score first
            start = " ".join(filter(None, [start, score_sentence(r)]))
        if refused or not r.is_anomalous:
            yield " ".join(filter(None, [start, defect_facts(r, None)]))
            return
        if named is not None:
            label, rest = self._anomalous_facts(query, refs, question, r)
            yield ("Yes. " if label == labels[named] else "No. ") + rest
            return
        if start:
            yield start
        rest = self._anomalous_facts(query, refs, question, r)[1]
        yield f" {rest}" if start else rest

    def _anomalous_facts(
        self, query: ImageInput, refs: list[ImageInput], question: str, r: InspectionResult
    ) -> tuple[str | None, str]:
        """(the type head's label, an anomalous verdict's facts and what is known about that label)."""
        label = self._type_label(query, refs, r)
        parts = [defect_facts(r, display_label(label) if label else None)]
        known = label_sentences(self.knowledge, label) if label else []
        if known and _WHY.search(question):  # a cause or an effect: the sentence closest to the question
            typed = self.knowledge.defect(label)  # its causes and effects apart, where the taxonomy has them
            if typed is not None and _ASKS_EFFECT.search(question) and typed.effects:
                known = typed.effects
            elif typed is not None and _ASKS_CAUSE.search(question) and typed.causes:
                known = typed.causes
            known = best_sentences(question, known, self.matcher)
        if known:  # else the type's description, which the taxonomy gives first
            parts.append(f"What is known about it: {known[0].rstrip('.')}.")
        return label, " ".join(parts)

    def _inspection_choice(self, query: ImageInput, refs: list[ImageInput], question: str, options: dict[str, str],
                           result: InspectionResult | None) -> str | None:
        """The letter the inspection gives (``result``, or inspected once now when needed), or None for a question
        it does not answer: the verdict; a yes/no on the defect's type (the type head) or place (the boxes);
        where; "Nothing." to a question on the defect when the verdict is normal; how many."""
        done: list[InspectionResult] = [] if result is None else [result]

        def inspection() -> InspectionResult:
            if not done:
                done.append(self.inspect(query, refs))
            return done[0]

        yes, no = yes_no_letters(options)
        labels = list(self.language.model.cfg.defect_labels)
        if yes and no and len(options) == 2 and (region_question(question) or named_label(question, labels) is not None):
            r = inspection()
            return yes if r.is_anomalous and grounded_start(r, question) != "No." and self._is_named_type(
                query, refs, question, r, labels) else no
        if question_kind(question, options) is not None:
            letter = detector_choice(inspection(), question, options)
            if letter:
                return letter
        nothing = no_defect_option(options) if free_defect_question(question) else None
        if nothing and not inspection().is_anomalous:
            return nothing  # "What is wrong with the part?" ... "Nothing.": the verdict says so
        counts = count_options(question, options)
        return count_choice(inspection(), counts) if counts else None

    def _type_label(self, query: ImageInput, refs: list[ImageInput], r: InspectionResult) -> str | None:
        """The type head's label for the strongest box's grid cell of the anomalous ``r`` (None without a head)."""
        box = strongest_box(r)
        region = region_name(box.bbox_2d, *r.image_size) if box is not None else None
        return answers.type_label(self.language.model, self.language.visual(query, refs, r.threshold), region)

    def _is_named_type(self, query: ImageInput, refs: list[ImageInput], question: str, r: InspectionResult,
                       labels: list[str]) -> bool:
        """Whether the type head reads the anomalous ``r`` as the label ``question`` names (True when it names none)."""
        named = named_label(question, labels)
        return named is None or self._type_label(query, refs, r) == labels[named]

    def _object_answer(self, question: str, product: str | None, material: str | None) -> str:
        """An object question answered from the product context the references carry."""
        said = f"The references are labelled {product_text(product, material)}"
        own = self.knowledge.object(product)
        field = next((f for f, pattern in _OBJECT_FIELDS if pattern.search(question)), None)
        if own is not None and field and getattr(own, field):  # "used for?": its function, as the taxonomy says
            return f"{said}: {getattr(own, field).rstrip('.')}."
        known = [s for p in self.knowledge.passages(None, product) for s in sentences(p.text)]
        best = best_sentences(question, known, self.matcher)
        if best:
            return f"{said}: {best[0].rstrip('.')}."
        return f"{said}; nothing more is known about this product."

    def _looks_like(self, query: ImageInput, refs: list[ImageInput], traits: bool = False) -> str:
        """What the object is, without product context: the tower's likeliest ImageNet classes. With ``traits``
        (what it is made of, for, looks like) nothing is known but that guess, and the answer says so: the
        language model alone made such answers up."""
        visual = self.language.visual(query, refs, self.threshold_for(refs))
        if visual is None:
            return "No product name was given, and this model does not see images to guess one."
        names = class_names()
        probs = class_probabilities(self.language.encoder.tower, visual.glob)
        top = [int(i) for i in np.argsort(-probs, kind="stable")[:2]]
        guesses = " or ".join(f"{names[i].split(',')[0]} ({100 * probs[i]:.0f} %)" for i in top)
        if traits:
            return (f"No product name was given, so nothing is known here about what it is made of or for; to the "
                    f"vision tower's ImageNet classifier it looks most like {guesses}, a guess among everyday objects. "
                    "Name the product for an answer.")
        return (f"No product name was given; to the vision tower's ImageNet classifier it looks most like {guesses}. "
                "That is a guess among everyday objects: name the product for a certain answer.")

    def answer_choice(
        self, query: ImageInput, references: References, question: str, options: dict[str, str],
        mode: str = "likelihood",
        *,
        grounded: bool = True,
        result: InspectionResult | None = None,
        prior_weight: float | None = None,
        product: str | None = None,
        material: str | None = None,
    ) -> str:
        """The letter of the chosen option. ``grounded`` (default): a defect yes/no or defect-location
        question is answered from the inspection (``result``, or inspected now) so that the answer
        agrees with ``inspect``'s verdict and boxes at this copilot's threshold (also a yes/no on the
        defect's type or place, "how many", and "nothing" when the verdict is normal:
        :meth:`_inspection_choice`), and a defect-type
        question whose options all name defect labels the model was trained on by its defect-type
        head, a question on the defect's look, cause or effect by the options that fit the domain
        knowledge of the type head's likely labels best, an object question from ``product`` and
        ``material`` when given (:mod:`adcopilot.grounding`), else by the tower's ImageNet classes
        (:mod:`adcopilot.language.objects`); any other question, or all with ``grounded=False``, by the
        language model (``mode``: likelihood or letter), its option scores calibrated against a
        content-free pair with ``prior_weight`` (None: the default, 0 = uncalibrated; see
        :mod:`adcopilot.language.answer`)."""
        w = answers.PRIOR_WEIGHT if prior_weight is None else float(prior_weight)
        if not 0.0 <= w <= 1.0:
            raise AdcopilotError(f"prior_weight must be between 0 and 1, got {prior_weight}")
        refs = as_references(references)
        lang = self.language
        if grounded:
            letter = self._inspection_choice(query, refs, question, options, result)
            if letter:
                return letter
        if grounded and object_question(question) and product_text(product, material):
            letter = self._object_choice(question, options, product, material)
            if letter:
                return letter
        # Grounded: the language model reads the detector at this copilot's threshold too.
        t = (result.threshold if result is not None else self.threshold_for(refs)) if grounded else None
        visual = lang.visual(query, refs, t)
        if grounded and visual is not None and object_question(question) and not product_text(product, material):
            # No product context: what the object looks like to the tower's ImageNet classifier.
            letter = choose_object(class_probabilities(lang.encoder.tower, visual.glob), options, self.matcher)
            if letter:
                return letter
        if grounded:  # "what type of defect?" with options naming trained labels: the type head
            labels = list(lang.model.cfg.defect_labels)
            choices = type_options(question, options, labels)
            named = option_cells(question)  # "What defect is at the top left?": that cell
            region = named[0] if len(named) == 1 else None
            letter = answers.type_choice(lang.model, visual, choices, region) if choices else None
            if letter:
                return letter
            if knowledge_question(question, options, labels):  # its look, cause, effect: knowledge
                probs = answers.type_probs(lang.model, visual, region)
                letter = choose_by_knowledge(probs, options, self.knowledge, self.matcher, product) if probs else None
                if letter:
                    return letter
        return answers.answer_choice(lang.model, visual, question, options, mode=mode,  # type: ignore[arg-type]
                                     prefix=lang.prefix(query, refs, t), prior=lang.prior() if w else None,
                                     prior_weight=w)

    def _object_choice(self, question: str, options: dict[str, str], product: str | None, material: str | None) -> str | None:
        """The option the product context fits: its name among short names ("Bottle."), else the
        option matching the knowledge about the product and its material; None when unknown."""
        name = " ".join((product or "").split())
        known = self.knowledge.object(name)
        names = [name, *(known.synonyms if known else []), *([known.name] if known else [])]
        if names_the_object(question, options):
            return choose_option({name: 1.0}, {name: names}, options, self.matcher)
        texts = [s for p in self.knowledge.passages(None, name) for s in sentences(p.text)]
        if material and material.strip():
            texts.append(" ".join(material.split()))
        return choose_option({name: 1.0}, {name: texts}, options, self.matcher)

    def localize(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        mode: str = "head",
        *,
        result: InspectionResult | None = None,
        grounded: bool = True,
    ) -> list[dict[str, Any]]:
        """Labelled defect boxes ``[{"bbox_2d", "label", ...}]`` in query pixels. ``grounded``
        (default): the detector's boxes (``result``'s when given) labelled by the type head in
        each box's grid cell, in both modes, so a box written in an answer is a box ``inspect``
        draws (the language model's own boxes missed every defect on the bundled benchmark). With
        ``grounded=False``: ``head`` labels the detector's boxes by the language model's words,
        ``text`` gives the boxes the language model writes itself."""
        refs = as_references(references)
        lang = self.language
        if mode not in ("head", "text"):
            raise AdcopilotError(f"unknown box mode {mode!r}; use 'head' or 'text'")
        if grounded:
            r = result if result is not None else self.inspect(query, refs)
            visual = lang.visual(query, refs, r.threshold) if r.boxes else None
            w, h = r.image_size
            for b in r.boxes:
                label = answers.type_label(lang.model, visual, region_name(b.bbox_2d, w, h))
                b.label = display_label(label) if label else b.label
            return [b.to_dict() for b in r.boxes]
        if mode == "text":
            size = load_image(query, name=source_name(query, "query")).size
            t = self.threshold_for(refs)
            _, boxes = answers.text_boxes(lang.model, lang.visual(query, refs, t), size, lang.encoder.size,
                                          prefix=lang.prefix(query, refs, t))
            return boxes
        r = result if result is not None else self.inspect(query, refs)
        if not r.boxes:
            return []
        labels = answers.label_boxes(lang.model, lang.visual(query, refs, r.threshold), [b.bbox_2d for b in r.boxes],
                                     r.image_size, prefix=lang.prefix(query, refs, r.threshold))
        for b, label in zip(r.boxes, labels, strict=True):
            b.label = label
        return [b.to_dict() for b in r.boxes]

    def chat(
        self, query: ImageInput, references: References, question: str, history: Turns | None = None,
        *,
        product: str | None = None,
        material: str | None = None,
    ) -> tuple[str, list[dict[str, str]]]:
        """One turn of a conversation: the answer and the history including this turn."""
        answer = self.ask(query, references, question, history=history, product=product, material=material)
        turns = [*(history or []), {"role": "user", "content": question.strip()}]
        return answer, [*turns, {"role": "assistant", "content": answer}]

