"""The web page as an inspection station, in headless Chromium through Selenium, with the shipped model:
several queries and a results table, reference / query / overlay side by side, heat-map opacity and
zoom, a threshold slider whose verdict and boxes follow the service's rule, results cleared when
inputs change or a request fails, reference sets with their product, downloads, working indicators,
keyboard and axe-core checks, the phone layout, and chat answers streamed as they are written. Screenshots go to each test's tmp folder.

Needs Chromium and chromedriver (Debian: chromium, chromium-driver) and the dev extra (selenium,
axe-selenium-python); without them these tests are skipped with the reason.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from adcopilot import Copilot, assets
from adcopilot.api import threshold_steps
from adcopilot.geometry import box_iou
from adcopilot.model.boxes import BoxRules, boxes_from_map
from adcopilot.serve.app import create_app
from adcopilot.serve.browser import find_chromium
from adcopilot.serve.grid import anomaly_grid
from adcopilot.serve.local import serve_in_thread

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) is not installed")
axe_selenium_python = pytest.importorskip("axe_selenium_python", reason="axe-selenium-python (dev extra) is not installed")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402  (after the skip)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

DEFECT = [300, 200, 340, 240]
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    find_chromium() is None or CHROMEDRIVER is None,
    reason="Chromium or chromedriver not found: apt-get install chromium chromium-driver to enable",
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from skimage import data

    d = tmp_path_factory.mktemp("images")
    ref = data.brick()
    bad = ref.copy()
    x1, y1, x2, y2 = DEFECT
    bad[y1:y2, x1:x2] = 250
    paths = {"ref": d / "good.png", "bad": d / "query.png", "clean": d / "clean.png", "broken": d / "broken.png"}
    Image.fromarray(ref).save(paths["ref"])
    Image.fromarray(bad).save(paths["bad"])
    Image.fromarray(ref).save(paths["clean"])
    paths["broken"].write_bytes(b"this is not an image")
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A home without stored calibrations, but with the fetched assets (the language model) and models.
    real, home = assets.home(), tmp_path_factory.mktemp("home")
    for sub in ("assets", "models", "wheels"):
        if (real / sub).exists():
            (home / sub).symlink_to(real / sub)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADCOPILOT_HOME", str(home))
        with serve_in_thread(create_app(Copilot.load()), timeout=60) as url:
            yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads):
    opts = webdriver.ChromeOptions()
    opts.binary_location = find_chromium()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions",
              "--disable-background-networking", "--window-size=1280,900"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=webdriver.ChromeService(CHROMEDRIVER))
    d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield d
    d.quit()


def _open(driver, server: str, width: int = 1280, height: int = 900) -> None:
    driver.set_window_size(width, height)
    driver.get(server + "/")
    driver.get_log("browser")  # what earlier pages logged (a refused bad file, on purpose) is theirs
    _wait(driver, "return document.getElementById('model').textContent.startsWith('model')")


def _wait(driver, script: str, timeout: float = 60):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(script))


def _js(driver, script: str):
    return driver.execute_script(script)


def _choose(driver, input_id: str, paths: list[Path]) -> None:
    el = driver.find_element(By.ID, input_id)
    el.clear()  # chromedriver adds to a multiple input's files; a user's choice replaces them
    el.send_keys("\n".join(str(p) for p in paths))


def _inspect(driver, rows: int) -> None:
    driver.find_element(By.ID, "inspect-btn").click()
    _wait(driver, f"return document.querySelectorAll('#results-body tr').length === {rows} && "
                  "!document.getElementById('inspect-btn').disabled")


def _verdict(driver) -> str:
    return _js(driver, "return document.getElementById('verdict').textContent")


def _page_boxes(driver) -> list[list[int]]:
    return _js(driver, "return Array.from(document.querySelectorAll('#boxes .box'), b => JSON.parse(b.dataset.bbox))")


def _no_page_errors(driver) -> None:
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not severe, severe


def _served(server: str, files: dict[str, Path], **form) -> dict:
    r = httpx.post(server + "/v1/inspect", data={"heatmap": "true", **form}, timeout=60, files=[
        ("query", ("query.png", files["bad"].read_bytes(), "image/png")),
        ("references", ("good.png", files["ref"].read_bytes(), "image/png"))])
    assert r.status_code == 200, r.text
    return r.json()


def _pixels(driver, canvas_id: str, x: int, y: int) -> list[int]:
    return _js(driver, f"return Array.from(document.getElementById('{canvas_id}').getContext('2d')"
                       f".getImageData({x}, {y}, 1, 1).data)")


def test_the_model_line_gives_the_threshold_for_each_number_of_references(driver, server):
    """The shipped model's threshold falls with more references; the page says from which count each holds."""
    _open(driver, server)
    steps = threshold_steps(Copilot.load(), 16)
    counts = sorted(int(k) for k in steps)
    assert counts[:2] == [1, 2] and len(counts) >= 3  # the shipped model's table
    line = _js(driver, "return document.getElementById('model').textContent")
    low, high = steps[str(counts[-1])], steps["2"]
    assert f"threshold {steps['1']:.4f}, {low:.4f}-{high:.4f} with 2+ references" in line, line
    title = _js(driver, "return document.getElementById('model').title")  # each count's, in full
    assert title.startswith(f"2 references: {high:.4f} · ") and title.endswith(f"{counts[-1]} or more: {low:.4f}"), title


