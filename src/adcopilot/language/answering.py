"""The nano copilot's answers: ``ask``, ``answer_choice``, ``chat`` and ``localize``.

:class:`LanguageAnswers` gives an inspector with a nano language model (``self.language``, a
:class:`~adcopilot.language.nano_language.NanoLanguage`) the :class:`adcopilot.protocols.Answerer` and
:class:`adcopilot.protocols.Localizer` methods. Grounded answers (default) read the inspection:
a defect yes/no or defect-location question is answered from ``inspect``'s verdict and boxes at
this copilot's threshold, a defect-type question naming trained labels by the type head
(:mod:`adcopilot.grounding`), and the language model reads the same image score as ``inspect``
(its visual inputs are built on the inspection core).

Usage::

    class AnsweringCopilot(LanguageAnswers, Copilot): ...      # see adcopilot.api
    cp.ask("query.png", ["good.png"], "What is different?")
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from adcopilot.errors import AdcopilotError
from adcopilot.grounding import (
    detector_choice,
    grounded_start,
    option_cells,
    question_kind,
    type_options,
    verdict_question,
)
from adcopilot.imaging import ImageInput, load_image
from adcopilot.inputs import as_references, source_name
from adcopilot.language import answer as answers
from adcopilot.language.nano_language import NanoLanguage
from adcopilot.results import InspectionResult

_BOX_REQUEST = re.compile(r"\b(bbox(_2d)?|bounding[ -]box(es)?|boxes)\b", re.IGNORECASE)
DEFAULT_MAX_NEW_TOKENS = 64


def is_box_request(question: str) -> bool:
    """Whether a question asks for defect boxes (answered with ``bbox_2d`` JSON)."""
    return bool(_BOX_REQUEST.search(question))


class LanguageAnswers:
    """Answerer and Localizer methods for an inspector that has a nano language model.

    The host class provides ``inspect``, ``threshold`` and ``language`` (a :class:`NanoLanguage`).
    """

    language: NanoLanguage
    threshold: float
    inspect: Any  # the host's Inspector.inspect

    def preload_language(self) -> None:
        """Start loading the language model in the background (a question is coming)."""
        self.language.preload()

    def ask(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        question: str,
        history: Sequence[dict[str, str]] | None = None,
        *,
        result: InspectionResult | None = None,
        max_new_tokens: int | None = None,
        grounded: bool = True,
    ) -> str:
        """The language model's answer to ``question`` about the pair, after the ``history`` turns.

        A request for boxes ("... bounding boxes ... as JSON") is answered with the dense head's
        boxes labelled by the language model (``result``'s boxes when given). ``grounded``
        (default): the answer to a yes/no defect question ("Is there a defect?") starts with
        ``inspect``'s verdict at this copilot's threshold, and the language model goes on from it."""
        return "".join(self.ask_stream(query, references, question, history, result=result,
                                       max_new_tokens=max_new_tokens, grounded=grounded))

    def ask_stream(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        question: str,
        history: Sequence[dict[str, str]] | None = None,
        *,
        result: InspectionResult | None = None,
        max_new_tokens: int | None = None,
        grounded: bool = True,
    ) -> Iterator[str]:
        """:meth:`ask`'s answer as the language model writes it: for each token the text it adds
        (a box request in one piece). The question is checked at once; the work happens as the
        pieces are consumed."""
        refs = as_references(references)
        q = (question or "").strip()
        if not q:
            raise AdcopilotError("the question is empty")
        for t in history or []:
            if not isinstance(t, dict) or t.get("role") not in ("user", "assistant") or not isinstance(t.get("content"), str):
                raise AdcopilotError("history: each turn must be {'role': 'user' | 'assistant', 'content': str}")
        return self._answer_pieces(query, refs, q, history, result, max_new_tokens, grounded)

    def _answer_pieces(
        self, query: ImageInput, refs: list[ImageInput], q: str, history: Sequence[dict[str, str]] | None,
        result: InspectionResult | None, max_new_tokens: int | None, grounded: bool,
    ) -> Iterator[str]:
        lang = self.language
        if is_box_request(q):
            yield json.dumps(self.localize(query, refs, result=result))
            return
        turns = [*(history or []), {"role": "user", "content": q}]
        start, t = "", (result.threshold if result is not None else self.threshold)
        if grounded and verdict_question(q):
            start = grounded_start(result if result is not None else self.inspect(query, refs), q)
        if not grounded:
            t = None  # the language model's own reading, at the threshold it was trained with
        # After the verdict, the model goes on explaining; it may not open with a second yes/no.
        ban = sorted({lang.model._ids(w)[0] for w in (" Yes", " No", " yes", " no", "Yes", "No")}) if start else []
        yield from answers.generate_stream(lang.model, lang.visual(query, refs, t), turns,
                                           max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                                           prefix=lang.prefix(query, refs, t), start=start, ban_after_start=ban)

    def answer_choice(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        question: str,
        options: dict[str, str],
        mode: str = "likelihood",
        *,
        grounded: bool = True,
        result: InspectionResult | None = None,
        prior_weight: float | None = None,
    ) -> str:
        """The letter of the chosen option. ``grounded`` (default): a defect yes/no or defect-location
        question is answered from the inspection (``result``, or inspected now) so that the answer
        agrees with ``inspect``'s verdict and boxes at this copilot's threshold, and a defect-type
        question whose options all name defect labels the model was trained on by its defect-type
        head (:mod:`adcopilot.grounding`); any other question, or all with ``grounded=False``, by the
        language model (``mode``: likelihood or letter), its option scores calibrated against a
        content-free pair with ``prior_weight`` (None: the default, 0 = uncalibrated; see
        :mod:`adcopilot.language.answer`)."""
        w = answers.PRIOR_WEIGHT if prior_weight is None else float(prior_weight)
        if not 0.0 <= w <= 1.0:
            raise AdcopilotError(f"prior_weight must be between 0 and 1, got {prior_weight}")
        refs = as_references(references)
        if grounded and question_kind(question, options) is not None:
            letter = detector_choice(result if result is not None else self.inspect(query, refs), question, options)
            if letter:
                return letter
        lang = self.language
        # Grounded: the language model reads the detector at this copilot's threshold too.
        t = (result.threshold if result is not None else self.threshold) if grounded else None
        visual = lang.visual(query, refs, t)
        if grounded:  # "what type of defect?" with options naming trained labels: the type head
            choices = type_options(question, options, list(lang.model.cfg.defect_labels))
            named = option_cells(question)  # "What defect is at the top left?": that cell
            region = named[0] if len(named) == 1 else None
            letter = answers.type_choice(lang.model, visual, choices, region) if choices else None
            if letter:
                return letter
        return answers.answer_choice(lang.model, visual, question, options, mode=mode,  # type: ignore[arg-type]
                                     prefix=lang.prefix(query, refs, t), prior=lang.prior() if w else None,
                                     prior_weight=w)

    def localize(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        mode: str = "head",
        *,
        result: InspectionResult | None = None,
    ) -> list[dict[str, Any]]:
        """Labelled defect boxes ``[{"bbox_2d", "label", ...}]`` in query pixels: ``head`` = the
        dense head's boxes (``result``'s when given) labelled by the language model, ``text`` = the
        boxes the language model writes itself."""
        refs = as_references(references)
        lang = self.language
        if mode == "text":
            size = load_image(query, name=source_name(query, "query")).size
            t = self.threshold
            _, boxes = answers.text_boxes(lang.model, lang.visual(query, refs, t), size, lang.encoder.size,
                                          prefix=lang.prefix(query, refs, t))
            return boxes
        if mode != "head":
            raise AdcopilotError(f"unknown box mode {mode!r}; use 'head' or 'text'")
        r = result if result is not None else self.inspect(query, refs)
        if not r.boxes:
            return []
        labels = answers.label_boxes(lang.model, lang.visual(query, refs, r.threshold), [b.bbox_2d for b in r.boxes],
                                     r.image_size, prefix=lang.prefix(query, refs, r.threshold))
        for b, label in zip(r.boxes, labels, strict=True):
            b.label = label
        return [b.to_dict() for b in r.boxes]

    def chat(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        question: str,
        history: Sequence[dict[str, str]] | None = None,
    ) -> tuple[str, list[dict[str, str]]]:
        """One turn of a conversation: the answer and the history including this turn."""
        answer = self.ask(query, references, question, history=history)
        turns = [*(history or []), {"role": "user", "content": question.strip()}]
        return answer, [*turns, {"role": "assistant", "content": answer}]
