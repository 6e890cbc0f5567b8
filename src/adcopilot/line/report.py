"""The batch report: ``results.csv``, ``summary.json`` and one self-contained ``report.html``.

Merges every ``results*.jsonl`` and ``skipped*.csv`` in a batch folder (all shards present), so
the last shard to finish writes the report of the whole lot. The HTML page needs nothing else:
styles, the sorting script and the thumbnails (JPEG data URIs) are inline; each thumbnail links to
its full annotated image in ``annotated/``. Rows come worst first: misses (most confident first),
then false alarms (overkill), then the rest by score. When folder names give the truth, the page
shows the confusion counts, overkill and miss rates.

Usage::

    files = build_report("out/")     # {"csv": ..., "html": ..., "summary": ...}
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.line.records import CHECK_FILE, MANIFEST, read_records
from adcopilot.paths import name_bytes, readable

log = logging.getLogger(__name__)

CSV_COLUMNS = [
    "file", "path", "truth", "verdict", "image_check", "outcome", "score", "threshold", "n_boxes", "boxes",
    "references", "similarity", "annotated", "time_ms",
]


def load_results(out_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """All records (one per file, the latest wins) and skipped files of a batch folder."""
    out = Path(out_dir)
    by_file: dict[str, dict[str, Any]] = {}
    for p in sorted(out.glob("results*.jsonl")):
        for r in read_records(p):
            if "file" in r:
                by_file[r["file"]] = r
    skipped: dict[str, str] = {}
    written = {readable(k) for k in by_file}  # skipped.csv holds readable names
    for p in sorted(out.glob("skipped*.csv")):
        with p.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("file") and row["file"] not in written:
                    skipped[row["file"]] = row.get("reason", "")
    return [by_file[k] for k in sorted(by_file)], sorted(skipped.items())


def summarize(records: list[dict[str, Any]], skipped: list[tuple[str, str]]) -> dict[str, Any]:
    """Counts, and with known truth the confusion matrix, overkill and miss rates."""
    s: dict[str, Any] = {
        "inspected": len(records),
        "anomalous": sum(r["verdict"] == "anomalous" for r in records),
        "normal": sum(r["verdict"] == "normal" for r in records),
        "skipped": len(skipped),
        # Frames that failed the global image check (anomalous whatever the score), by reason.
        "image_check_failed": sum(bool(r.get("image_check")) for r in records),
        "image_check": dict(sorted(Counter(r["image_check"] for r in records if r.get("image_check")).items())),
        # What the inputs' notes said (a bad reference, an elongated image), each once, with how many results carry it.
        "notes": dict(Counter(n for r in records for n in r.get("notes", [])).most_common()),
    }
    known = [r for r in records if r.get("truth") in ("normal", "defective")]
    if known:
        c = {k: sum(r.get("outcome") == k for r in known) for k in ("pass", "overkill", "detected", "miss")}
        n_norm, n_def = c["pass"] + c["overkill"], c["detected"] + c["miss"]
        s["truth"] = {
            "labelled": len(known),
            "normal": n_norm,
            "defective": n_def,
            "confusion": {"tn": c["pass"], "fp": c["overkill"], "tp": c["detected"], "fn": c["miss"]},
            "overkill": c["overkill"],
            "miss": c["miss"],
            "overkill_rate": c["overkill"] / n_norm if n_norm else None,
            "miss_rate": c["miss"] / n_def if n_def else None,
            "accuracy": (c["pass"] + c["detected"]) / len(known),
        }
    return s


def worst_first(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Misses (lowest score below the threshold first), false alarms (highest first), then by score."""

    def key(r: dict[str, Any]) -> tuple[int, float]:
        margin = r["score"] - r["threshold"]
        if r.get("outcome") == "miss":
            return 0, margin
        if r.get("outcome") == "overkill":
            return 1, -margin
        return 2, -r["score"]

    return sorted(records, key=key)


def write_csv(records: list[dict[str, Any]], path: Path) -> Path:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in records:
            w.writerow([
                readable(r["file"]), readable(r.get("path", "")), r.get("truth") or "", r["verdict"],
                r.get("image_check") or "", r.get("outcome") or "",
                r["score"], r["threshold"], len(r.get("boxes", [])), json.dumps([b["bbox_2d"] for b in r.get("boxes", [])]),
                ";".join(readable(p) for p in r.get("references", [])), ";".join(str(v) for v in r.get("similarity", [])),
                readable(r.get("annotated") or ""), r.get("time_ms", ""),
            ])
    os.replace(tmp, path)
    return path


