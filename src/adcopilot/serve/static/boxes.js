/* adcopilot web page: the service's verdict and box rules, run in the browser on the compact anomaly
   map that /v1/inspect returns with the heat-map (adcopilot/serve/grid.py), so that moving the
   threshold re-draws verdict and boxes at once, without asking the model again.

   The box rule is adcopilot.model.boxes.boxes_from_map, step for step: binarise at the threshold
   (compared in float32, as NumPy compares a float32 map), dilate with a k x k square (OpenCV's
   anchor), label 8-connected components, box each component's thresholded cells, drop specks,
   sort by score, keep max_boxes. The verdict rule is the service's: anomalous when the image score
   reaches the threshold; an anomalous image with no cell above it gets one box at half the map's
   peak. Grid boxes become query pixels by the grid's cell size. */
"use strict";

const AdcBoxes = (() => {
  /** Wire form -> {width, height, cell, values: Float32Array (row by row), max, rules}. */
  function decodeGrid(g) {
    const bin = atob(g.values);
    const view = new DataView(new ArrayBuffer(bin.length));
    for (let i = 0; i < bin.length; i++) view.setUint8(i, bin.charCodeAt(i));
    const n = g.width * g.height;
    if (bin.length !== 4 * n) throw new Error(`anomaly grid: ${bin.length} bytes for ${g.width}x${g.height} floats`);
    const values = new Float32Array(n);
    let max = -Infinity;
    for (let i = 0; i < n; i++) {
      values[i] = view.getFloat32(4 * i, true);  // little-endian, whatever this machine is
      if (values[i] > max) max = values[i];
    }
    return { width: g.width, height: g.height, cell: g.cell, values, max, rules: g.rules };
  }

  /** Python's round(): halves go to the even neighbour. */
  function roundHalfEven(x) {
    const f = Math.floor(x), d = x - f;
    if (d > 0.5 || (d === 0.5 && f % 2 !== 0)) return f + 1;
    return f;
  }

  /** Binary dilation with a k x k square, OpenCV's anchor (k // 2): a cell at x reaches x - (k-1-k//2) .. x + k//2. */
  function dilate(bin, w, h, k) {
    if (k <= 1) return bin;
    const hi = Math.floor(k / 2), lo = k - 1 - hi;
    const rows = new Uint8Array(w * h), out = new Uint8Array(w * h);
    const pre = new Int32Array(Math.max(w, h) + 1);
    for (let y = 0; y < h; y++) {  // along rows: any set cell in [x - hi, x + lo]
      for (let x = 0; x < w; x++) pre[x + 1] = pre[x] + bin[y * w + x];
      for (let x = 0; x < w; x++) rows[y * w + x] = pre[Math.min(w, x + lo + 1)] > pre[Math.max(0, x - hi)] ? 1 : 0;
    }
    for (let x = 0; x < w; x++) {  // then along columns
      for (let y = 0; y < h; y++) pre[y + 1] = pre[y] + rows[y * w + x];
      for (let y = 0; y < h; y++) out[y * w + x] = pre[Math.min(h, y + lo + 1)] > pre[Math.max(0, y - hi)] ? 1 : 0;
    }
    return out;
  }

  /** boxes_from_map on the grid: [{box: [x1, y1, x2, y2] in cells (x2/y2 exclusive), score}], best first. */
  function boxesFromGrid(grid, threshold) {
    const { width: w, height: h, values, rules } = grid;
    const thr = Math.fround(threshold);
    const bin = new Uint8Array(w * h);
    let any = false;
    for (let i = 0; i < w * h; i++) if (values[i] >= thr) { bin[i] = 1; any = true; }
    if (!any) return [];
    const k = Math.max(1, roundHalfEven(rules.merge_frac * Math.hypot(h, w)));
    const merged = dilate(bin, w, h, k);
    const minArea = Math.max(rules.min_pixels, Math.floor(rules.min_area_frac * h * w));
    const borderArea = Math.floor((rules.border_speck_frac || 0) * h * w);  // small pieces at the edge: dropped
    const seen = new Uint8Array(w * h), stack = new Int32Array(w * h);
    const found = [];
    for (let start = 0; start < w * h; start++) {  // components in raster order, as OpenCV labels them
      if (!merged[start] || seen[start]) continue;
      let top = 0, count = 0, x1 = w, y1 = h, x2 = -1, y2 = -1, score = -Infinity;
      seen[start] = 1; stack[top++] = start;
      while (top) {
        const p = stack[--top], px = p % w, py = (p - px) / w;
        if (bin[p]) {  // the box is of thresholded cells only, not of the dilation
          count++;
          if (px < x1) x1 = px; if (px > x2) x2 = px; if (py < y1) y1 = py; if (py > y2) y2 = py;
          if (values[p] > score) score = values[p];
        }
        for (let dy = -1; dy <= 1; dy++) {
          const ny = py + dy; if (ny < 0 || ny >= h) continue;
          for (let dx = -1; dx <= 1; dx++) {
            const nx = px + dx; if (nx < 0 || nx >= w) continue;
            const q = ny * w + nx;
            if (merged[q] && !seen[q]) { seen[q] = 1; stack[top++] = q; }
          }
        }
      }
      const atBorder = x1 === 0 || y1 === 0 || x2 + 1 === w || y2 + 1 === h;
      if (count >= minArea && !(atBorder && count < borderArea)) found.push({ box: [x1, y1, x2 + 1, y2 + 1], score });
    }
    found.sort((a, b) => b.score - a.score);  // stable, as Python's sort
    return found.slice(0, rules.max_boxes);
  }

  /** The verdict and boxes (query pixels) at ``threshold`` for a served result and its decoded grid. */
  function judge(res, grid, threshold) {
    // A frame that failed the image check (not the product, blank, ...) is anomalous at any threshold, unboxed.
    if (res.image_check) return { verdict: "anomalous", boxes: [] };
    const anomalous = res.score >= threshold;
    if (!anomalous || !grid) return { verdict: anomalous ? "anomalous" : "normal", boxes: [] };
    let found = boxesFromGrid(grid, threshold);
    if (!found.length && grid.max > 0) found = boxesFromGrid(grid, 0.5 * grid.max).slice(0, 1);
    const [w, h] = res.image_size, c = grid.cell;
    const boxes = found.map(({ box, score }) => ({
      bbox_2d: [box[0] * c, box[1] * c, Math.min(box[2] * c, w), Math.min(box[3] * c, h)],
      label: "defect", score,
    }));
    return { verdict: "anomalous", boxes };
  }

  return { decodeGrid, boxesFromGrid, judge };
})();
