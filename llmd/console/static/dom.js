// Small DOM and formatting helpers. Pages build their elements with h() rather than
// innerHTML, so text from the daemon (a model's error, a key's description) is never markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else if (name === "checked" || name === "disabled" || name === "selected") el[name] = true;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i === 0 ? 0 : n < 10 ? 2 : 1)} ${units[i]}`;
}

export function num(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString(undefined, {
    maximumFractionDigits: digits,
    minimumFractionDigits: digits,
  });
}

export function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 0) return "∞";
  s = Math.round(s);
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${mm}m`;
  if (mm) return `${mm}m ${s % 60}s`;
  return `${s}s`;
}

export function time(unix) {
  if (!unix) return "–";
  return new Date(unix * 1000).toLocaleString();
}

// A bar: `used` of `total`, with a label; classes warn/full past 85% and 100%.
export function bar(used, total, label) {
  const share = total ? Math.min(used / total, 1) : 0;
  const fill = h("div", { class: "bar-fill" });
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  const el = h("div", { class: "bar", role: "meter", "aria-valuenow": used, "aria-valuemax": total });
  if (total && used / total >= 1) el.classList.add("full");
  else if (share >= 0.85) el.classList.add("warn");
  el.append(fill);
  return h("div", { class: "bar-wrap" }, el, label ? h("div", { class: "bar-label" }, label) : null);
}

export function badge(text, kind) {
  return h("span", { class: `badge badge-${kind || "plain"}` }, text);
}

// A table: columns [{label, cell(row) -> node|string, class}], rows, or `empty` when none.
export function table(columns, rows, empty) {
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.label)));
  const body = rows.length
    ? rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.class }, c.cell(row)))))
    : [h("tr", {}, h("td", { class: "empty", colspan: columns.length }, empty || "–"))];
  return h("table", { class: "grid" }, h("thead", {}, head), h("tbody", {}, body));
}

export function section(title, ...children) {
  return h("section", { class: "panel" }, h("h2", {}, title), ...children);
}
