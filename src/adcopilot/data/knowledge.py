"""Inspection knowledge: a defect taxonomy and the normal appearance of objects.

The built-in knowledge lives in ``adcopilot/data/knowledge/*.yaml`` (``defects:`` and
``objects:`` maps); users add or override entries with their own YAML files of the same shape,
or point to a file in MMAD's ``domain_knowledge.json`` format (``{dataset: {product: {defect key:
text}}}``, ``good`` for the normal appearance, ``combined`` a summary of all), whose texts become
passages searched by product and defect (:meth:`Knowledge.passages`).
The curation pipeline states a cause, an effect or an acceptability only when the taxonomy has
it; unknown defects get questions built from their label alone.

Usage::

    kb = Knowledge.load(["my_plant.yaml"])      # built-ins + yours (yours win)
    kb = Knowledge.load(["domain_knowledge.json"])  # MMAD's format: passages per product and defect
    kb.passages("broken", product="bottle")     # texts about that defect (on that product first)
    d = kb.defect("scratch_head")               # DefectType(name="scratch", ...) via synonyms
    o = kb.object("metal_nut")                  # ObjectInfo(name="metal nut", ...)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from adcopilot.errors import AdcopilotError

log = logging.getLogger(__name__)

#: Words that qualify a defect label without changing its type ("broken_large" is "broken").
_QUALIFIERS = {
    "large", "small", "big", "tiny", "inner", "outer", "top", "side", "front", "back", "head",
    "neck", "left", "right", "middle", "edge", "around", "on", "of", "the", "a", "and", "or",
}


def normalise(name: str) -> str:
    """Lower-case, ``_``/``-`` to spaces, single spaces: "Broken_Large" -> "broken large"."""
    return " ".join(str(name).replace("_", " ").replace("-", " ").lower().split())


def display_label(label: str) -> str:
    """A dataset label as a box label: "broken_large" -> "Broken Large"."""
    return " ".join(w.capitalize() for w in normalise(label).split())


@dataclass
class DefectType:
    name: str
    description: str = ""
    synonyms: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    effects: list[str] = field(default_factory=list)
    acceptable: bool | None = None  # usually acceptable; None = unknown
    noun: str = ""  # countable noun for sentences ("break" for "broken"); default the name

    def __post_init__(self) -> None:
        self.noun = self.noun or self.name


@dataclass
class Passage:
    """A text of domain knowledge about a defect (``defect`` set) or a product's normal look."""

    text: str
    defect: str = ""  # canonical defect name ("" for a normal-appearance text)
    product: str = ""  # normalised product name ("" for knowledge about any product)
    source: str = ""


@dataclass
class ObjectInfo:
    name: str
    description: str = ""
    synonyms: list[str] = field(default_factory=list)
    structure: str = ""
    details: str = ""
    function: str = ""


def _as_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise AdcopilotError(f"{where}: expected a list of strings, got {type(value).__name__}")


def _as_text(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)):
        raise AdcopilotError(f"{where}: expected text, got {type(value).__name__}")
    return " ".join(str(value).split())