def test_several_queries_side_by_side_with_opacity_and_zoom(driver, server, files, tmp_path):
    _open(driver, server)
    _choose(driver, "query-file", [files["bad"], files["clean"]])
    _choose(driver, "ref-files", [files["ref"]])
    # Record the working indicator: the model may answer faster than a poll.
    _js(driver, """window.sawBusy = false; new MutationObserver(() => {
        if (!document.getElementById('busy').hidden) window.sawBusy = true; })
        .observe(document.getElementById('busy'), {attributes: true});""")
    _inspect(driver, 2)
    assert _js(driver, "return window.sawBusy") and _js(driver, "return document.getElementById('busy').hidden")
    table = _js(driver, "return Array.from(document.querySelectorAll('#results-body tr'), r => "
                        "Array.from(r.cells, c => c.textContent))")
    assert [r[1:3] for r in table] == [["query.png", "anomalous"], ["clean.png", "normal"]]
    assert _verdict(driver) == "ANOMALOUS"
    assert box_iou(_page_boxes(driver)[0], DEFECT) > 0.3
    # Reference, query and overlay side by side, each drawn at its image's size.
    rects = _js(driver, "return ['ref-view', 'query-view', 'view'].map(id => { const c = document.getElementById(id),"
                        " r = c.getBoundingClientRect(); return [r.left, r.top, r.width, c.width, c.height]; })")
    assert rects[0][0] < rects[1][0] < rects[2][0] and abs(rects[0][1] - rects[2][1]) < 2
    assert all(r[3:] == [512, 512] and r[2] > 200 for r in rects)
    assert _pixels(driver, "ref-view", 10, 10)[3] == 255 and _pixels(driver, "query-view", 320, 220)[:3] == [250] * 3
    driver.save_screenshot(str(tmp_path / "station.png"))
    _js(driver, "document.getElementById('results').scrollIntoView()")
    driver.save_screenshot(str(tmp_path / "table.png"))
    _js(driver, "window.scrollTo(0, 0)")
    # Opacity: at 0 the overlay is the query itself on the defect; higher, the heat colours it.
    at = (320, 220)

    def set_range(el_id: str, value: float) -> None:
        _js(driver, f"const e = document.getElementById('{el_id}'); e.value = '{value}';"
                    " e.dispatchEvent(new Event('input', {bubbles: true}));")

    set_range("opacity", 0)
    plain = _pixels(driver, "view", *at)
    set_range("opacity", 1)
    heated = _pixels(driver, "view", *at)
    assert plain[:3] == [250, 250, 250] and heated[:3] != plain[:3]
    assert _js(driver, "return document.querySelectorAll('#scale-ticks span').length") == 3  # 0, top, threshold
    # Zoom: the three grow together, and scrolling one pane scrolls the others.
    for _ in range(2):
        driver.find_element(By.ID, "zoom-in").click()
    assert _js(driver, "return document.getElementById('zoom-level').textContent") == "200%"
    _js(driver, "document.querySelector('#overlay-panel .pane').scrollLeft = 120")
    _wait(driver, "return document.querySelector('#ref-panel .pane').scrollLeft > 100", timeout=5)
    widths = _js(driver, "return Array.from(document.querySelectorAll('.stage'), s => s.getBoundingClientRect().width"
                         " / s.parentElement.clientWidth)")
    assert widths == pytest.approx([2, 2, 2], abs=0.05)
    driver.save_screenshot(str(tmp_path / "zoomed.png"))
    driver.find_element(By.ID, "zoom-fit").click()
    # The second query from the table.
    driver.find_element(By.CSS_SELECTOR, "#results-body tr:nth-child(2) button").click()
    assert _verdict(driver) == "NORMAL" and _page_boxes(driver) == []
    _no_page_errors(driver)


