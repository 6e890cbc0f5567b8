"""End to end in headless Chromium: upload a pair through the web page; boxes are drawn on the image.

Chromium is installed by ``make test`` (the ``browser`` target); without it this test is skipped
with the reason. A screenshot of the page after the inspection is written to the test's tmp folder.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adcopilot import Copilot
from adcopilot.geometry import box_iou
from adcopilot.serve.app import create_app
from adcopilot.serve.browser import HeadlessChromium, find_chromium
from adcopilot.serve.local import serve_in_thread

DEFECT = [300, 200, 340, 240]

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="Chromium not found: run `make browser` (apt-get install chromium) to enable"
)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("ADCOPILOT_HOME", str(tmp_path / "home"))
    with serve_in_thread(create_app(Copilot.load()), timeout=60) as url:
        yield url


def _upload_and_inspect(b: HeadlessChromium, server: str, query, reference) -> None:
    """Open the page, choose the query and one reference as a user would, and press Inspect."""
    b.navigate(server + "/")
    b.wait_for("document.getElementById('model').textContent.startsWith('model')")
    b.set_files("#query-file", [query])
    b.set_files("#ref-files", [reference])
    b.wait_for("document.querySelectorAll('#ref-thumbs img').length === 1")
    b.evaluate("document.getElementById('inspect-btn').click()")


def test_upload_a_pair_and_see_boxes(server, tmp_path):
    from skimage import data

    ref = data.brick()
    bad = ref.copy()
    x1, y1, x2, y2 = DEFECT
    bad[y1:y2, x1:x2] = 250
    Image.fromarray(ref).save(tmp_path / "good.png")
    Image.fromarray(bad).save(tmp_path / "query.png")
    with HeadlessChromium(width=1280, height=900, timeout=60) as b:
        _upload_and_inspect(b, server, tmp_path / "query.png", tmp_path / "good.png")
        n = b.wait_for("document.querySelectorAll('#boxes .box').length", timeout=120)
        assert n >= 1
        assert b.evaluate("document.getElementById('verdict').textContent") == "ANOMALOUS"
        first = b.evaluate("JSON.parse(document.querySelector('#boxes .box').dataset.bbox)")
        assert box_iou(first, DEFECT) > 0.3
        # The box element sits over the defect on screen, not just in the DOM.
        rect = b.evaluate("""(() => { const c = document.getElementById('view').getBoundingClientRect(),
            r = document.querySelector('#boxes .box').getBoundingClientRect();
            return [(r.left - c.left) / c.width, (r.top - c.top) / c.height, (r.right - c.left) / c.width,
                    (r.bottom - c.top) / c.height]; })()""")
        assert box_iou([v * 512 for v in rect], first) > 0.8
        b.screenshot(tmp_path / "page.png")
        # Heat-map off (its hot end is red too): the red left on the image is the boxes.
        b.evaluate("document.getElementById('show-heat').click()")
        shot = b.screenshot(tmp_path / "boxes.png")
        canvas = b.evaluate("(() => { const r = document.getElementById('view').getBoundingClientRect();"
                            " return [r.left, r.top, r.width, r.height]; })()")
    # Red box pixels on the drawn image, around the defect and not elsewhere.
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    left, top, w, h = canvas
    s = w / 512
    red = (img[..., 0] > 180) & (img[..., 1] < 90) & (img[..., 2] < 90)
    # Around the box, with its label tag (red, about 20 px above the box, wider than a small box).
    bx1, by1, bx2, by2 = (int(left + first[0] * s) - 3, int(top + first[1] * s) - 26,
                          int(left + first[2] * s) + 80, int(top + first[3] * s) + 3)
    near = red[by1:by2, bx1:bx2].sum()
    assert near > 40, near
    canvas_red = red[int(top):int(top + h), int(left):int(left + w)].sum()
    assert canvas_red - near < 0.1 * near  # and nowhere else on the image


def test_an_elongated_image_shows_the_services_note(server, tmp_path):
    """A row of parts (3:1) is squeezed into the model's square: the page shows the service's note with the verdict."""
    from skimage import data

    ref = np.concatenate([data.brick()] * 3, axis=1)  # 1536 x 512
    Image.fromarray(ref).save(tmp_path / "good.png")
    Image.fromarray(ref).save(tmp_path / "query.png")
    with HeadlessChromium(width=1280, height=900, timeout=60) as b:
        _upload_and_inspect(b, server, tmp_path / "query.png", tmp_path / "good.png")
        text = b.wait_for("(() => { const d = document.getElementById('description').textContent;"
                          " return d.includes('Note:') ? d : ''; })()", timeout=120)
    assert "Note: the image is 1536 x 512 (3.0:1): the model sees it squeezed to 256 x 256" in text
