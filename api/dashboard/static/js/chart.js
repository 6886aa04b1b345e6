// A small SVG line chart: several series, linear axes with round ticks, a legend. Rebuilt from
// data on each update (a few thousand points at most), so there is no state to keep in sync.

import { h, s, fmtNumber } from "./dom.js";

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const residual = raw / magnitude;
  const nice = residual >= 5 ? 10 : residual >= 2 ? 5 : residual >= 1 ? 2 : 1;
  return nice * magnitude;
}

function ticks(min, max, count) {
  if (min === max) return [min];
  const step = niceStep(max - min, count);
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function extent(values, { zero = false } = {}) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (zero) lo = Math.min(lo, 0);
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  }
  return [lo, hi];
}

/**
 * series: [{label, points: [[x, y], ...], color?}]. Returns an element holding the SVG and
 * its legend; each series' path carries data-series and data-points (how many were plotted).
 */
export function lineChart(series, { width = 640, height = 240, xLabel = "step", title = "", empty = "No points yet." } = {}) {
  const withPoints = series.filter((one) => one.points.length);
  const box = h("figure", { class: "chart", dataset: { title } });
  if (title) box.append(h("figcaption", {}, title));
  if (!withPoints.length) {
    box.append(h("p", { class: "muted chart-empty" }, empty));
    return box;
  }
  const margin = { top: 10, right: 16, bottom: 34, left: 58 };
  const innerW = width - margin.left - margin.right;
  const innerH = height - margin.top - margin.bottom;
  const xs = withPoints.flatMap((one) => one.points.map((p) => p[0]));
  const ys = withPoints.flatMap((one) => one.points.map((p) => p[1])).filter(Number.isFinite);
  const [x0, x1] = extent(xs);
  const [y0, y1] = extent(ys.length ? ys : [0]);
  const px = (x) => margin.left + ((x - x0) / (x1 - x0)) * innerW;
  const py = (y) => margin.top + innerH - ((y - y0) / (y1 - y0)) * innerH;

  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart-svg",
    role: "img",
    "aria-label": title || "line chart",
    dataset: { points: String(withPoints.reduce((n, one) => n + one.points.length, 0)) },
  });
  const grid = s("g", { class: "grid" });
  for (const t of ticks(y0, y1, 5)) {
    grid.append(
      s("line", { x1: margin.left, x2: width - margin.right, y1: py(t), y2: py(t) }),
      s("text", { x: margin.left - 6, y: py(t) + 4, "text-anchor": "end" }, fmtNumber(t, 3)),
    );
  }
  for (const t of ticks(x0, x1, 6)) {
    grid.append(
      s("line", { x1: px(t), x2: px(t), y1: margin.top, y2: margin.top + innerH, class: "vertical" }),
      s("text", { x: px(t), y: height - margin.bottom + 16, "text-anchor": "middle" }, fmtNumber(t, 3)),
    );
  }
  grid.append(s("text", { x: margin.left + innerW / 2, y: height - 4, "text-anchor": "middle", class: "axis-label" }, xLabel));
  svg.append(grid);

  withPoints.forEach((one, index) => {
    const color = one.color || PALETTE[index % PALETTE.length];
    const sorted = [...one.points].sort((a, b) => a[0] - b[0]).filter((p) => Number.isFinite(p[1]));
    const d = sorted.map((p, i) => `${i ? "L" : "M"}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join("");
    svg.append(
      s("path", {
        d,
        fill: "none",
        stroke: color,
        "stroke-width": 2,
        class: "series",
        dataset: { series: one.label, points: String(sorted.length) },
      }),
    );
    if (sorted.length <= 40) {
      for (const p of sorted) svg.append(s("circle", { cx: px(p[0]), cy: py(p[1]), r: 2.5, fill: color }));
    }
  });
  box.append(svg);
  box.append(
    h(
      "ul",
      { class: "legend" },
      withPoints.map((one, index) => {
        const last = one.points[one.points.length - 1];
        return h(
          "li",
          { dataset: { series: one.label } },
          s("svg", { width: 14, height: 14, class: "swatch" }, s("rect", { width: 14, height: 14, rx: 3, fill: one.color || PALETTE[index % PALETTE.length] })),
          ` ${one.label}`,
          h("span", { class: "muted" }, ` (${one.points.length} pts, last ${fmtNumber(last[1])})`),
        );
      }),
    ),
  );
  return box;
}
