"""Annotated images: the query with a heat-map overlay of the anomaly map and the defect boxes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.imaging import ImageInput, full_size, load_image, scale_box
from adcopilot.results import InspectionResult

RED = (230, 40, 40)


def heat_colours(amap: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(strength (H, W) in [0, 1], RGB colours (H, W, 3) uint8) of an anomaly map: 0 at half the
    threshold, full at twice the threshold (so normal images stay clean), jet colours."""
    thr = max(float(threshold), 1e-6)
    norm = np.clip((amap - 0.5 * thr) / (1.5 * thr), 0, 1)
    return norm, cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]


def annotate(query: ImageInput, result: InspectionResult, alpha: float = 0.45) -> Image.Image:
    """Query image (RGB) with the heat-map (where above ~half the threshold) and labelled boxes; a JPEG
    decoded at a reduced scale (``imaging.full_size``) is drawn at that scale, its boxes scaled to it."""
    pil = load_image(query, name=result.query)
    img = np.asarray(pil).copy()
    h, w = img.shape[:2]
    fw, fh = full_size(pil)  # the boxes' pixels
    if result.anomaly_map is not None:
        amap = result.anomaly_map
        if amap.shape != (h, w):
            amap = cv2.resize(amap, (w, h))
        norm, heat = heat_colours(amap, result.threshold)
        weight = (alpha * (norm > 0.05))[..., None]
        img = (img * (1 - weight) + heat * weight).astype(np.uint8)
    thick = max(2, round(min(h, w) / 150))
    font_scale = max(0.4, min(h, w) / 600)
    for b in result.boxes:
        x1, y1, x2, y2 = b.bbox_2d if (fw, fh) == (w, h) else scale_box(b.bbox_2d, (fw, fh), (w, h))
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), RED, thick)
        text = f"{b.label} {b.score:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 4 if y1 - th - 6 > 0 else y2 + th + 4
        cv2.rectangle(img, (x1, ty - th - 3), (x1 + tw + 4, ty + 3), RED, -1)
        cv2.putText(img, text, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    verdict = f"{result.verdict.upper()}  score {result.score:.3f} / thr {result.threshold:.3f}"
    colour = RED if result.is_anomalous else (30, 160, 60) if result.verdict == "normal" else (200, 150, 0)
    cv2.putText(img, verdict, (6, 6 + int(22 * font_scale)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour, 2, cv2.LINE_AA)
    return Image.fromarray(img)


def save_annotated(query: ImageInput, result: InspectionResult, path: str | Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        annotate(query, result).save(path)
    except (OSError, ValueError) as exc:
        raise AdcopilotError(f"{path}: cannot write the annotated image ({exc})") from None
    return path