def test_threshold_slider_redraws_verdict_and_boxes_by_the_services_rule(driver, server, files, tmp_path):
    _open(driver, server)
    _choose(driver, "query-file", [files["bad"]])
    _choose(driver, "ref-files", [files["ref"]])
    _inspect(driver, 1)
    requests_before = httpx.get(server + "/v1/health").json()["requests"]
    first = _served(server, files)
    g = first["anomaly_grid"]
    grid = np.frombuffer(base64.b64decode(g["values"]), "<f4").reshape(g["height"], g["width"])
    cell, rules, model_thr = g["cell"], BoxRules(**g["rules"]), first["threshold"]
    assert cell == 4  # 512 px: the page works on the coarse grid, not on the map itself

    def expected(t: float) -> tuple[str, list[list[int]]]:  # the service's rules, on the grid
        if first["score"] < t:
            return "NORMAL", []
        found = boxes_from_map(grid, t, rules) or boxes_from_map(grid, 0.5 * float(grid.max()), rules)[:1]
        return "ANOMALOUS", [[x1 * cell, y1 * cell, min(x2 * cell, 512), min(y2 * cell, 512)] for (x1, y1, x2, y2), _ in found]

    compared = set()
    for factor in (0.05, 0.35, 1.5, 3.0):
        t = round(model_thr * factor, 6)
        _js(driver, f"const e = document.getElementById('threshold'); e.value = '{t}';"
                    " e.dispatchEvent(new Event('change', {bubbles: true}));")
        verdict, boxes = _verdict(driver), _page_boxes(driver)
        assert (verdict, boxes) == expected(t), t
        served = _served(server, files, threshold=str(t))
        assert verdict == served["verdict"].upper()
        for b in served["boxes"]:  # every box the service finds lies in one the page draws, give or take a cell
            x1, y1, x2, y2 = b["bbox_2d"]
            assert any(p[0] <= x1 + cell and p[1] <= y1 + cell and p[2] >= x2 - cell and p[3] >= y2 - cell
                       for p in boxes), (t, b, boxes)
        if served["boxes"]:
            assert box_iou(served["boxes"][0]["bbox_2d"], boxes[0]) > 0.5
        compared.add((verdict, len(boxes) > 1))
        if factor == 0.05:
            driver.save_screenshot(str(tmp_path / "low-threshold.png"))
    # Anomalous with boxes at a low threshold, normal with none when high (several boxes at once are
    # compared on random maps in the test of the page's box rule below).
    assert ("NORMAL", False) in compared and any(v == "ANOMALOUS" for v, _ in compared)
    # The page asked the model nothing while the slider moved: only this test's own requests reached it.
    assert httpx.get(server + "/v1/health").json()["requests"] == requests_before + 5
    driver.find_element(By.ID, "threshold-reset").click()
    assert _verdict(driver) == "ANOMALOUS" and len(_page_boxes(driver)) == len(first["boxes"])


