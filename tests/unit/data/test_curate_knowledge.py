"""The defect taxonomy and object knowledge: lookup by label, user YAML, errors."""

from __future__ import annotations

import pytest

from adcopilot.data.knowledge import Knowledge, display_label
from adcopilot.errors import AdcopilotError

MVTEC_LABELS = [
    "broken_large", "broken_small", "contamination", "bent_wire", "cable_swap", "combined",
    "cut_inner_insulation", "cut_outer_insulation", "missing_cable", "missing_wire", "poke_insulation",
    "crack", "faulty_imprint", "poke", "scratch", "squeeze", "color", "cut", "hole", "metal_contamination",
    "thread", "bent", "broken", "glue", "print", "fold", "flip", "pill_type", "manipulated_front",
    "scratch_head", "scratch_neck", "thread_side", "thread_top", "glue_strip", "gray_stroke", "oil", "rough",
    "defective", "bent_lead", "cut_lead", "damaged_case", "misplaced", "liquid", "broken_teeth",
    "fabric_border", "fabric_interior", "split_teeth", "squeezed_teeth",
]


def test_every_mvtec_label_resolves():
    kb = Knowledge.load()
    missing = [lab for lab in MVTEC_LABELS if kb.defect(lab) is None]
    assert missing == []


@pytest.mark.parametrize(
    "label,name",
    [("broken_large", "broken"), ("scratch_head", "scratch"), ("thread_side", "damaged thread"),
     ("thread", "thread"), ("color", "discoloration"), ("cable_swap", "swapped"), ("Different-Colour Spot", "discoloration"),
     ("pitting", "pitting"), ("missing material", "material missing"), ("defective", "defect")],
)
def test_synonyms_and_qualifiers(label, name):
    assert Knowledge.load().defect(label).name == name


def test_unknown_and_good():
    kb = Knowledge.load()
    assert kb.defect("zorblax") is None
    assert kb.defect(None) is None
    assert kb.object("metal_nut").name == "metal nut"
    assert kb.object("macaroni2").name == "macaroni2"
    assert kb.object("gizmo") is None
    assert display_label("broken_large") == "Broken Large"


def test_entries_have_text():
    kb = Knowledge.load()
    for d in kb.defects.values():
        assert d.description and d.noun, d.name
        if d.name not in ("defect", "combined", "foreign texture", "misplaced patch"):
            assert d.causes and d.effects and d.acceptable is not None, d.name
    for o in kb.objects.values():
        assert o.description and o.structure and o.details and o.function, o.name


def test_user_yaml_extends_and_overrides(tmp_path):
    p = tmp_path / "plant.yaml"
    p.write_text(
        "defects:\n  solder bridge:\n    synonyms: [bridge]\n    description: solder joining two pads\n"
        "    causes: [too much paste]\n    effects: [a short circuit]\n    acceptable: false\n"
        "  scratch:\n    description: our scratch\n"
        "objects:\n  gizmo:\n    description: a blue gizmo\n    function: holds things\n"
    )
    kb = Knowledge.load([p])
    assert kb.defect("bridge").name == "solder bridge"
    assert kb.defect("scratch").description == "our scratch"
    assert kb.defect("scratch").causes == []  # the user's entry replaces the built-in one
    assert kb.object("gizmo").function == "holds things"
    assert str(p) in kb.sources


@pytest.mark.parametrize(
    "text,match",
    [("defects: [1, 2", "malformed YAML"), ("stuff: {}", "expected top-level keys"),
     ("defects:\n  x:\n    colour: red\n", "unknown fields"), ("defects:\n  x:\n    acceptable: maybe\n", "true or false"),
     ("defects:\n  x: 3\n", "expected a mapping")],
)
def test_bad_yaml_names_the_file(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(AdcopilotError, match=match) as exc:
        Knowledge.load([p])
    assert "bad.yaml" in str(exc.value) and "\n" not in str(exc.value)


def test_missing_yaml(tmp_path):
    with pytest.raises(AdcopilotError, match="no such knowledge file"):
        Knowledge.load([tmp_path / "nope.yaml"])
