"""Runtime settings: compute threads leave cores to the image threads; channels-last changes no result."""

from __future__ import annotations

import numpy as np
import torch

from adcopilot.api import Copilot
from adcopilot.line.runtime import default_threads, prepare_for_inference, set_compute_threads
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.vision import load_vision_tower

from .conftest import texture, with_defect


def test_thread_rule(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1}, raising=False)
    assert default_threads(2) == 1 and default_threads(1) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert default_threads(2) == 14
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert set_compute_threads(3) == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_compute_threads(None) == 3  # the environment's choice is left alone
    finally:
        torch.set_num_threads(before)


def test_channels_last_gives_the_same_inspection():
    torch.manual_seed(1)
    tower = load_vision_tower(pretrained=False)
    cp = Copilot(NearestPatchDetector(tower=tower, image_size=64), registration=False)
    ref, bad = texture(5), with_defect(texture(5))
    a = cp.inspect(bad, [ref])
    prepare_for_inference(cp)
    assert tower._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    b = Copilot(cp.detector, registration=False).inspect(bad, [ref])  # fresh reference cache
    assert np.allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
    assert a.verdict == b.verdict and [x.bbox_2d for x in a.boxes] == [x.bbox_2d for x in b.boxes]
    prepare_for_inference(cp)  # idempotent
