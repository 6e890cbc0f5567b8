"""Visual inputs: shapes, determinism, the anomaly map read on the query's 3x3 grid."""

from __future__ import annotations

import numpy as np
import torch

from adcopilot.language.visual import CELL_WIDTH, VisualEncoder, VisualInputs, cell_inputs, pool_grid


def test_shapes_and_determinism(detector, pair_images, visual):
    q, r = pair_images
    assert visual.base.shape == (2, 9, 152) and visual.glob.shape == (2, 1280)
    assert visual.compare.shape == (4, 24) and visual.cells.shape == (9, CELL_WIDTH)
    again = VisualEncoder(detector, registration=False).encode(q, [r])
    for a, b in ((visual.base, again.base), (visual.compare, again.compare), (visual.cells, again.cells)):
        assert torch.allclose(a, b, atol=1e-5)
    two = VisualEncoder(detector).encode(q, [r, r])
    assert two.base.shape == (3, 9, 152) and two.n_refs == 2


def test_cells_follow_the_map_in_the_query_frame():
    prob = np.zeros((64, 64), np.float32)
    prob[2:12, 50:62] = 0.9  # top right
    qf, rf = torch.ones(152, 8, 8), torch.ones(1, 152, 8, 8)
    qf[:, 0:2, 6:8] = 5.0  # the query's features differ where the map is hot
    cells = cell_inputs(prob, prob * 0.5, qf, rf, score=0.7)
    peak, above, score = cells[:, 0], cells[:, 3], cells[:, 4]
    assert int(peak.argmax()) == 2 and float(peak[2]) == np.float32(0.9)
    assert float(above[2]) > 0 and float(above[[0, 1, 3, 4, 5, 6, 7, 8]].sum()) == 0
    assert torch.allclose(score, torch.full((9,), 0.7))
    # Anomaly-weighted features of the hot cell are those of the hot pixels, not the cell's mean.
    feats, diff = cells[2, 5 : 5 + 152], cells[2, 5 + 152 :]
    assert float(feats.mean()) > 4.0 > float(pool_grid(qf[None])[0, 2].mean())
    assert torch.allclose(diff, feats - 1.0, atol=1e-5)
    assert torch.allclose(cells[4, 5:], torch.cat([torch.ones(152), torch.zeros(152)]), atol=1e-5)


def test_round_trip_through_tensors(visual):
    back = VisualInputs.from_tensors(visual.to_tensors("k"), "k")
    assert torch.equal(back.cells, visual.cells) and back.score == visual.score