def test_the_pages_box_rule_is_the_services_on_many_maps(driver, server):
    """The page's port of boxes_from_map against the real one, on maps with many components, odd sizes,
    even and odd merge squares, specks to drop and more boxes than are kept."""
    _open(driver, server)
    rng = np.random.default_rng(0)
    cases = 0
    for (h, w), rules in [((37, 53), BoxRules()), ((128, 100), BoxRules(merge_frac=0.05, max_boxes=3)),
                          ((64, 64), BoxRules(merge_frac=0.0, min_pixels=1)), ((90, 120), BoxRules(merge_frac=0.02)),
                          ((60, 80), BoxRules(merge_frac=0.025))]:  # a 2.5 px square: Python rounds it to 2
        amap = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2)
        g = anomaly_grid(amap, rules, max_side=max(h, w))  # one pixel per cell: the page sees the map itself
        assert g["cell"] == 1
        for q in (0.5, 0.8, 0.95, 0.995):
            t = float(np.quantile(amap, q))
            page = _js(driver, f"return AdcBoxes.boxesFromGrid(AdcBoxes.decodeGrid({json.dumps(g)}), {t!r})")
            assert [(b["box"], b["score"]) for b in page] == boxes_from_map(amap, t, rules), (h, w, rules, q)
            cases += len(page) > 1
    assert cases >= 4
    # An image score at the threshold with no cell reaching it: one box at half the map's peak, as inspect does.
    amap = cv2.GaussianBlur(rng.random((40, 40)).astype(np.float32), (0, 0), 2)
    g = anomaly_grid(amap, BoxRules(), max_side=40)
    t = float(amap.max()) * 1.5
    judged = _js(driver, f"return AdcBoxes.judge({{score: {t}, image_size: [40, 40]}},"
                         f" AdcBoxes.decodeGrid({json.dumps(g)}), {t!r})")
    assert judged["verdict"] == "anomalous"
    assert [b["bbox_2d"] for b in judged["boxes"]] == [b for b, _ in boxes_from_map(amap, 0.5 * float(amap.max()), BoxRules())[:1]]


def test_changed_inputs_and_bad_files_never_look_judged(driver, server, files, tmp_path):
    _open(driver, server)
    _choose(driver, "query-file", [files["bad"]])
    _choose(driver, "ref-files", [files["ref"]])
    _inspect(driver, 1)
    assert _verdict(driver) == "ANOMALOUS"
    _choose(driver, "query-file", [files["clean"]])  # a new query: the old verdict goes at once
    assert _verdict(driver) == "not inspected" and _page_boxes(driver) == []
    assert _js(driver, "return document.querySelectorAll('#results-body tr').length") == 0
    assert _js(driver, "return document.getElementById('viewer').classList.contains('stale')")
    assert _js(driver, "return document.getElementById('download-json').disabled")
    # Inputs changed while a lot is being inspected: nothing of the old lot shows up, then or later.
    _choose(driver, "query-file", [files["bad"]] * 3)
    driver.find_element(By.ID, "inspect-btn").click()
    _choose(driver, "ref-files", [files["clean"]])
    _wait(driver, "return !document.getElementById('inspect-btn').disabled")
    assert _verdict(driver) == "not inspected" and _page_boxes(driver) == []
    assert _js(driver, "return document.querySelectorAll('#results-body tr').length") == 0
    _choose(driver, "query-file", [files["broken"]])
    _inspect(driver, 1)
    assert _verdict(driver) == "not judged" and _page_boxes(driver) == []
    row = _js(driver, "return document.querySelector('#results-body tr').textContent")
    assert "not judged" in row and "broken.png" in row
    assert "broken.png" in _js(driver, "return document.getElementById('description').textContent")
    assert _js(driver, "return document.getElementById('viewer').classList.contains('stale')")
    driver.save_screenshot(str(tmp_path / "bad-file.png"))


def test_the_image_checks_reason_is_shown_and_holds_at_any_threshold(driver, server, files, tmp_path):
    from skimage import data

    blank, other = tmp_path / "blank.png", tmp_path / "coffee.png"
    Image.new("RGB", (512, 512), (90, 90, 90)).save(blank)
    Image.fromarray(data.coffee()).save(other)
    _open(driver, server)
    _choose(driver, "query-file", [blank, other, files["clean"]])
    _choose(driver, "ref-files", [files["ref"]])
    _inspect(driver, 3)
    rows = _js(driver, "return Array.from(document.querySelectorAll('#results-body tr'), r => r.textContent)")
    assert "anomalous (blank image)" in rows[0] and "anomalous (not the reference product)" in rows[1], rows
    assert "(" not in rows[2].split("clean.png")[1], rows  # the clean copy passes the check
    assert _verdict(driver) == "ANOMALOUS — blank image" and _page_boxes(driver) == []
    assert "blank image" in _js(driver, "return document.getElementById('description').textContent")
    _js(driver, "document.querySelectorAll('#results-body tr button.show')[1].click()")
    assert _verdict(driver) == "ANOMALOUS — not the reference product"
    # However high the threshold is moved, a frame that is not the product stays anomalous, unboxed.
    _js(driver, "const e = document.getElementById('threshold'); e.value = '0.99';"
                " e.dispatchEvent(new Event('change', {bubbles: true}));")
    assert _verdict(driver) == "ANOMALOUS — not the reference product" and _page_boxes(driver) == []
    _js(driver, "document.querySelectorAll('#results-body tr button.show')[2].click()")
    assert _verdict(driver) == "NORMAL"
    driver.save_screenshot(str(tmp_path / "image-check.png"))
    _no_page_errors(driver)


