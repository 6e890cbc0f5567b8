/* adcopilot web page: the image panels. Reference, query and overlay side by side; the overlay is the
   query with the anomaly map in a colour scale (adjustable opacity) and the defect boxes; zoom
   magnifies the three together and their scrolling stays in step. Also draws the annotated image
   for download. */
"use strict";

const AdcViewer = (() => {
  // Colour scale, low to high (ColorBrewer RdYlBu, reversed): blue is far below the threshold, red far above.
  const STOPS = [[49, 54, 149], [69, 117, 180], [116, 173, 209], [171, 217, 233], [254, 224, 144],
                 [253, 174, 97], [244, 109, 67], [215, 48, 39], [165, 0, 38]];
  const ZOOMS = [1, 1.5, 2, 3, 4, 6, 8];
  let zoomIndex = 0;

  /** Colour at t in [0, 1]. */
  function colour(t) {
    const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1), i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i;
    return STOPS[i].map((c, k) => Math.round(c + f * (STOPS[i + 1][k] - c)));
  }

  /** Opacity at t: clear in the lower quarter of the scale (the part stays visible), full from half of it. */
  function alpha(t) { return Math.min(1, Math.max(0, (t - 0.25) / 0.25)); }

  /** The grid as an RGBA image, one pixel per cell; values scaled by ``vmax`` (the top of the colour scale). */
  function heatImage(grid, vmax) {
    const c = document.createElement("canvas");
    c.width = grid.width; c.height = grid.height;
    const ctx = c.getContext("2d"), img = ctx.createImageData(grid.width, grid.height);
    for (let i = 0; i < grid.values.length; i++) {
      const t = grid.values[i] / vmax, [r, g, b] = colour(t);
      img.data.set([r, g, b, Math.round(255 * alpha(t))], 4 * i);
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }

  /** The legend: the colour bar with the opacity the overlay uses, and ticks 0, the threshold, the top. */
  function drawScale(bar, ticks, vmax, threshold) {
    const ctx = bar.getContext("2d");
    ctx.clearRect(0, 0, bar.width, bar.height);
    for (let x = 0; x < bar.width; x++) {
      const t = (x + 0.5) / bar.width, [r, g, b] = colour(t);
      ctx.fillStyle = `rgba(${r},${g},${b},${Math.max(0.15, alpha(t))})`;
      ctx.fillRect(x, 0, 1, bar.height);
    }
    ticks.textContent = "";
    if (!(vmax > 0)) return;
    const tick = (v, cls, text) => {
      const s = document.createElement("span");
      s.className = cls; s.style.left = `${100 * Math.min(1, v / vmax)}%`; s.textContent = text;
      ticks.appendChild(s);
    };
    const at = threshold != null && Number.isFinite(threshold) ? Math.min(1, threshold / vmax) : null;
    if (at === null || at > 0.15) tick(0, "first", "0");  // the threshold's marker wins where they would overlap
    if (at === null || at < 0.8) tick(vmax, "last", `${vmax.toPrecision(3)}+`);
    if (at !== null) tick(threshold, at < 0.05 ? "thr first" : at > 0.95 ? "thr last" : "thr", `▲ ${threshold.toPrecision(3)}`);
  }

  /** Query, heat (at ``opacity``) and boxes on ``ctx`` at the query's pixel size; labels only when asked
      (on the page they are HTML tags above the image, in a download they are drawn in). */
  function drawOverlay(ctx, img, w, h, heat, cell, opacity, boxes, withLabels) {
    ctx.clearRect(0, 0, w, h);
    if (img) ctx.drawImage(img, 0, 0, w, h);
    if (heat && opacity > 0) {
      ctx.globalAlpha = opacity;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(heat, 0, 0, heat.width * cell, heat.height * cell);  // cells cut by the edge fall outside
      ctx.globalAlpha = 1;
    }
    const lw = Math.max(2, Math.round(Math.min(w, h) / 150));
    ctx.strokeStyle = "#e53935"; ctx.lineWidth = lw;
    ctx.font = `${Math.max(12, 6 * lw)}px sans-serif`;
    for (const b of boxes) {
      const [x1, y1, x2, y2] = b.bbox_2d;
      ctx.strokeRect(x1 + lw / 2, y1 + lw / 2, Math.max(1, x2 - x1 - lw), Math.max(1, y2 - y1 - lw));
      if (withLabels) {
        const text = `${b.label} ${b.score.toFixed(2)}`, th = Math.max(12, 6 * lw) + 4;
        const ty = y1 >= th ? y1 - th : y2;
        ctx.fillStyle = "#c62828"; ctx.fillRect(x1, ty, ctx.measureText(text).width + 8, th);
        ctx.fillStyle = "#fff"; ctx.fillText(text, x1 + 4, ty + th - 5);
      }
    }
  }

  /** HTML boxes over the overlay canvas (percentages, so they follow zoom) and the text list of them. */
  function placeBoxes(layer, list, boxes, w, h) {
    layer.textContent = ""; list.textContent = "";
    for (const b of boxes) {
      const [x1, y1, x2, y2] = b.bbox_2d;
      const d = document.createElement("div");
      d.className = "box";
      Object.assign(d.style, { left: `${100 * x1 / w}%`, top: `${100 * y1 / h}%`,
                               width: `${100 * (x2 - x1) / w}%`, height: `${100 * (y2 - y1) / h}%` });
      d.dataset.bbox = JSON.stringify(b.bbox_2d);
      const label = document.createElement("span"); label.textContent = `${b.label} ${b.score.toFixed(2)}`;
      if (y1 < 0.08 * h) label.classList.add("inside");  // no room above: the tag goes inside the box
      if (x1 > 0.7 * w) label.classList.add("right");  // near the right edge: the tag ends at the box's right
      d.appendChild(label); layer.appendChild(d);
      const li = document.createElement("li");
      li.textContent = `${b.label} at x ${x1}–${x2}, y ${y1}–${y2} (query pixels), score ${b.score.toFixed(3)}`;
      list.appendChild(li);
    }
  }

  /** Size ``canvas`` for an image of w x h pixels, at most MAX_SIDE on a side (a 40-megapixel part
      need not cost a browser 160 MB per panel); its context draws in the image's own pixels. */
  const MAX_SIDE = 2048;
  function fitCanvas(canvas, w, h) {
    const s = Math.min(1, MAX_SIDE / Math.max(w || 1, h || 1));
    canvas.width = Math.max(1, Math.round((w || 1) * s)); canvas.height = Math.max(1, Math.round((h || 1) * s));
    const ctx = canvas.getContext("2d");
    ctx.setTransform(canvas.width / (w || 1), 0, 0, canvas.height / (h || 1), 0, 0);
    return ctx;
  }

  /** An image (or nothing) on a panel's canvas. */
  function showImage(canvas, img, w, h) {
    const ctx = fitCanvas(canvas, w, h);
    ctx.clearRect(0, 0, w || 1, h || 1);
    if (img) ctx.drawImage(img, 0, 0, w || 1, h || 1);
  }

  /** Zoom by ``step`` levels (0: fit); every stage grows together, and the panes scroll together. */
  function zoom(step, stages, label) {
    zoomIndex = step === 0 ? 0 : Math.min(ZOOMS.length - 1, Math.max(0, zoomIndex + step));
    const z = ZOOMS[zoomIndex];
    for (const s of stages) s.style.width = `${100 * z}%`;
    label.textContent = `${Math.round(100 * z)}%`;
    return z;
  }

  function syncScroll(panes) {
    let busy = false;
    for (const p of panes) {
      p.addEventListener("scroll", () => {
        if (busy) return;
        busy = true;
        const fx = p.scrollLeft / Math.max(1, p.scrollWidth - p.clientWidth);
        const fy = p.scrollTop / Math.max(1, p.scrollHeight - p.clientHeight);
        for (const o of panes) {
          if (o === p) continue;
          o.scrollLeft = fx * (o.scrollWidth - o.clientWidth);
          o.scrollTop = fy * (o.scrollHeight - o.clientHeight);
        }
        requestAnimationFrame(() => { busy = false; });
      });
    }
  }

  return { heatImage, drawScale, drawOverlay, placeBoxes, fitCanvas, showImage, zoom, syncScroll };
})();