class Knowledge:
    """Defect types and object descriptions, with lookup by name or synonym."""

    def __init__(self) -> None:
        self.defects: dict[str, DefectType] = {}
        self.objects: dict[str, ObjectInfo] = {}
        self.sources: list[str] = []
        self.texts: list[Passage] = []  # from MMAD-format files; the taxonomy's own are built on demand
        self._defect_index: dict[str, str] = {}
        self._object_index: dict[str, str] = {}

    @classmethod
    def load(cls, extra: Iterable[str | os.PathLike] | None = None, *, builtin: bool = True) -> Knowledge:
        """The built-in knowledge plus each YAML in ``extra`` (later files override earlier)."""
        kb = cls()
        if builtin:
            folder = resources.files("adcopilot.data") / "knowledge"
            for name in sorted(p.name for p in folder.iterdir() if p.name.endswith(".yaml")):
                kb.add_yaml_text((folder / name).read_text(encoding="utf-8"), f"adcopilot/data/knowledge/{name}")
        for path in extra or []:
            p = Path(path)
            if not p.is_file():
                raise AdcopilotError(f"{p}: no such knowledge file")
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise AdcopilotError(f"{p}: cannot read knowledge file ({exc})") from None
            if p.suffix.lower() == ".json":
                kb.add_mmad_json_text(text, str(p))
            else:
                kb.add_yaml_text(text, str(p))
        return kb

    def add_mmad_json_text(self, text: str, source: str) -> None:
        """Merge a file in MMAD's ``domain_knowledge.json`` format: ``{dataset: {product: {key:
        text}}}``. Each defect key's text becomes a passage about that defect on that product
        (the key read through the taxonomy's synonyms: "broken_large" is "broken"), ``good`` a
        passage about the product's normal look; ``combined`` (a summary of all) is left out."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise AdcopilotError(f"{source}: malformed JSON ({exc})") from None
        if not isinstance(data, dict) or not data:
            raise AdcopilotError(f"{source}: expected {{dataset: {{product: {{defect: text}}}}}}")
        added = 0
        for dataset, products in data.items():
            if not isinstance(products, dict):
                raise AdcopilotError(f"{source}: {dataset}: expected a mapping of products")
            for product, entries in products.items():
                if not isinstance(entries, dict):
                    raise AdcopilotError(f"{source}: {dataset}.{product}: expected a mapping of defect texts")
                for key, value in entries.items():
                    if not isinstance(value, str):
                        raise AdcopilotError(f"{source}: {dataset}.{product}.{key}: expected text")
                    if key == "combined" or not value.strip():
                        continue
                    known = self.defect(key)
                    defect = "" if key == "good" else (known.name if known else normalise(key))
                    self.texts.append(Passage(" ".join(value.split()), defect, normalise(product), source))
                    added += 1
        if not added:
            raise AdcopilotError(f"{source}: no knowledge texts found")
        self.sources.append(source)

    def passages(self, defect: str | None, product: str | None = None) -> list[Passage]:
        """Knowledge about a defect type (``None``: a product's normal look): the taxonomy's
        description, causes and effects, then the texts of MMAD-format files about that defect,
        those about ``product`` first (texts about other products follow: a defect looks and
        arises much the same across products)."""
        if defect is None:
            own = self.object(product)
            out = [Passage(t, "", own.name, "taxonomy") for t in
                   (own.description, own.structure, own.details, own.function) if t] if own else []
            return out + [p for p in self.texts if not p.defect and p.product == normalise(product or "")]
        d = self.defect(defect)
        name = d.name if d else normalise(defect)
        out = [Passage(t, name, "", "taxonomy") for t in ([d.description, *d.causes, *d.effects] if d else []) if t]
        mine = [p for p in self.texts if p.defect == name]
        prod = normalise(product or "")
        return out + [p for p in mine if p.product == prod] + [p for p in mine if p.product != prod]

    def add_yaml_text(self, text: str, source: str) -> None:
        """Merge one YAML document (``defects:`` and/or ``objects:`` maps); entries override."""
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            first = " ".join(str(exc).split())
            raise AdcopilotError(f"{source}: malformed YAML ({first})") from None
        if not isinstance(data, dict) or not set(data) <= {"defects", "objects"}:
            raise AdcopilotError(f"{source}: expected top-level keys 'defects' and/or 'objects'")
        for key, entry in (data.get("defects") or {}).items():
            self.add_defect(self._defect_from(key, entry, source))
        for key, entry in (data.get("objects") or {}).items():
            self.add_object(self._object_from(key, entry, source))
        self.sources.append(source)

    @staticmethod
    def _defect_from(key: str, entry: object, source: str) -> DefectType:
        where = f"{source}: defects.{key}"
        if not isinstance(entry, dict):
            raise AdcopilotError(f"{where}: expected a mapping")
        unknown = set(entry) - {"synonyms", "description", "causes", "effects", "acceptable", "noun"}
        if unknown:
            raise AdcopilotError(f"{where}: unknown fields {sorted(unknown)}")
        acc = entry.get("acceptable")
        if acc is not None and not isinstance(acc, bool):
            raise AdcopilotError(f"{where}.acceptable: expected true or false")
        return DefectType(
            name=normalise(key),
            description=_as_text(entry.get("description"), where + ".description"),
            synonyms=[normalise(s) for s in _as_list(entry.get("synonyms"), where + ".synonyms")],
            causes=_as_list(entry.get("causes"), where + ".causes"),
            effects=_as_list(entry.get("effects"), where + ".effects"),
            acceptable=acc,
            noun=_as_text(entry.get("noun"), where + ".noun"),
        )

    @staticmethod
    def _object_from(key: str, entry: object, source: str) -> ObjectInfo:
        where = f"{source}: objects.{key}"
        if not isinstance(entry, dict):
            raise AdcopilotError(f"{where}: expected a mapping")
        unknown = set(entry) - {"synonyms", "description", "structure", "details", "function"}
        if unknown:
            raise AdcopilotError(f"{where}: unknown fields {sorted(unknown)}")
        return ObjectInfo(
            name=normalise(key),
            description=_as_text(entry.get("description"), where + ".description"),
            synonyms=[normalise(s) for s in _as_list(entry.get("synonyms"), where + ".synonyms")],
            structure=_as_text(entry.get("structure"), where + ".structure"),
            details=_as_text(entry.get("details"), where + ".details"),
            function=_as_text(entry.get("function"), where + ".function"),
        )

    def add_defect(self, d: DefectType) -> None:
        self.defects[d.name] = d
        for alias in [d.name, *d.synonyms]:
            self._defect_index[alias] = d.name

    def add_object(self, o: ObjectInfo) -> None:
        self.objects[o.name] = o
        for alias in [o.name, *o.synonyms]:
            self._object_index[alias] = o.name

    def defect(self, label: str | None) -> DefectType | None:
        """The defect type of a dataset label, or None when the taxonomy does not know it.

        Matching: the whole label as a name or synonym; then the label without qualifier words
        ("broken_large" -> "broken"); then each word of the label on its own, longest first.
        """
        if not label:
            return None
        text = normalise(label)
        if text in self._defect_index:
            return self.defects[self._defect_index[text]]
        words = [w for w in text.split() if w not in _QUALIFIERS]
        core = " ".join(words)
        if core in self._defect_index:
            return self.defects[self._defect_index[core]]
        for w in sorted(words, key=len, reverse=True):
            if w in self._defect_index:
                return self.defects[self._defect_index[w]]
        return None

    def object(self, category: str | None) -> ObjectInfo | None:
        """The object entry of a class name (or synonym), or None."""
        if not category:
            return None
        text = normalise(category)
        key = self._object_index.get(text) or self._object_index.get(text.rstrip("0123456789").strip())
        return self.objects.get(key) if key else None