def _downloaded(folder: Path, name: str) -> Path:
    path = folder / name
    deadline = time.monotonic() + 15
    while not path.exists():
        assert time.monotonic() < deadline, f"{name} was not downloaded"
        time.sleep(0.05)
    time.sleep(0.2)  # written in one go for files this small; let it close
    return path


def test_reference_sets_and_downloads(driver, server, files, downloads):
    _open(driver, server)
    _choose(driver, "ref-files", [files["ref"]])
    driver.find_element(By.ID, "set-name").send_keys("brick wall A")
    driver.find_element(By.ID, "set-product").send_keys("brick wall")
    driver.find_element(By.ID, "set-material").send_keys("fired clay")
    driver.find_element(By.ID, "save-set").click()
    set_id = _wait(driver, "return document.getElementById('ref-set').value", timeout=30)
    assert "brick wall A" in _js(driver, "const s = document.getElementById('ref-set');"
                                         " return s.options[s.selectedIndex].textContent")
    stored = [s for s in httpx.get(server + "/v1/references").json()["reference_sets"] if s["id"] == set_id]
    assert [(s["product"], s["material"]) for s in stored] == [("brick wall", "fired clay")]
    _choose(driver, "query-file", [files["bad"]])
    _inspect(driver, 1)
    assert _verdict(driver) == "ANOMALOUS"
    # An object question on the set is answered from the product it was saved with, and says so.
    _ask(driver, "What is this object made of?")
    _done(driver, 1, timeout=180)
    assert _answers(driver)[0].startswith("The references are labelled brick wall (fired clay)"), _answers(driver)
    driver.find_element(By.ID, "download-json").click()
    saved = json.loads(_downloaded(downloads, "query.adcopilot.json").read_text())
    assert saved["reference_set"] == set_id and saved["verdict"] == "anomalous" and "anomaly_grid" not in saved
    assert [b["bbox_2d"] for b in saved["boxes"]] == _page_boxes(driver)
    _js(driver, "document.getElementById('show-heat').click()")  # boxes only: the red is theirs
    driver.find_element(By.ID, "download-image").click()
    img = np.asarray(Image.open(io.BytesIO(_downloaded(downloads, "query.annotated.png").read_bytes())).convert("RGB"))
    assert img.shape == (512, 512, 3)
    red = (img[..., 0] > 180) & (img[..., 1] < 90) & (img[..., 2] < 90)
    x1, y1, x2, y2 = saved["boxes"][0]["bbox_2d"]
    near = red[max(0, y1 - 30):y2 + 4, max(0, x1 - 4):x2 + 120].sum()
    assert near > 100 and red.sum() - near < 0.1 * near
    # A stored set is chosen on a fresh page too, and forgotten from it.
    _open(driver, server)
    _wait(driver, f"return Array.from(document.getElementById('ref-set').options).some(o => o.value === '{set_id}')")
    _js(driver, f"const s = document.getElementById('ref-set'); s.value = '{set_id}';"
                " s.dispatchEvent(new Event('change'));")
    _choose(driver, "query-file", [files["bad"]])
    _inspect(driver, 1)
    assert _verdict(driver) == "ANOMALOUS"
    assert _pixels(driver, "ref-view", 10, 10)[3] == 255  # the set's reference, shown from the service's preview
    driver.find_element(By.ID, "forget-set").click()
    _wait(driver, "return document.getElementById('ref-set').value === ''", timeout=30)
    assert httpx.get(server + "/v1/references").json()["reference_sets"] == []


