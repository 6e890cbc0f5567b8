"""An elongated query (a strip of cells, a line-scan frame) is squeezed into the model's square: every
result says so in its notes (so a service's client sees it), on both inspection paths, and the log once."""

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
    r = nano_copilot.inspect(square, [square])
    assert not caplog.records and r.notes == [] and "notes" not in r.to_dict()  # a square query: nothing to say
    staged = nano_copilot.inspect_batch([(strip, [square])])[0]  # the service's staged path
    whole = nano_copilot.inspect(strip, [square])
    for res in (staged, whole):
        assert len(res.notes) == 1 and res.to_dict()["notes"] == res.notes
        assert res.notes[0].startswith("the image is 384 x 64 (6.0:1): the model sees it squeezed to 64 x 64")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # logged once per copilot, not once per image of a lot
    assert warnings[0] == f"{strip}: {whole.notes[0]}"

