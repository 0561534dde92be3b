// Usage and audit: tokens and requests by day, by key and by model, each a chart with its
// table under it and a CSV export; then the audit log with its filters, page by page.

import { api } from "./api.js";
import { barChart } from "./chart.js";
import { clear, h, num, section, table, time } from "./dom.js";
import { t } from "./i18n.js";

function daysAgo(n) {
  const d = new Date(Date.now() - n * 86400000);
  return d.toISOString().slice(0, 10);
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  return q.toString();
}

const GROUPS = [
  { by: "day", title: "usage.byday", col: "col.day", rows: false },
  { by: "key", title: "usage.bykey", col: "col.key", rows: true },
  { by: "model", title: "usage.bymodel", col: "col.model", rows: true },
];

function groupView(group, data, filters) {
  const label = (r) => r[group.by] ?? "–";
  const rows = group.by === "day" ? [...data].sort((a, b) => a.day.localeCompare(b.day)) : [...data].sort((a, b) => b.total_tokens - a.total_tokens);
  const columns = [
    { label: t(group.col), cell: label },
    { label: t("col.requests"), cell: (r) => num(r.requests), class: "num" },
    { label: t("col.errors"), cell: (r) => num(r.errors), class: "num" },
    { label: t("col.prompt"), cell: (r) => num(r.prompt_tokens), class: "num" },
    { label: t("col.completion"), cell: (r) => num(r.completion_tokens), class: "num" },
    { label: t("col.total"), cell: (r) => num(r.total_tokens), class: "num" },
    { label: t("col.latency"), cell: (r) => (r.avg_latency_ms === null ? "–" : `${num(r.avg_latency_ms)} ms`), class: "num" },
  ];
  const csv = `/api/v1/usage?${query({ ...filters, group_by: group.by, format: "csv" })}`;
  const height = group.rows ? Math.max(80, 30 + rows.length * 26) : 180;
  const tokens = barChart(rows.map((r) => ({ label: label(r), value: r.total_tokens })), { title: t("usage.tokens"), rows: group.rows, height, kind: "a" });
  const requests = barChart(rows.map((r) => ({ label: label(r), value: r.requests })), { title: t("usage.requests"), rows: group.rows, height, kind: "b" });
  const grid = table(columns, rows, t("usage.none"));
  grid.id = `usage-by-${group.by}`;
  return h(
    "section",
    { class: "panel" },
    h("div", { class: "panel-head" }, h("h2", {}, t(group.title)), h("a", { href: csv, download: `llmd-usage-by-${group.by}.csv`, class: "button small", id: `csv-${group.by}` }, t("common.csv"))),
    rows.length ? h("div", { class: "chart-row" }, h("div", { class: "chart-box" }, tokens), h("div", { class: "chart-box" }, requests)) : null,
    grid,
  );
}

export function show(root) {
  let stopped = false;
  const filters = { since: daysAgo(29), key: "", model: "" };
  const audit = { since: daysAgo(29), actor: "", after: null };
  const usageBox = h("div", { id: "usage-groups" });
  const auditBox = h("div", { id: "audit" });

  function input(obj, name, attrs) {
    const el = h("input", { name, value: obj[name], ...attrs });
    el.addEventListener("change", () => {
      obj[name] = el.value;
    });
    return el;
  }

  const usageForm = h(
    "form",
    { class: "filters", id: "usage-filters" },
    h("label", { class: "field" }, h("span", {}, t("usage.since")), input(filters, "since", { type: "date" })),
    h("label", { class: "field" }, h("span", {}, t("usage.key")), input(filters, "key", { placeholder: t("common.all") })),
    h("label", { class: "field" }, h("span", {}, t("usage.model")), input(filters, "model", { placeholder: t("common.all") })),
    h("button", { type: "submit" }, t("common.apply")),
  );
  usageForm.addEventListener("submit", (e) => {
    e.preventDefault();
    loadUsage();
  });

  const auditForm = h(
    "form",
    { class: "filters", id: "audit-filters" },
    h("label", { class: "field" }, h("span", {}, t("usage.since")), input(audit, "since", { type: "date" })),
    h("label", { class: "field" }, h("span", {}, t("audit.actor")), input(audit, "actor", { placeholder: "key:NAME" })),
    h("button", { type: "submit" }, t("common.apply")),
  );
  auditForm.addEventListener("submit", (e) => {
    e.preventDefault();
    audit.after = null;
    loadAudit();
  });

  async function loadUsage() {
    try {
      const pages = await Promise.all(GROUPS.map((g) => api(`/api/v1/usage?${query({ ...filters, group_by: g.by, limit: 1000 })}`)));
      if (stopped) return;
      clear(usageBox, GROUPS.map((g, i) => groupView(g, pages[i].data, filters)));
    } catch (err) {
      if (stopped || err.status === 401) return;
      clear(usageBox, h("p", { class: err.status === 404 ? "muted" : "error" }, err.status === 404 ? t("usage.off") : t("common.error", { message: err.message })));
    }
  }

  async function loadAudit() {
    try {
      const page = await api(`/api/v1/audit?${query({ since: audit.since, actor: audit.actor, after: audit.after, limit: 50 })}`);
      if (stopped) return;
      const columns = [
        { label: t("col.time"), cell: (r) => time(r.time), class: "small" },
        { label: t("col.actor"), cell: (r) => r.actor },
        { label: t("col.action"), cell: (r) => h("code", {}, r.action) },
        { label: t("col.target"), cell: (r) => r.target ?? "–" },
        { label: t("col.client"), cell: (r) => r.client ?? "–", class: "small" },
        { label: t("col.detail"), cell: (r) => (r.detail ? h("code", { class: "small" }, JSON.stringify(r.detail)) : ""), class: "detail" },
      ];
      const grid = table(columns, page.data, t("audit.none"));
      grid.id = "audit-table";
      const more = page.has_more
        ? h("button", { type: "button", onclick: () => { audit.after = page.last_id; loadAudit(); } }, t("common.more"))
        : null;
      const csv = `/api/v1/audit?${query({ since: audit.since, actor: audit.actor, format: "csv" })}`;
      clear(auditBox, grid, h("div", { class: "row" }, more, h("a", { href: csv, download: "llmd-audit.csv", class: "button small", id: "csv-audit" }, t("common.csv"))));
    } catch (err) {
      if (!stopped && err.status !== 401) clear(auditBox, h("p", { class: "error" }, t("common.error", { message: err.message })));
    }
  }

  clear(root, section(t("usage.title"), usageForm), usageBox, section(t("audit.title"), auditForm, auditBox));
  loadUsage();
  loadAudit();
  return () => {
    stopped = true;
  };
}
