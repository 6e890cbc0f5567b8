"""Nearest-reference selection by the global feature; unreadable references are skipped and listed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.imaging import to_float_array
from adcopilot.line.references import GLOBAL_SIZE, ReferenceBank, global_features

from .conftest import texture


def _arr(img: np.ndarray) -> np.ndarray:
    return to_float_array(Image.fromarray(img), GLOBAL_SIZE)


@pytest.fixture
def bank_dir(tmp_path):
    d = tmp_path / "refs"
    (d / "noise").mkdir(parents=True)
    (d / "stripes").mkdir()
    for i in range(2):
        Image.fromarray(texture(10 + i)).save(d / "noise" / f"n{i}.png")
        Image.fromarray(texture(20 + i, kind="stripes")).save(d / "stripes" / f"s{i}.png")
    (d / "stripes" / "broken.png").write_bytes(b"GIF89a broken")
    return d


def test_global_features_are_unit_vectors(tiny_copilot):
    f = global_features(tiny_copilot.detector.tower, [_arr(texture(1)), _arr(texture(2, kind="stripes"))])
    assert f.shape == (2, 112)
    assert np.allclose(f.norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_nearest_picks_the_same_variant(tiny_copilot, bank_dir):
    bank = ReferenceBank.from_paths([bank_dir], tiny_copilot.detector.tower)
    assert len(bank) == 4 and bank.features.shape == (4, 112)
    assert [s for s, _ in bank.skipped] == [str((bank_dir / "stripes" / "broken.png").absolute())]
    q_stripes = global_features(tiny_copilot.detector.tower, [_arr(texture(99, kind="stripes"))])[0]
    q_noise = global_features(tiny_copilot.detector.tower, [_arr(texture(98))])[0]
    best = bank.nearest(q_stripes, k=2)
    assert {p.parent.name for p, _ in best} == {"stripes"}
    assert best[0][1] >= best[1][1]  # best first
    assert bank.nearest(q_noise, k=1)[0][0].parent.name == "noise"


def test_the_query_itself_is_never_its_own_reference(tiny_copilot, bank_dir):
    bank = ReferenceBank.from_paths([bank_dir], tiny_copilot.detector.tower)
    me = bank.paths[0]
    own = bank.features[0]
    chosen = bank.nearest(own, k=3, exclude=me)
    assert me not in [p for p, _ in chosen] and len(chosen) == 3


def test_without_features_the_first_k_are_used(tiny_copilot, bank_dir):
    bank = ReferenceBank.from_paths([bank_dir], tiny_copilot.detector.tower, need_features=False)
    assert [p for p, _ in bank.nearest(None, k=2)] == bank.paths[:2]


def test_reference_errors(tiny_copilot, tmp_path):
    tower = tiny_copilot.detector.tower
    with pytest.raises(AdcopilotError, match="no such reference folder or image"):
        ReferenceBank.from_paths([tmp_path / "nope"], tower)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdcopilotError, match="empty: no images found"):
        ReferenceBank.from_paths([tmp_path / "empty"], tower)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    with pytest.raises(AdcopilotError, match=r"none of the 1 reference images can be read \(.*x.png: empty file\)"):
        ReferenceBank.from_paths([tmp_path / "bad"], tower)
    only = tmp_path / "one.png"
    Image.fromarray(texture(1)).save(only)
    bank = ReferenceBank.from_paths([only], tower)
    with pytest.raises(AdcopilotError, match="the only reference is the query itself"):
        bank.nearest(None, 1, exclude=only.absolute())


def test_a_copy_of_the_query_in_the_lots_own_bank_is_skipped_unless_nothing_else_is_left(tiny_copilot, bank_dir):
    shutil.copyfile(bank_dir / "noise" / "n0.png", bank_dir / "noise" / "n0-again.png")  # the same picture twice
    bank = ReferenceBank.from_paths([bank_dir], tiny_copilot.detector.tower)
    me = next(p for p in bank.paths if p.name == "n0.png")
    own = bank.features[bank.paths.index(me)]
    assert bank.nearest(own, k=1, exclude=me)[0][0].name == "n0-again.png"  # user references: as they are
    chosen = [p.name for p, _ in bank.nearest(own, k=4, exclude=me, skip_copies=True)]
    assert chosen[0] == "n1.png" and "n0-again.png" not in chosen and len(chosen) == 3
    two = ReferenceBank.from_paths([bank_dir / "noise" / "n0.png", bank_dir / "noise" / "n0-again.png"],
                                   tiny_copilot.detector.tower)
    assert [p.name for p, _ in two.nearest(own, k=1, exclude=two.paths[0], skip_copies=True)] == ["n0-again.png"]
