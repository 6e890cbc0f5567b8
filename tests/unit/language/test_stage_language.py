"""Stages 2 and 3 end to end on tiny models: licence-clean data, mixture, training, export, resume."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from adcopilot.errors import AdcopilotError
from adcopilot.protocols import Answerer
from adcopilot.train.config import TrainConfig
from adcopilot.train.language_data import ChatData, ChatDataConfig, training_photos
from adcopilot.train.loop import train
from adcopilot.train.stage_language import LanguageTask, Mixture, merge_card


@pytest.fixture(scope="module")
def setup(tmp_path_factory, detector, tok):
    from .tiny import tiny_llm

    root = tmp_path_factory.mktemp("lang")
    cmp_dir = detector.model.save(root / "stage1")
    llm_dir = root / "tiny-llm"
    tiny_llm(len(tok)).save_pretrained(llm_dir)
    tok.save_pretrained(llm_dir)
    cfg = ChatDataConfig(categories=["screw", "wood"], photos=False, instances=1, shots=3, variants=1, size=64,
                         test_fraction=0.34)
    data = ChatData.prepare(root / "data", cmp_dir, cfg, progress=False, detector=detector)
    return root, cmp_dir, llm_dir, data


def _cfg(root, stage, init_from, llm_dir, **kw) -> TrainConfig:
    base = dict(stage=stage, seed=0, steps=2, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=1,
                log_every=1, eval_every=0, eval_pairs=4, run_dir=str(root / f"run{stage}"), init_from=str(init_from),
                model={"llm": str(llm_dir), "hidden": 32, "compare_width": 24, "num_compare": 4})
    base.update(kw)
    return TrainConfig(**base)


def test_training_photos_exclude_the_held_out_ones():
    from adcopilot.data.normals import HELDOUT_FOR_EVALUATION

    names = {n for n, _ in training_photos()}
    assert "cat" in names and "brick_wall" in names
    assert not names & {"gravel", "coffee cup", "coins", "flower"} and len(HELDOUT_FOR_EVALUATION) == 4


def test_data_has_every_sample_kind_and_features(setup):
    _, _, _, data = setup
    tasks = Counter(s["task"] for s in data.samples("train"))
    assert set(tasks) == {"caption", "vqa", "localization", "mcq"}
    assert data.samples("test")
    s = data.samples("train")[0]
    v = data.visual(s)
    assert v.base.shape == (2, 9, 152) and v.compare.shape == (4, 24)
    assert set(data.defect_labels()) <= {"Crack", "Scratch", "Hole", "Pitting", "Stain", "Contamination",
                                         "Missing Material", "Extra Material", "Discoloration", "Deformation",
                                         "Foreign Texture", "Misplaced Patch", "Dark Region", "Line Defect"}


def test_rebuilding_with_other_settings_is_refused(setup, detector):
    root, cmp_dir, _, data = setup
    with pytest.raises(AdcopilotError, match="other data settings"):
        ChatData.prepare(data.root, cmp_dir, ChatDataConfig(categories=["screw"], photos=False), progress=False,
                         detector=detector)


def test_mixtures(setup):
    _, _, _, data = setup
    m3 = Mixture(data, 3, frame=128)
    rng = np.random.default_rng(0)
    fams = Counter()
    for _ in range(300):
        fam = m3.families[int(rng.choice(len(m3.families), p=m3.p))]
        fams[fam] += 1
        s = m3.pools[fam][int(rng.integers(len(m3.pools[fam])))]
        turns = m3.conversation(fam, s, rng)
        assert [t["role"] for t in turns][-1] == "assistant" and turns[0]["role"] == "user"
        if fam in ("ad_normal", "ad_defect", "mcq"):
            assert turns[1]["content"] in s["options"].values()
            if fam == "ad_defect":
                assert s["defect"] is not None
        if fam == "localization":
            boxes = json.loads(turns[1]["content"])
            for b, orig in zip(boxes, s["boxes"], strict=True):
                assert b["bbox_2d"] == [round(c * 128 / 64) for c in orig["bbox_2d"]]
    # Normal and defective anomaly questions are drawn equally often although defects outnumber.
    assert abs(fams["ad_normal"] - fams["ad_defect"]) < 0.5 * fams["ad_defect"]
    m2 = Mixture(data, 2)
    assert set(m2.families) == {"caption", "object", "defect"}


def test_stage2_then_stage3_export_and_resume(setup, tok):
    from adcopilot.api import Copilot
    from adcopilot.language.model import NanoCopilot

    root, cmp_dir, llm_dir, data = setup
    cfg2 = _cfg(root, 2, cmp_dir, llm_dir)
    task2 = LanguageTask(cfg2, data=data, progress=False)
    b1, b2 = next(task2.batches(3, 0)), next(task2.batches(3, 0))
    assert b1[0] == 3 and [x[0] for x in b1[1]] == [x[0] for x in b2[1]]
    final2 = train(task2, cfg2)
    assert {p.name for p in final2.iterdir()} >= {"config.json", "model.safetensors", "language", "MODEL_CARD.md"}
    lang2 = NanoCopilot.read_config(final2 / "language")
    assert not lang2.lora and lang2.defect_labels == data.defect_labels()

    cfg3 = _cfg(root, 3, final2, llm_dir, eval_pairs=6)
    final3 = train(LanguageTask(cfg3, data=data, progress=False), cfg3)
    lang3 = NanoCopilot.read_config(final3 / "language")
    assert lang3.lora and lang3.training["stage"] == 3
    # The language model keeps the comparison model its training inputs came from.
    kept = final3 / "language" / "comparison"
    assert (kept / "model.safetensors").read_bytes() == (cmp_dir / "model.safetensors").read_bytes()
    assert set(lang3.training["eval"]) >= {"Anomaly Detection", "mean"}
    card = (final3 / "MODEL_CARD.md").read_text()
    assert "stage 2" in card and "stage 3" in card and "No ELPV" in card
    # Resume: a longer run continues from the checkpoint of step 2.
    cfg3b = _cfg(root, 3, final2, llm_dir, steps=3)
    train(LanguageTask(cfg3b, data=data, progress=False), cfg3b, resume=True)
    rows = [json.loads(x) for x in (root / "run3" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    with pytest.raises(AdcopilotError, match="already exists"):
        train(LanguageTask(cfg3b, data=data, progress=False), cfg3b)

    # A new language model learns from the checkpoint's detector; stage 3 keeps its model's copy.
    assert LanguageTask(_cfg(root, 2, final3, llm_dir), data=data).comparison == final3
    assert LanguageTask(_cfg(root, 3, final3, llm_dir), data=data).comparison == kept

    cp = Copilot.load(final3)
    assert isinstance(cp, Answerer)
    assert cp.language.model.cfg.lora  # loaded on first use, from the tiny language model's folder


def test_stage_configs_are_checked(setup):
    root, cmp_dir, llm_dir, data = setup
    with pytest.raises(AdcopilotError, match="init-from"):
        LanguageTask(_cfg(root, 2, "", llm_dir), data=data)
    with pytest.raises(AdcopilotError, match="stage-2 export"):
        LanguageTask(_cfg(root, 3, cmp_dir, llm_dir), data=data)


def test_merge_card_replaces_its_own_section():
    text = merge_card("# stage 1 card\n", "stage 2", "## Language 2\nold")
    text = merge_card(text, "stage 2", "## Language 2\nnew")
    assert text.startswith("# stage 1 card") and "new" in text and "old" not in text


def test_text_only_ablation_starts_from_stage1(setup):
    from adcopilot.api import Copilot

    root, cmp_dir, llm_dir, data = setup
    cfg = _cfg(root, 3, cmp_dir, llm_dir, steps=1, run_dir=str(root / "run-text"))
    cfg.model["use_images"] = False
    final = train(LanguageTask(cfg, data=data, progress=False), cfg)
    cp = Copilot.load(final)
    s = next(x for x in data.samples("test") if x["task"] == "mcq")
    image = data.path(s["image"])
    assert cp.language.visual(image, [data.path(r) for r in s["references"]]) is None  # no image tokens
    assert cp.answer_choice(image, [data.path(r) for r in s["references"]], "Is there any defect?",
                            {"A": "Yes.", "B": "No."}) in "AB"


def test_type_head_is_fitted_on_the_labelled_defects(setup):
    from adcopilot.language.model import NanoCopilotConfig, Projectors
    from adcopilot.language.visual import CELL_STATS
    from adcopilot.train.stage_language import fit_type_head

    _, _, _, data = setup
    labels = data.defect_labels()
    proj = Projectors(NanoCopilotConfig(hidden=32, compare_width=24, num_compare=4, defect_labels=labels))
    index = {lab: i for i, lab in enumerate(labels)}
    defects = [s for s in data.samples("train") if s["task"] == "caption" and s.get("defect") and s.get("boxes")]

    def accuracy() -> float:
        hits = 0
        for s in defects:
            cells = data.visual(s).cells
            hits += int(proj.type_head(cells[int(cells[:, 0].argmax()), CELL_STATS:]).argmax()) == index[s["boxes"][0]["label"]]
        return hits / len(defects)

    before = accuracy()
    loss = fit_type_head(proj, data, steps=100)
    assert loss == loss and accuracy() == 1.0 > before  # a handful of defects: learned exactly


def test_evidence_threshold_best_separates_the_training_queries(setup):
    """The detector line's threshold is the training-image score with the best balanced accuracy."""
    import numpy as np

    from adcopilot.train.stage_language import fit_evidence_threshold

    _, _, _, data = setup
    caps = [s for s in data.samples("train") if s["task"] == "caption"]
    x = np.array([data.visual(s).score for s in caps])
    y = np.array([s.get("defect") is not None for s in caps])
    assert y.any() and not y.all()

    def balanced(t: float) -> float:
        return ((x >= t)[y].mean() + (x < t)[~y].mean()) / 2

    t = fit_evidence_threshold(data)
    assert t in set(x.tolist())
    assert balanced(t) >= max(balanced(float(c)) for c in np.linspace(x.min(), x.max() + 1e-6, 50)) - 1e-9
