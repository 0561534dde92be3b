// Two tiny SVG charts, drawn with no library: a series over time (line and area) and bars by
// label. The SVG scales to its box (viewBox); colours come from style.css classes.

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// A round top for the axis: 1, 2 or 5 times a power of ten, at least `max`.
function niceMax(max) {
  if (!(max > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

function short(n) {
  if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
  return `${+n.toFixed(n < 10 ? 1 : 0)}`;
}

// points: [{x: label under the axis (or ""), y: number}], oldest first.
export function lineChart(points, { title = "", width = 560, height = 180, kind = "a" } = {}) {
  const pad = { l: 40, r: 10, t: 22, b: 22 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  const top = niceMax(Math.max(0, ...points.map((p) => p.y)));
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: `chart chart-${kind}`,
    role: "img",
    "aria-label": title,
  });
  svg.append(s("text", { x: pad.l, y: 14, class: "chart-title" }, title));
  for (const f of [0, 0.5, 1]) {
    const y = pad.t + hgt * (1 - f);
    svg.append(s("line", { x1: pad.l, x2: pad.l + w, y1: y, y2: y, class: "chart-grid" }));
    svg.append(s("text", { x: pad.l - 6, y: y + 4, class: "chart-axis", "text-anchor": "end" }, short(top * f)));
  }
  const n = points.length;
  const xOf = (i) => pad.l + (n > 1 ? (w * i) / (n - 1) : w / 2);
  const yOf = (v) => pad.t + hgt * (1 - v / top);
  if (n) {
    const line = points.map((p, i) => `${i ? "L" : "M"}${xOf(i).toFixed(1)},${yOf(p.y).toFixed(1)}`);
    const area = `${line.join("")}L${xOf(n - 1).toFixed(1)},${pad.t + hgt}L${xOf(0).toFixed(1)},${pad.t + hgt}Z`;
    svg.append(s("path", { d: area, class: "chart-area" }));
    svg.append(s("path", { d: line.join(""), class: "chart-line" }));
    const last = points[n - 1];
    svg.append(s("circle", { cx: xOf(n - 1), cy: yOf(last.y), r: 3, class: "chart-dot" }));
    points.forEach((p, i) => {
      if (p.x) {
        const anchor = i === 0 ? "start" : i === n - 1 ? "end" : "middle";
        svg.append(s("text", { x: xOf(i), y: height - 6, class: "chart-axis", "text-anchor": anchor }, p.x));
      }
    });
  }
  return svg;
}

// bars: [{label, value}], drawn as columns (by day) or rows (by key, by model).
export function barChart(bars, { title = "", width = 560, height = 180, kind = "a", rows = false } = {}) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: `chart chart-${kind}`, role: "img", "aria-label": title });
  svg.append(s("text", { x: 0, y: 14, class: "chart-title" }, title));
  const top = niceMax(Math.max(0, ...bars.map((b) => b.value)));
  if (rows) {
    const labelW = 150;
    const rowH = Math.min(26, (height - 24) / Math.max(bars.length, 1));
    bars.forEach((b, i) => {
      const y = 24 + i * rowH;
      const bw = ((width - labelW - 60) * b.value) / top;
      svg.append(s("text", { x: labelW - 8, y: y + rowH * 0.65, class: "chart-axis", "text-anchor": "end" }, clip(b.label, 22)));
      svg.append(s("rect", { x: labelW, y: y + 3, width: Math.max(bw, 1), height: rowH - 6, rx: 2, class: "chart-bar" }));
      svg.append(s("text", { x: labelW + bw + 6, y: y + rowH * 0.65, class: "chart-axis" }, short(b.value)));
    });
    return svg;
  }
  const pad = { l: 40, r: 6, t: 22, b: 22 };
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  for (const f of [0, 0.5, 1]) {
    const y = pad.t + hgt * (1 - f);
    svg.append(s("line", { x1: pad.l, x2: pad.l + w, y1: y, y2: y, class: "chart-grid" }));
    svg.append(s("text", { x: pad.l - 6, y: y + 4, class: "chart-axis", "text-anchor": "end" }, short(top * f)));
  }
  const slot = w / Math.max(bars.length, 1);
  const every = Math.ceil(bars.length / 8);
  bars.forEach((b, i) => {
    const bh = (hgt * b.value) / top;
    const x = pad.l + i * slot + slot * 0.15;
    svg.append(s("rect", { x, y: pad.t + hgt - bh, width: slot * 0.7, height: Math.max(bh, 0.5), rx: 2, class: "chart-bar" }));
    if (i % every === 0) {
      svg.append(s("text", { x: x + slot * 0.35, y: height - 6, class: "chart-axis", "text-anchor": "middle" }, clip(b.label, 10)));
    }
  });
  return svg;
}

function clip(text, n) {
  text = String(text ?? "–");
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}
