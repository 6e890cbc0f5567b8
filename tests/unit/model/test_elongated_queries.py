"""An elongated query (a strip of cells, a line-scan frame) is squeezed into the model's square: the
copilot says so once, on both inspection paths, naming the file and its shape."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image


def test_an_elongated_query_is_named_in_one_warning(nano_copilot, caplog, tmp_path):
    rng = np.random.default_rng(0)
    strip = tmp_path / "strip.png"
    Image.fromarray((rng.random((64, 384, 3)) * 255).astype(np.uint8)).save(strip)
    square = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    caplog.set_level(logging.WARNING, logger="adcopilot.api")
    nano_copilot._told_elongated = False
    nano_copilot.inspect(square, [square])
    assert not caplog.records  # a square query: nothing to say
    nano_copilot.inspect_batch([(strip, [square])])  # the service's staged path
    nano_copilot.inspect(strip, [square])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per copilot, not once per image of a lot
    assert warnings[0].startswith(f"{strip} is 384 x 64 (6.0:1): the model sees it squeezed")
