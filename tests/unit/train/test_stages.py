"""The shared stage definitions: well-formed, and full fine-tuning swaps LoRA for the LLM."""

import pytest

from adcopilot.errors import AdcopilotError
from adcopilot.model.stages import GROUPS, STAGES, Stage, get_stage


def test_three_stages_with_disjoint_groups():
    assert sorted(STAGES) == [1, 2, 3]
    for n, st in STAGES.items():
        assert st.number == n
        assert set(st.trainable).isdisjoint(st.frozen)
        assert set(st.trainable) | set(st.frozen) <= set(GROUPS)
        assert st.lr > 0 and "lm" in st.losses


def test_stage_contents_follow_the_recipe():
    assert {"compare", "projector"} <= set(STAGES[1].trainable) and {"tower", "llm"} <= set(STAGES[1].frozen)
    assert "llm" in STAGES[2].frozen and "queries" in STAGES[2].trainable
    assert "lora" in STAGES[3].trainable
    assert STAGES[3].lr_for("compare") < STAGES[3].lr
    assert STAGES[3].lr_for("tower") == 0.0


def test_full_finetune_swaps_lora_for_llm():
    st = STAGES[3].with_full_finetune()
    assert "llm" in st.trainable and "lora" not in st.trainable and "lora" in st.frozen
    assert STAGES[1].with_full_finetune() is STAGES[1]


def test_bad_definitions_and_numbers_are_rejected():
    with pytest.raises(ValueError, match="unknown module group"):
        Stage("x", 9, ["wings"], [], 1e-4, ["lm"], "")
    with pytest.raises(ValueError, match="both trained and frozen"):
        Stage("x", 9, ["llm"], ["llm"], 1e-4, ["lm"], "")
    with pytest.raises(AdcopilotError, match="unknown training stage"):
        get_stage(7)
    assert get_stage("2") is STAGES[2]
