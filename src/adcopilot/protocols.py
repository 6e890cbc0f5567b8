"""What an inspector, an answerer and a localizer are: the interfaces the faces call.

Every copilot implements :class:`Inspector`; one with a language model also :class:`Answerer` and
:class:`Localizer`. Callers (the CLI, the service, the evaluation backends) ask
``isinstance(copilot, Answerer)`` rather than probing flags. The nano copilot
(:class:`adcopilot.api.Copilot`, with a language model :class:`adcopilot.api.AnsweringCopilot`)
and the full-scale one (:class:`adcopilot.full.pipeline.FullCopilot`) implement them side by side;
neither subclasses the other. An implementation may take further keyword arguments with defaults
(the nano answerer's ``grounded``, for instance).

References are one image or a sequence of them (:func:`adcopilot.inputs.as_references`); boxes
are ``{"bbox_2d": [x1, y1, x2, y2], "label": ..., "score": ...}`` in query pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from adcopilot.errors import AdcopilotError
from adcopilot.imaging import ImageInput
from adcopilot.results import InspectionResult

References = ImageInput | Sequence[ImageInput]
Turns = Sequence[dict[str, str]]


@runtime_checkable
class Inspector(Protocol):
    """Compares a query with normal references: verdict, score, boxes, description."""

    model_name: str
    threshold: float  # the verdict's threshold on the score
    registration: bool  # whether a query compared with one or two references is registered onto the first
    calibration: dict[str, Any] | None  # the calibration file in use, if any

    def inspect(
        self, query: ImageInput, references: References, *, threshold: float | None = None
    ) -> InspectionResult: ...

    def threshold_with(self, references: int) -> float:
        """The threshold ``inspect`` uses with this many references when none is given."""
        ...


@runtime_checkable
class Answerer(Protocol):
    """Answers questions about a (query, references) pair in words."""

    def ask(
        self, query: ImageInput, references: References, question: str, history: Turns | None = None,
        *, result: InspectionResult | None = None, max_new_tokens: int | None = None,
    ) -> str: ...

    def answer_choice(
        self, query: ImageInput, references: References, question: str, options: dict[str, str],
        *,
        result: InspectionResult | None = None,
    ) -> str:
        """The letter of the chosen option."""
        ...

    def chat(
        self, query: ImageInput, references: References, question: str, history: Turns | None = None
    ) -> tuple[str, list[dict[str, str]]]:
        """One turn: the answer and the history including this turn."""
        ...

    def preload_language(self) -> None:
        """Start loading what answering needs, in the background (a question is coming)."""
        ...


@runtime_checkable
class StreamingAnswerer(Answerer, Protocol):
    """An :class:`Answerer` that can also hand out a free answer as it is written."""

    def ask_stream(
        self, query: ImageInput, references: References, question: str, history: Turns | None = None,
        *, result: InspectionResult | None = None, max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        """:meth:`ask`'s answer, one piece of text per token as the model writes it."""
        ...


@runtime_checkable
class Localizer(Protocol):
    """Labelled defect boxes in query pixels."""

    def localize(
        self, query: ImageInput, references: References, *, result: InspectionResult | None = None
    ) -> list[dict[str, Any]]: ...


def require_answerer(copilot: Inspector) -> Answerer:
    """``copilot`` as an Answerer, or one clear error saying that it cannot answer questions."""
    if not isinstance(copilot, Answerer):
        raise AdcopilotError(
            f"model '{copilot.model_name}' has no language model: it inspects but cannot answer questions "
            "(use the default model or a checkpoint with a language/ folder)"
        )
    return copilot