def test_keyboard_screen_reader_axe_and_phone(driver, server, files, tmp_path):
    _open(driver, server)
    # Real file inputs, reachable with Tab, each with its label.
    for input_id in ("query-file", "ref-files"):
        assert _js(driver, f"const e = document.getElementById('{input_id}'); return e.labels.length > 0 &&"
                           " e.offsetWidth > 0 && e.tabIndex >= 0")
    _js(driver, "document.getElementById('apikey').focus()")  # the last control of the header
    reached = []
    for _ in range(8):
        ActionChains(driver).send_keys(Keys.TAB).perform()  # the keyboard, not a file path
        reached.append(_js(driver, "return document.activeElement.id"))
        if reached[-1] == "ref-files":
            break
    assert reached == ["query-file", "ref-set", "ref-files"], reached  # the page's first task comes first
    _choose(driver, "query-file", [files["bad"]])
    _choose(driver, "ref-files", [files["ref"]])
    driver.find_element(By.ID, "inspect-btn").send_keys(Keys.ENTER)
    _wait(driver, "return document.getElementById('verdict').textContent === 'ANOMALOUS'")
    live = _js(driver, "const v = document.getElementById('verdict').closest('[aria-live]');"
                       " return v && v.getAttribute('aria-live')")
    assert live == "polite"
    # axe-core (shipped by axe-selenium-python, injected from disk) on the page with a result shown.
    axe = axe_selenium_python.Axe(driver)
    axe.inject()
    found = axe.run()
    bad = [(v["id"], v["impact"], len(v["nodes"])) for v in found["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, axe.report(found["violations"])
    # Phone: the verdict comes first and stays in sight.
    driver.set_window_size(390, 844)
    _wait(driver, "return window.innerWidth <= 400", timeout=10)
    _js(driver, "window.scrollTo(0, 0)")  # the page as it opens (pressing Inspect may have scrolled it)
    top = _js(driver, "return ['verdict-bar', 'inputs', 'overlay-panel', 'chat'].map(id =>"
                      " document.getElementById(id).getBoundingClientRect().top)")
    assert top[0] < top[1] < top[2] < top[3] and top[0] < 150  # first, right under the page's title
    driver.save_screenshot(str(tmp_path / "phone.png"))
    _js(driver, "document.getElementById('viewer').scrollIntoView()")
    assert -1 <= _js(driver, "return document.getElementById('verdict-bar').getBoundingClientRect().top") < 5
    driver.save_screenshot(str(tmp_path / "phone-scrolled.png"))
    found = axe.run()  # the narrow layout too
    bad = [(v["id"], v["impact"]) for v in found["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, axe.report(found["violations"])
    _no_page_errors(driver)


# Records, as the chat log changes, every text the growing answer shows, whether the working
# indicator was still there once a token had arrived, and how the growing answer is exposed to
# screen readers; with window.stopAtFirst the Stop button is pressed at the first token.
WATCH_CHAT = """
window.partials = []; window.indicatorWithTokens = false; window.exposed = [];
new MutationObserver(() => {
  const g = document.querySelector('#chat-log .msg.streaming');
  if (!g) return;
  const text = g.lastChild.textContent;
  if (text && window.partials[window.partials.length - 1] !== text) window.partials.push(text);
  if (document.querySelector('#chat-log .msg.thinking')) window.indicatorWithTokens = true;
  window.exposed.push([g.getAttribute('aria-hidden'), document.getElementById('chat-log').getAttribute('aria-busy')]);
  if (window.stopAtFirst && text && !window.stopped) { window.stopped = true; document.getElementById('stop-btn').click(); }
}).observe(document.getElementById('chat-log'), {childList: true, subtree: true, characterData: true});
"""


def _ask(driver, question: str) -> None:
    driver.find_element(By.ID, "question").send_keys(question, Keys.ENTER)


def _answers(driver) -> list[str]:
    return _js(driver, "return Array.from(document.querySelectorAll('#chat-log .msg.assistant'), m => m.lastChild.textContent)")


def _done(driver, answers: int, timeout: float = 180) -> None:
    _wait(driver, f"return document.querySelectorAll('#chat-log .msg.assistant:not(.streaming)').length === {answers}"
                  " && !document.getElementById('ask-btn').disabled", timeout)


def test_chat_streams_the_answer_as_it_is_written_and_can_be_stopped(driver, server, files, tmp_path):
    question = "Write one sentence about the photo."  # not about the defect or the object: the language model, token by token
    _open(driver, server)
    _choose(driver, "query-file", [files["bad"]])
    _choose(driver, "ref-files", [files["ref"]])
    _js(driver, WATCH_CHAT)
    _ask(driver, question)
    # The working indicator until the first token, and the Stop button while the answer comes.
    assert _js(driver, "return document.querySelector('#chat-log .msg.thinking') !== null &&"
                       " document.getElementById('chat-log').getAttribute('aria-busy') === 'true' &&"
                       " !document.getElementById('stop-btn').hidden")
    _wait(driver, "return window.partials.length >= 1", timeout=180)
    driver.save_screenshot(str(tmp_path / "chat-streaming.png"))
    _done(driver, 1)
    driver.save_screenshot(str(tmp_path / "chat-answered.png"))
    partials, whole = _js(driver, "return window.partials"), _answers(driver)[0]
    # The answer grew on the page: several texts, each the start of the next, the last the whole answer.
    assert len(partials) >= 2, partials
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(partials, partials[1:], strict=False)), partials
    assert partials[-1] == whole and len(whole) > 5
    assert not _js(driver, "return window.indicatorWithTokens")
    # Screen readers: the growing text is hidden from them and the log busy; the whole answer is added once.
    assert {tuple(e) for e in _js(driver, "return window.exposed")} == {("true", "true")}
    assert _js(driver, "const m = document.querySelector('#chat-log .msg.assistant');"
                       " return m.getAttribute('aria-hidden') === null && !m.classList.contains('streaming') &&"
                       " document.getElementById('chat-log').getAttribute('aria-live') === 'polite' &&"
                       " document.getElementById('chat-log').getAttribute('aria-busy') === 'false'")
    assert _js(driver, "return document.getElementById('stop-btn').hidden")
    # The same answer as the chat endpoint gives a client (greedy: repeatable).
    body = {"model": "x", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(files[k].read_bytes()).decode()}}
        for k in ("ref", "bad")] + [{"type": "text", "text": question}]}]}
    assert httpx.post(server + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]["content"] == whole
    # A defect question follows, with the conversation so far: composed from the inspection.
    _ask(driver, "Is there a defect?")
    _done(driver, 2)
    assert _answers(driver)[1].startswith("Yes.")

    # Stop at the first token: the answer stays unfinished, the page says so, the service is free.
    _open(driver, server)
    _choose(driver, "query-file", [files["bad"]])
    _choose(driver, "ref-files", [files["ref"]])
    _js(driver, WATCH_CHAT + "window.stopAtFirst = true;")
    _ask(driver, question)
    _wait(driver, "return document.querySelector('#chat-log .msg.note') !== null", timeout=180)
    _wait(driver, "return !document.getElementById('ask-btn').disabled", timeout=10)
    stopped = _answers(driver)
    assert len(stopped) == 1 and whole.startswith(stopped[0]) and len(stopped[0]) < len(whole), (stopped, whole)
    assert "Stopped" in _js(driver, "return document.querySelector('#chat-log .msg.note').textContent")
    driver.save_screenshot(str(tmp_path / "chat-stopped.png"))
    time.sleep(1.0)
    assert _answers(driver) == stopped  # nothing more arrived
    _js(driver, "window.stopAtFirst = false;")
    _ask(driver, "Is there a defect?")
    _done(driver, 2, timeout=60)
    assert _answers(driver)[1].startswith("Yes.")
    axe = axe_selenium_python.Axe(driver)
    axe.inject()
    found = axe.run()
    bad = [(v["id"], v["impact"]) for v in found["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, axe.report(found["violations"])
    _no_page_errors(driver)


def test_a_failed_question_is_one_error_line(driver, server, files):
    _open(driver, server)
    _choose(driver, "query-file", [files["broken"]])
    _choose(driver, "ref-files", [files["ref"]])
    _ask(driver, "Is there a defect?")
    _wait(driver, "return document.querySelector('#chat-log .msg.error') !== null", timeout=60)
    error = _js(driver, "return document.querySelector('#chat-log .msg.error').textContent")
    assert error.startswith("error: 400: broken.png: not an image file") and "\n" not in error, error
    assert _js(driver, "return document.querySelector('#chat-log .msg.thinking, #chat-log .msg.assistant')") is None
    assert not _js(driver, "return document.getElementById('ask-btn').disabled")
