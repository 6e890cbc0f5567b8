"""Reading MMAD-format files: validation, subsets, templates, the benchmark's prompt."""

from __future__ import annotations

import json

import pytest

from adcopilot.errors import AdcopilotError
from adcopilot.eval.mmad import INSTRUCTION, load_mmad, official_prompt, prompt_text, resolve_task, subtask_of


def test_reads_items_in_file_order(small_bench):
    b = load_mmad(small_bench)
    assert b.root == small_bench.parent
    assert [i.order for i in b.items] == list(range(10))
    assert b.datasets == ["DSA", "DSB"]
    first = b.items[0]
    assert first.dataset == "DSA" and first.class_name == "plate" and not first.is_normal
    assert first.mask_path.endswith("000_mask.png")
    assert b.items[3].is_normal and b.items[3].mask_path is None
    assert b.n_questions == 2 * (3 * 3 + 2 * 2)


def test_select_subsets_and_even_limit(small_bench):
    b = load_mmad(small_bench)
    assert {i.dataset for i in b.select(datasets=["DSB"])} == {"DSB"}
    loc = b.select(tasks=["DL"])
    assert len(loc) == 6 and all(q.type == "Defect Localization" for i in loc for q in i.questions)
    picked = b.select(limit=4)
    assert [i.order for i in picked] == [0, 2, 5, 7]  # spread over both datasets, file order kept
    with pytest.raises(AdcopilotError, match="unknown dataset NOPE"):
        b.select(datasets=["NOPE"])
    with pytest.raises(AdcopilotError, match="unknown sub-task"):
        b.select(tasks=["XYZ"])


def test_templates_random_similar_and_k(small_bench):
    b = load_mmad(small_bench)
    item = b.items[0]
    assert [p.name for p in b.references(item, 1, "random")] == ["t0.png"]
    assert [p.name for p in b.references(item, 2, "similar")] == ["t1.png", "t0.png"]
    assert b.references(item, 0) == []
    with pytest.raises(AdcopilotError, match="unknown template mode"):
        b.references(item, 1, "nearest")


def test_official_prompt_wording(small_bench):
    b = load_mmad(small_bench)
    item = b.items[0]
    refs = b.references(item, 1)
    parts = official_prompt(refs, b.query(item), item.questions[0])
    kinds = [k for k, _ in parts]
    assert kinds == ["text", "text", "text", "image", "text", "image", "text", "text"]
    assert parts[0][1] == INSTRUCTION
    assert parts[2][1].startswith("Following is/are 1 image of normal sample")
    assert parts[-1][1] == "Question: Is there any defect in the object? \nA. Yes.\nB. No.\n"
    flat = prompt_text(parts)
    assert flat.count("<image>") == 2 and "Following is the query image: <image>" in flat


def test_task_names():
    assert resolve_task("AD") == "Anomaly Detection"
    assert resolve_task("anomaly discrimination") == "Anomaly Detection"
    assert resolve_task("Object Details") == "Object Analysis"
    assert subtask_of("Object Structure") == "Object Analysis"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "malformed JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"a.png": {"conversation": [{"Question": "q"}]}}), "lacks Answer, Options, type"),
        (json.dumps({"a.png": {"conversation": [{"Question": "q", "Answer": "A", "Options": {}, "type": "t"}]}}),
         "Options must be a non-empty object"),
        (json.dumps({"a.png": {"random_templates": "x.png", "conversation": []}}), "must be a list of paths"),
        ("{}", "no questions"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, content, message):
    p = tmp_path / "mmad.json"
    p.write_text(content)
    with pytest.raises(AdcopilotError, match=message) as exc:
        load_mmad(p)
    assert "mmad.json" in str(exc.value)


def test_missing_file_and_root(tmp_path, small_bench):
    with pytest.raises(AdcopilotError, match="no such MMAD question file"):
        load_mmad(tmp_path / "absent.json")
    with pytest.raises(AdcopilotError, match="image root is not a folder"):
        load_mmad(small_bench, tmp_path / "nowhere")


def test_real_layout_query_from_the_key_masks_as_the_benchmark_joins_them(real_bench):
    b = load_mmad(real_bench)
    root = real_bench.parent
    screw = b.items[0]
    assert screw.key == "DS-MVTec/screw/image/scratch_head/000.png" and screw.image_path == "image/scratch_head/000.png"
    assert not (root / screw.image_path).exists()  # joining image_path to the root finds nothing
    assert b.query(screw) == root / screw.key
    # DS-MVTec: mask_path is relative to the class folder, the download's sibling folder rbg_mask/.
    assert b.mask(screw) == root / "DS-MVTec/screw/rbg_mask/scratch_head/000_rbg_mask.png"
    candle = next(i for i in b.items if i.dataset == "VisA" and not i.is_normal)
    # VisA: found by generate_metadata.py's join, the key's first three components + mask_path.
    assert b.mask(candle) == root / "VisA/candle/test" / candle.mask_path
    assert b.mask(candle).is_file()
    assert [p.relative_to(root).as_posix() for p in b.references(screw, 2)] == [
        "MVTec-AD/screw/train/good/000.png", "MVTec-AD/screw/train/good/001.png"]


def test_missing_query_or_mask_names_every_path_tried(real_bench):
    b = load_mmad(real_bench)
    root = real_bench.parent
    item = b.items[0]
    (root / item.key).unlink()
    with pytest.raises(AdcopilotError) as exc:
        b.query(item)
    msg = str(exc.value)
    assert "\n" not in msg and "no query image found" in msg
    for tried in (root / item.key, root / "DS-MVTec/screw" / item.image_path, root / item.image_path):
        assert str(tried) in msg
    (root / "DS-MVTec/screw/rbg_mask/scratch_head/000_rbg_mask.png").unlink()
    with pytest.raises(AdcopilotError) as exc:
        b.mask(item)
    msg = str(exc.value)
    assert "no mask found" in msg and "\n" not in msg
    for tried in ("DS-MVTec/screw/image/rbg_mask", "DS-MVTec/screw/rbg_mask", f"{root}/rbg_mask"):
        assert tried in msg
    with pytest.raises(AdcopilotError, match="has no mask_path"):
        b.mask(next(i for i in b.items if i.is_normal))


def test_earlier_questions_survive_a_subtask_selection(real_bench):
    b = load_mmad(real_bench)
    (item,) = b.select(tasks=["OC"], limit=1)
    (oc,) = item.questions
    assert [q.type for q in item.earlier(oc)] == ["Anomaly Detection"]
