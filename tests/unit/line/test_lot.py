"""``batch --mutual``: a lot scored against itself (and its references), the lot's own threshold, the
image check against the lot, resume of the scoring, and the settings it refuses."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from adcopilot.errors import AdcopilotError
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.batch import BatchConfig, read_records
from adcopilot.line.lot import (
    LOT_PADIM_WEIGHT,
    LOT_REFS_FILE,
    LOT_REFS_WEIGHT,
    RESCORED_FILE,
    SCORES_FILE,
    MutualConfig,
    encode_lot,
    lot_bank,
    lot_tower,
    run_mutual_batch,
    score_against_lot,
    score_lot,
)
from adcopilot.line.report import scored_against_lot
from adcopilot.line.sources import collect
from adcopilot.model.detector import to_batch
from adcopilot.model.lot_padim import AGREEMENT_FLOOR, lot_padim_scores, rank_agreement
from adcopilot.model.mutual import (
    MAD_K,
    MIN_SPREAD,
    MutualRecipe,
    image_scores,
    lot_features,
    lot_threshold,
    lot_z,
    mutual_patch_scores,
    pool_of,
)
from adcopilot.model.padim import stretch_grey

from .conftest import texture


def _cfg(**kw):
    return BatchConfig(progress=False, **kw)


@pytest.fixture
def mixed_lot(tmp_path):
    """lot/good: 8 shifted copies of one texture; lot/defect: a white square and a black disc (each
    unlike anything else in the lot); a broken file; refs/: 2 normals."""
    good, bad, refs = tmp_path / "lot" / "good", tmp_path / "lot" / "defect", tmp_path / "refs"
    for d in (good, bad, refs):
        d.mkdir(parents=True)
    base = texture(0)
    for i in range(8):
        Image.fromarray(np.roll(base, (i % 3, i // 3), axis=(0, 1))).save(good / f"g{i}.png")
    square = base.copy()
    square[20:44, 40:64] = 255
    disc = base.copy()
    yy, xx = np.mgrid[:96, :96]
    disc[(yy - 70) ** 2 + (xx - 25) ** 2 < 12**2] = 0
    Image.fromarray(square).save(bad / "square.png")
    Image.fromarray(disc).save(bad / "disc.png")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    for i in range(2):
        Image.fromarray(np.roll(base, (i, 0), axis=(0, 1))).save(refs / f"r{i}.png")
    return {"lot": tmp_path / "lot", "refs": refs, "out": tmp_path / "out"}


def test_lot_threshold_is_median_plus_k_robust_deviations():
    normal = [0.10, 0.11, 0.12, 0.13, 0.14]
    # Two huge outliers move neither the median nor the MAD.
    assert lot_threshold(normal + [5.0, 9.0], k=3) == pytest.approx(lot_threshold(normal + [0.2, 0.3], k=3))
    x = np.array(normal)
    med, mad = np.median(x), np.median(np.abs(x - np.median(x)))
    assert lot_threshold(normal, k=2) == pytest.approx(med + 2 * 1.4826 * mad)
    # Identical images: the spread's floor keeps the threshold above their common score.
    assert lot_threshold([0.0] * 6) == pytest.approx(MAD_K * MIN_SPREAD) and MAD_K * MIN_SPREAD > 0


def test_mutual_batch_without_references(tiny_copilot, mixed_lot):
    s = run_mutual_batch(tiny_copilot, collect([mixed_lot["lot"]]), None, mixed_lot["out"], _cfg())
    out = mixed_lot["out"]
    assert (s.total, s.done_before, s.processed) == (11, 0, 10)
    assert [f for f, _ in s.skipped] == ["defect/broken.png"]
    recs = {r["file"]: r for r in read_records(out / "results.jsonl")}
    scores = [r["mutual_score"] for r in recs.values()]
    thr = lot_threshold(scores)
    assert all(r["threshold"] == pytest.approx(thr, abs=1e-5) == r["mutual_threshold"] for r in recs.values())
    assert {recs[k]["outcome"] for k in recs if k.startswith("good/")} == {"pass"}
    for name, (cx, cy) in (("defect/square.png", (52, 32)), ("defect/disc.png", (25, 70))):
        r = recs[name]
        assert r["outcome"] == "detected" and r["image_check"] is None and r["references"] == []
        assert any(b[0] <= cx < b[2] and b[1] <= cy < b[3] for b in (x["bbox_2d"] for x in r["boxes"])), r["boxes"]
        assert (out / r["annotated"]).exists()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 10
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truth"]["confusion"] == {"tn": 8, "fp": 0, "tp": 2, "fn": 0}
    assert summary["run"]["mutual"]["interval"] == list(MutualRecipe().interval)
    # Scores on the lot's scale: calibrate must not make the model's threshold of them.
    assert scored_against_lot(list(recs.values()))


def _interrupt(path):
    """Make a saved scoring look interrupted: rows 0-4 done (marked 7.0, a value no scoring gives), the rest to do."""
    saved = load_file(str(path))
    saved["patch_scores"][:5] = 7.0
    saved["done"][5:] = 0
    save_file(saved, str(path))


def test_scores_match_the_model_and_resume_where_they_stopped(tiny_copilot, mixed_lot, tmp_path):
    items = collect([mixed_lot["lot"]])
    tower = lot_tower(tiny_copilot)
    lot = encode_lot(items, tower, tiny_copilot.detector.image_size)
    assert len(lot.items) == 10 and [k for k, _ in lot.skipped] == ["defect/broken.png"]
    cfg = MutualConfig(recipe=MutualRecipe(pool_k=None))  # one pass
    full = score_lot(lot, tmp_path, cfg)
    assert torch.allclose(full, mutual_patch_scores(lot.views, cfg.recipe.interval))
    # An interrupted run: half the rows saved (marked with a value no scoring gives), the rest to do.
    _interrupt(tmp_path / SCORES_FILE)
    resumed = score_lot(lot, tmp_path, cfg)
    assert bool((resumed[:5] == 7.0).all()) and torch.allclose(resumed[5:], full[5:])
    # Another setting is another lot's scores: all scored again.
    other = score_lot(lot, tmp_path, MutualConfig(recipe=MutualRecipe(interval=(0.0, 0.5), pool_k=None)))
    assert not bool((other == 7.0).any())


def test_the_second_pass_scores_against_the_pool_and_resumes(tiny_copilot, mixed_lot, tmp_path):
    lot = encode_lot(collect([mixed_lot["lot"]]), lot_tower(tiny_copilot), tiny_copilot.detector.image_size)
    cfg = MutualConfig()
    recipe = cfg.recipe
    assert recipe.pool_k == 2.0
    two = score_lot(lot, tmp_path, cfg, restart=True)
    first = mutual_patch_scores(lot.views, recipe.interval)
    pool = pool_of(image_scores(first, recipe.top_k), recipe.pool_k)
    # The first pass calls the two defects anomalous: the other 8 images are the pool.
    names = [it.key for it in lot.items]
    assert sorted(names[i] for i in set(range(10)) - set(pool)) == ["defect/disc.png", "defect/square.png"]
    assert torch.allclose(two, mutual_patch_scores(lot.views, recipe.pool_interval, pool=pool))
    # An interrupted second pass resumes; the first pass is not scored again.
    _interrupt(tmp_path / RESCORED_FILE)
    resumed = score_lot(lot, tmp_path, cfg)
    assert bool((resumed[:5] == 7.0).all()) and torch.allclose(resumed[5:], two[5:])
    # First-pass values that change the pool make the second pass another lot's: scored again.
    saved = load_file(str(tmp_path / SCORES_FILE))
    saved["patch_scores"][names.index("good/g0.png")] = 9.0
    save_file(saved, str(tmp_path / SCORES_FILE))
    again = score_lot(lot, tmp_path, cfg)
    assert not bool((again == 7.0).any())


def test_resume_writes_only_the_missing_records(tiny_copilot, mixed_lot):
    items = collect([mixed_lot["lot"]])
    run_mutual_batch(tiny_copilot, items, None, mixed_lot["out"], _cfg(save_images=False))
    res = mixed_lot["out"] / "results.jsonl"
    first = {r["file"]: r for r in read_records(res)}
    res.write_text("\n".join(res.read_text().splitlines()[:-4]) + "\n")
    s = run_mutual_batch(tiny_copilot, items, None, mixed_lot["out"], _cfg(save_images=False))
    assert (s.done_before, s.processed) == (6, 4)
    again = {r["file"]: r for r in read_records(res)}
    assert again.keys() == first.keys()
    assert all(again[k]["score"] == first[k]["score"] for k in first)
    with pytest.raises(AdcopilotError, match="holds results of a different run"):
        run_mutual_batch(tiny_copilot, items, None, mixed_lot["out"], _cfg(save_images=False),
                         MutualConfig(mad_k=2.0))


def test_a_blank_frame_in_the_lot_fails_the_image_check(tiny_copilot, mixed_lot):
    Image.new("RGB", (96, 96), (128, 128, 128)).save(mixed_lot["lot"] / "good" / "blank.png")
    run_mutual_batch(tiny_copilot, collect([mixed_lot["lot"]]), None, mixed_lot["out"], _cfg(save_images=False))
    recs = {r["file"]: r for r in read_records(mixed_lot["out"] / "results.jsonl")}
    blank = recs["good/blank.png"]
    assert blank["verdict"] == "anomalous" and blank["image_check"] == "blank image" and blank["boxes"] == []
    assert all(recs[k]["image_check"] is None for k in recs if k != "good/blank.png")


def test_with_references_the_scores_join_on_their_own_thresholds(tiny_copilot, mixed_lot):
    run_mutual_batch(tiny_copilot, collect([mixed_lot["lot"]]), [mixed_lot["refs"]], mixed_lot["out"],
                     _cfg(save_images=False))
    recs = {r["file"]: r for r in read_records(mixed_lot["out"] / "results.jsonl")}
    for r in recs.values():
        joined = max(r["mutual_score"] / r["mutual_threshold"], r["reference_score"] / r["reference_threshold"])
        assert r["threshold"] == 1.0 and r["score"] == pytest.approx(joined, rel=1e-4)
        assert len(r["references"]) == 1 and r["references"][0].startswith(str(mixed_lot["refs"]))
        assert r["verdict"] == ("anomalous" if r["score"] >= 1.0 else "normal")
    assert recs["defect/square.png"]["verdict"] == recs["defect/disc.png"]["verdict"] == "anomalous"


def test_lot_z_puts_scores_of_any_scale_on_one():
    x = np.array([0.10, 0.11, 0.12, 0.13, 0.14, 3.0])
    z = lot_z(x)
    med, mad = np.median(x), np.median(np.abs(x - np.median(x)))
    assert z == pytest.approx((x - med) / (1.4826 * mad))
    assert lot_z(100 * x + 7) == pytest.approx(z)  # the scale and offset of a score do not matter
    assert lot_z([0.5] * 4) == pytest.approx([0.0] * 4)  # identical scores: the spread's floor, no division by 0


def test_lot_references_join_the_model_on_the_lot_scale(tiny_copilot, mixed_lot):
    """With --lot-refs 2 and no references: each image is inspected against 2 of the lot's own images the
    mutual score calls normal (never itself, never a defect), and the verdict is the sum of the two scores'
    robust z-scores (the model's at LOT_REFS_WEIGHT) against that sum's lot threshold."""
    s = run_mutual_batch(tiny_copilot, collect([mixed_lot["lot"]]), None, mixed_lot["out"], _cfg(save_images=False),
                         MutualConfig(lot_refs=2))
    assert s.processed == 10 and (mixed_lot["out"] / LOT_REFS_FILE).exists()
    recs = {r["file"]: r for r in read_records(mixed_lot["out"] / "results.jsonl")}
    names = list(recs)
    mutual = np.array([recs[k]["mutual_score"] for k in names])
    model = np.array([recs[k]["reference_score"] for k in names])
    joined = lot_z(mutual) + LOT_REFS_WEIGHT * lot_z(model)
    thr = lot_threshold(joined)
    for k, z in zip(names, joined, strict=True):
        r = recs[k]
        refs = [str(p) for p in r["references"]]
        assert len(refs) == 2 and all("/lot/good/" in p for p in refs) and not any(p.endswith(k) for p in refs), refs
        assert r["score"] == pytest.approx(z, abs=1e-3) and r["threshold"] == pytest.approx(thr, abs=1e-3)
        assert r["verdict"] == ("anomalous" if r["score"] >= r["threshold"] else "normal")
        assert r["mutual_threshold"] == pytest.approx(lot_threshold(mutual), abs=1e-5)
    # The model's score is the one inspect gives against those references.
    square = recs["defect/square.png"]
    direct = tiny_copilot.analyze(mixed_lot["lot"] / "defect" / "square.png", square["references"]).score
    assert square["reference_score"] == pytest.approx(direct, abs=1e-5)
    assert recs["defect/square.png"]["verdict"] == recs["defect/disc.png"]["verdict"] == "anomalous"
    assert {recs[k]["verdict"] for k in names if k.startswith("good/")} == {"normal"}


def test_an_aligned_lot_joins_a_padim_fitted_on_itself(tiny_copilot, mixed_lot):
    """With --aligned: PaDiM fitted on the lot's own stretched images (its raw stage outputs, kept as the features
    are made) scores every image, and the verdict is the mutual score's robust z-score plus PaDiM's at
    LOT_PADIM_WEIGHT against that sum's lot threshold; the maps and the mutual threshold stay the mutual score's."""
    items = collect([mixed_lot["lot"]])
    tower, size = lot_tower(tiny_copilot), tiny_copilot.detector.image_size
    lot = encode_lot(items, tower, size, keep_scales=True)
    arrays = [stretch_grey(to_float_array(load_image(it.path), size)) for it in lot.items]
    by_hand = tower.patch_features(to_batch(arrays))
    for k, v in by_hand.items():  # the stage outputs of the stretched images, kept in float16
        torch.testing.assert_close(lot.scales[k].float(), v, atol=2e-2, rtol=2e-3)
    assert encode_lot(items, tower, size).scales is None  # kept only when asked for
    padim = lot_padim_scores(lot.scales, size)
    s = run_mutual_batch(tiny_copilot, items, None, mixed_lot["out"], _cfg(save_images=False), MutualConfig(aligned=True))
    assert s.processed == 10
    recs = {r["file"]: r for r in read_records(mixed_lot["out"] / "results.jsonl")}
    names = [it.key for it in lot.items]
    mutual = np.array([recs[k]["mutual_score"] for k in names])
    assert [recs[k]["lot_padim_score"] for k in names] == pytest.approx(padim.tolist(), abs=1e-5)
    joined = lot_z(mutual) + LOT_PADIM_WEIGHT * lot_z(padim)
    thr = lot_threshold(joined)
    for k, z in zip(names, joined, strict=True):
        r = recs[k]
        assert r["score"] == pytest.approx(z, abs=1e-3) and r["threshold"] == pytest.approx(thr, abs=1e-3)
        assert r["verdict"] == ("anomalous" if r["score"] >= r["threshold"] else "normal")
        assert r["mutual_threshold"] == pytest.approx(lot_threshold(mutual), abs=1e-5) and r["references"] == []
    assert recs["defect/square.png"]["verdict"] == recs["defect/disc.png"]["verdict"] == "anomalous"
    assert {recs[k]["verdict"] for k in names if k.startswith("good/")} == {"normal"}
    run = json.loads((mixed_lot["out"] / "summary.json").read_text())["run"]["mutual"]
    assert run["aligned"] is True and run["padim_neighbourhood"] == 3
    # Interrupted during the verdicts: the resumed run fits the same PaDiM and writes the same records.
    res = mixed_lot["out"] / "results.jsonl"
    res.write_text("\n".join(res.read_text().splitlines()[:-4]) + "\n")
    s = run_mutual_batch(tiny_copilot, items, None, mixed_lot["out"], _cfg(save_images=False), MutualConfig(aligned=True))
    assert (s.done_before, s.processed) == (6, 4)
    again = {r["file"]: r for r in read_records(res)}
    assert {k: (r["score"], r["threshold"], r["lot_padim_score"]) for k, r in again.items()} == {
        k: (r["score"], r["threshold"], r["lot_padim_score"]) for k, r in recs.items()}
    with pytest.raises(AdcopilotError, match="holds results of a different run"):  # not resumed without it
        run_mutual_batch(tiny_copilot, items, None, mixed_lot["out"], _cfg(save_images=False))


@pytest.mark.parametrize(("shift", "noted"), [((1, 1), False), ((17, 29), True)])
def test_a_lot_whose_padim_disagrees_with_the_mutual_score_is_named(tiny_copilot, tmp_path, shift, noted):
    """24 good images of one texture and 4 with a dark or bright square, each moved by a pixel or two (aligned parts)
    or by large steps (a surface photographed at other places: every position holds something else in every image).
    The lot PaDiM of the moved ones ranks the lot unlike the mutual score, and the run says so; of the aligned ones it
    does not. (A lot with no defect at all gives the two scores nothing to agree on: both rank noise.)"""
    lot = tmp_path / "lot"
    lot.mkdir()
    base = texture(2)

    def moved(i: int) -> np.ndarray:
        return np.roll(base, ((i % 3) * shift[0] % 96, (i // 3) * shift[1] % 96), axis=(0, 1)).copy()

    for i in range(24):
        Image.fromarray(moved(i)).save(lot / f"g{i}.png")
    for j in range(4):
        img = moved(j)
        img[10 + 20 * j : 26 + 20 * j, 60 - 12 * j : 76 - 12 * j] = 255 if j % 2 else 0
        Image.fromarray(img).save(lot / f"d{j}.png")
    s = run_mutual_batch(tiny_copilot, collect([lot]), None, tmp_path / "out", _cfg(save_images=False),
                         MutualConfig(aligned=True))
    assert s.processed == 28
    assert bool(s.lot_notes) is noted, s.lot_notes
    if noted:
        found = re.fullmatch(r"--aligned: the lot's PaDiM ranks the images unlike the mutual score \(rank correlation "
                             r"(-?[0-9.]+)\); if the parts are not in the same place in every image, run without --aligned",
                             s.lot_notes[0])
        assert found and float(found[1]) < AGREEMENT_FLOOR, s.lot_notes


def test_rank_agreement_is_spearmans_correlation():
    a = np.array([0.1, 0.5, 0.3, 0.9, 0.7])
    assert rank_agreement(a, a * 10 + 3) == pytest.approx(1.0)
    assert rank_agreement(a, -a) == pytest.approx(-1.0)
    assert rank_agreement(a, np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    assert rank_agreement(a, np.full(5, 2.0)) == 0.0 and rank_agreement(a[:1], a[:1]) == 0.0


def test_an_aligned_lot_with_lot_references_joins_all_three(tiny_copilot, mixed_lot):
    run_mutual_batch(tiny_copilot, collect([mixed_lot["lot"]]), None, mixed_lot["out"], _cfg(save_images=False),
                     MutualConfig(lot_refs=2, aligned=True))
    recs = list(read_records(mixed_lot["out"] / "results.jsonl"))
    mutual, model, padim = (np.array([r[k] for r in recs]) for k in ("mutual_score", "reference_score",
                                                                      "lot_padim_score"))
    joined = lot_z(mutual) + LOT_REFS_WEIGHT * lot_z(model) + LOT_PADIM_WEIGHT * lot_z(padim)
    assert [r["score"] for r in recs] == pytest.approx(joined.tolist(), abs=1e-3)
    assert [r["threshold"] for r in recs] == pytest.approx([lot_threshold(joined)] * len(recs), abs=1e-3)


def test_lot_reference_scores_resume_where_they_stopped(tiny_copilot, mixed_lot, tmp_path):
    lot = encode_lot(collect([mixed_lot["lot"]]), lot_tower(tiny_copilot), tiny_copilot.detector.image_size)
    scores = image_scores(score_lot(lot, tmp_path, MutualConfig())).tolist()
    bank = lot_bank(tiny_copilot, lot, scores, MutualRecipe())
    assert sorted(p.parent.name for p in bank.paths) == ["good"] * 8  # the pool: the defects left out
    full = score_against_lot(tiny_copilot, lot, bank, 2, tmp_path)
    assert full.shape == (10,) and np.isfinite(full).all()
    _interrupt(tmp_path / LOT_REFS_FILE)
    resumed = score_against_lot(tiny_copilot, lot, bank, 2, tmp_path)
    assert (resumed[:5] == 7.0).all() and resumed[5:] == pytest.approx(full[5:])
    # Another count of references is another scoring.
    assert not (score_against_lot(tiny_copilot, lot, bank, 1, tmp_path) == 7.0).any()
    # An image that fails the image check is no one's reference, and a bank of fewer than two is refused.
    checks = [None if it.key != "good/g0.png" else "blank image" for it in lot.items]
    assert "g0.png" not in {p.name for p in lot_bank(tiny_copilot, lot, scores, MutualRecipe(), checks).paths}
    with pytest.raises(AdcopilotError, match="only 1 of the lot's images look normal and pass the image check"):
        lot_bank(tiny_copilot, lot, scores, MutualRecipe(), ["blank image"] * 9 + [None])


def test_refused_settings(tiny_copilot, mixed_lot):
    items = collect([mixed_lot["lot"]])
    with pytest.raises(AdcopilotError, match="cannot be split with --shard"):
        run_mutual_batch(tiny_copilot, items, None, mixed_lot["out"], _cfg(shard=(1, 2)))
    with pytest.raises(AdcopilotError, match="two readable images or more"):
        run_mutual_batch(tiny_copilot, items[:1], None, mixed_lot["out"], _cfg())
    with pytest.raises(AdcopilotError, match="mutual scoring: window 4 must be an odd number"):
        run_mutual_batch(tiny_copilot, items, None, mixed_lot["out"], _cfg(), MutualConfig(recipe=MutualRecipe(windows=(4,))))
    with pytest.raises(AdcopilotError, match="lot references: a positive count without --refs"):
        run_mutual_batch(tiny_copilot, items, [mixed_lot["refs"]], mixed_lot["out"], _cfg(), MutualConfig(lot_refs=2))
    with pytest.raises(AdcopilotError, match="got -1"):
        run_mutual_batch(tiny_copilot, items, None, mixed_lot["out"], _cfg(), MutualConfig(lot_refs=-1))
    with pytest.raises(AdcopilotError, match="--aligned fits PaDiM on the lot: it needs three readable images or "
                                              "more, got 2"):
        two = [it for it in items if "broken" not in it.key][:2]
        run_mutual_batch(tiny_copilot, two, None, mixed_lot["out"] / "two", _cfg(), MutualConfig(aligned=True))
    with pytest.raises(AdcopilotError, match="--aligned fits PaDiM on the lot itself, without --refs"):
        run_mutual_batch(tiny_copilot, items, [mixed_lot["refs"]], mixed_lot["out"], _cfg(), MutualConfig(aligned=True))


def test_the_lots_features_read_stretched_grey_levels_and_the_image_check_the_images_as_taken(tiny_copilot, mixed_lot):
    """The recipe's ``stretch`` (the default): each image's patch features are those of its grey levels stretched,
    so a good part under less light is not a difference; the image check still reads the image as taken, and a
    saved score of the other setting is not resumed."""
    good = mixed_lot["lot"] / "good"
    dark = np.asarray(Image.open(good / "g0.png")).astype(np.float32) * 0.55
    Image.fromarray(np.rint(dark).astype(np.uint8)).save(good / "g8_dark.png")
    items = collect([mixed_lot["lot"]])
    tower, size = lot_tower(tiny_copilot), tiny_copilot.detector.image_size
    stretched = encode_lot(items, tower, size)
    plain = encode_lot(items, tower, size, MutualRecipe(stretch=False))
    keys = [i.key for i in stretched.items]
    i = keys.index("good/g8_dark.png")
    arrays = [to_float_array(load_image(it.path), size) for it in stretched.items]
    by_hand = lot_features(tower, to_batch([stretch_grey(a) for a in arrays]), MutualRecipe())
    torch.testing.assert_close(stretched.views.views[0], by_hand.views[0])
    assert [p.mean for p in stretched.profiles] == [p.mean for p in plain.profiles]  # the check: as taken
    # The darker copy of g0 is g0's copy once stretched (left out as such), and a distinct image read as taken.
    g0 = keys.index("good/g0.png")
    def distance(lot) -> float:  # the mean distance of the dark copy's patches to g0's at the same place
        v = lot.views.views[0].float()
        return float((1 - (v[i] * v[g0]).sum(-1)).mean())

    d_stretched, d_plain = distance(stretched), distance(plain)
    assert d_stretched < 0.2 * d_plain
    assert MutualRecipe().key() != MutualRecipe(stretch=False).key()  # saved scores of one are not the other's