def _thumb_uri(out: Path, r: dict[str, Any], size: int = 128) -> str:
    thumb = out / r["thumb"] if r.get("thumb") else None
    try:
        if thumb is not None and thumb.exists():
            data = thumb.read_bytes()
        else:  # no pictures saved: a small copy of the query itself
            with Image.open(r["path"]) as im:
                im.draft("RGB", (size, size))
                im = im.convert("RGB")
                im.thumbnail((size, size))
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=75)
                data = buf.getvalue()
    except (OSError, KeyError, ValueError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


_CSS = """
body{font:14px system-ui,sans-serif;margin:20px;color:#222}
h1{font-size:20px;margin:0 0 4px} .meta{color:#666;margin-bottom:14px}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin-bottom:16px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:20px} .card.bad b{color:#c62828} .card.good b{color:#2e7d32}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left}
th{cursor:pointer;background:#fafafa;position:sticky;top:0;user-select:none} th:hover{background:#eef}
th.asc::after{content:" \\25B2"} th.desc::after{content:" \\25BC"}
td img{width:96px;height:96px;object-fit:contain;background:#f4f4f4;display:block}
tr.miss{background:#fdecea} tr.overkill{background:#fff6e0}
.anomalous{color:#c62828;font-weight:600} .normal{color:#2e7d32}
.check{display:inline-block;font-size:12px;font-weight:400;color:#fff;background:#6a1b9a;border-radius:8px;padding:0 6px}
.tools{margin:8px 0} .tools input,.tools select{padding:3px 6px}
table.cm td,table.cm th{border:1px solid #ddd;text-align:center;cursor:default;position:static}
"""

_JS = """
(function(){
const t=document.getElementById('results'),tb=t.tBodies[0];
t.tHead.addEventListener('click',e=>{const th=e.target.closest('th');if(!th||th.dataset.k===undefined)return;
 const i=th.cellIndex,num=th.dataset.k==='n',asc=!th.classList.contains('asc');
 for(const h of t.tHead.rows[0].cells)h.classList.remove('asc','desc');th.classList.add(asc?'asc':'desc');
 const rows=Array.from(tb.rows),v=r=>{const c=r.cells[i],x=c.dataset.v!==undefined?c.dataset.v:c.textContent;return num?parseFloat(x):x};
 rows.sort((a,b)=>{const x=v(a),y=v(b);return (x<y?-1:x>y?1:0)*(asc?1:-1)});
 const f=document.createDocumentFragment();rows.forEach(r=>f.appendChild(r));tb.appendChild(f);});
const q=document.getElementById('filter'),o=document.getElementById('only');
function apply(){const s=q.value.toLowerCase(),w=o.value;for(const r of tb.rows){
 r.hidden=!((!s||r.dataset.f.includes(s))&&(!w||r.dataset.o===w||r.dataset.verdict===w||(w==='check'&&r.dataset.check)));}}
q.addEventListener('input',apply);o.addEventListener('change',apply);
})();
"""


def _card(label: str, value: Any, cls: str = "") -> str:
    return f'<div class="card {cls}"><b>{html.escape(str(value))}</b>{html.escape(label)}</div>'


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def write_html(
    records: list[dict[str, Any]], skipped: list[tuple[str, str]], summary: dict[str, Any],
    out: Path, path: Path, manifest: dict[str, Any] | None = None,
) -> Path:
    m = manifest or {}
    e = html.escape
    cards = [
        _card("inspected", summary["inspected"]),
        _card("anomalous", summary["anomalous"], "bad"),
        _card("normal", summary["normal"], "good"),
        _card("skipped", summary["skipped"]),
    ]
    if summary["image_check_failed"]:
        why = ", ".join(f"{n} {reason}" for reason, n in summary["image_check"].items())
        cards.append(_card(f"not inspected as the product ({why})", summary["image_check_failed"], "bad"))
    cm = ""
    t = summary.get("truth")
    if t:
        cards += [
            _card(f"overkill ({t['overkill']} of {t['normal']} normal)", _pct(t["overkill_rate"]), "bad"),
            _card(f"miss ({t['miss']} of {t['defective']} defective)", _pct(t["miss_rate"]), "bad"),
            _card("accuracy", _pct(t["accuracy"])),
        ]
        c = t["confusion"]
        cm = (
            '<table class="cm" style="width:auto;margin-bottom:14px"><tr><th></th><th>verdict normal</th>'
            f'<th>verdict anomalous</th></tr><tr><th>truly normal</th><td>{c["tn"]}</td><td>{c["fp"]} (overkill)</td></tr>'
            f'<tr><th>truly defective</th><td>{c["fn"]} (miss)</td><td>{c["tp"]}</td></tr></table>'
        )
    rows = []
    for rank, r in enumerate(worst_first(records), start=1):
        uri = _thumb_uri(out, r)
        img = f'<img loading="lazy" alt="" src="{uri}">' if uri else ""
        if r.get("annotated"):
            img = f'<a href="{e(quote(name_bytes(r["annotated"])))}">{img}</a>'
        margin = r["score"] - r["threshold"]
        boxes = " ".join(str(b["bbox_2d"]) for b in r.get("boxes", [])[:3])
        refs = ", ".join(readable(Path(p).name) for p in r.get("references", []))
        name = readable(r["file"])
        oc = r.get("outcome") or ""
        check = r.get("image_check")
        check_attr = f' data-check="{e(check)}"' if check else ""
        badge = f' <span class="check" title="failed the image check">{e(check)}</span>' if check else ""
        rows.append(
            f'<tr class="{oc}" data-o="{oc}" data-verdict="{r["verdict"]}" data-f="{e(name.lower())}"{check_attr}>'
            f'<td data-v="{rank}">{rank}</td><td>{img}</td><td>{e(name)}</td><td>{e(r.get("truth") or "")}</td>'
            f'<td class="{r["verdict"]}">{r["verdict"]}{badge}</td><td>{oc}</td>'
            f'<td data-v="{r["score"]}">{r["score"]:.4f}</td><td data-v="{margin}">{margin:+.4f}</td>'
            f'<td data-v="{len(r.get("boxes", []))}">{len(r.get("boxes", []))} <small>{e(boxes)}</small></td>'
            f"<td>{e(refs)}</td></tr>"
        )
    notes_html = ""
    if summary.get("notes"):
        items = "".join(f"<li>{e(note)} <small>({n} result{'s' if n > 1 else ''})</small></li>"
                        for note, n in summary["notes"].items())
        notes_html = f"<h2>Notes on the inputs</h2><ul>{items}</ul>"
    checked = summary.get("reference_check")
    if checked and checked["named"]:
        items = "".join(f"<li>{e(note)}</li>" for note in checked["named"])
        notes_html += (f"<h2>References to look at ({len(checked['named'])} of {checked['checked']})</h2>"
                       f"<p>Compared with the other references before the run; they were used as given.</p><ul>{items}</ul>")
    skipped_html = ""
    if skipped:
        items = "".join(f"<li><code>{e(f)}</code>: {e(reason)}</li>" for f, reason in skipped)
        skipped_html = f"<h2>Skipped ({len(skipped)})</h2><ul>{items}</ul>"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = (
        f"model {e(str(m.get('model', '?')))} · threshold {m.get('threshold', '?')} · "
        f"{m.get('references', {}).get('count', '?')} references · {m.get('shots', '?')} shot(s) · {when}"
    )
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Inspection report</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>
<body><h1>Inspection report</h1><div class="meta">{meta}</div>
<div class="cards">{"".join(cards)}</div>{cm}{notes_html}
<div class="tools"><input id="filter" placeholder="filter by file name"> <select id="only">
<option value="">all</option><option value="miss">misses</option><option value="overkill">overkill</option>
<option value="anomalous">anomalous</option><option value="normal">normal</option>
<option value="check">failed the image check</option></select>
<small>click a column to sort; rows start worst first</small></div>
<table id="results"><thead><tr><th data-k="n">#</th><th>image</th><th data-k="s">file</th><th data-k="s">truth</th>
<th data-k="s">verdict</th><th data-k="s">outcome</th><th data-k="n">score</th><th data-k="n">score − threshold</th>
<th data-k="n">boxes</th><th data-k="s">reference</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>{skipped_html}
<script>{_JS}</script></body></html>
"""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, path)
    return path


def build_report(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write results.csv, summary.json and report.html for everything in the folder."""
    out = Path(out_dir)
    records, skipped = load_results(out)
    summary = summarize(records, skipped)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    checked = reference_check(out)
    if checked is not None:
        summary["reference_check"] = checked
    csv_path = write_csv(records, out / "results.csv")
    summary_path = out / "summary.json"
    tmp = summary_path.with_suffix(f".{os.getpid()}.tmp")  # shards may finish at the same time
    tmp.write_text(json.dumps({**summary, "run": manifest}, indent=2) + "\n")
    os.replace(tmp, summary_path)
    html_path = write_html(records, skipped, summary, out, out / "report.html", manifest)
    log.info("report: %s", html_path)
    return {"csv": csv_path, "summary": summary_path, "html": html_path}


def reference_check(out: Path) -> dict[str, Any] | None:
    """The reference pool's check of a batch folder: how many references it compared and the notes on those
    it names; None when the run did not check its pool (or the file is not readable)."""
    try:
        found = json.loads((out / CHECK_FILE).read_text())
        return {"checked": int(found["checked"]), "named": [str(f["note"]) for f in found["findings"]]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def scored_against_lot(records: list[dict[str, Any]]) -> bool:
    """Whether a batch's scores are those of a lot scored against itself (``batch --mutual``): on the lot's
    scale, not the model's, so no threshold of the model may be calibrated from them."""
    return any("mutual_score" in r for r in records)


def results_shots(records: list[dict[str, Any]], folder: str | os.PathLike) -> int | None:
    """The number of references a batch's images were compared with (one count, or AdcopilotError); None for
    a lot scored without references (mutual scoring)."""
    counts = sorted({len(r.get("references") or []) for r in records})
    if len(counts) > 1:
        raise AdcopilotError(f"{folder}: images compared with different numbers of references ({counts}); their "
                             "scores are on different scales, calibrate each count on its own")
    return counts[0] if counts and counts[0] > 0 else None
