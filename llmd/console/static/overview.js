// Overview: version, uptime, health and the watchdogs (systemd's over the daemon, the daemon's
// over the model processes); the models by state (with a failed one's reason); the
// memory against the budget; requests running and queued; and the last hour's output
// tokens/s and requests/min as charts, refreshed every few seconds while the page is shown.

import { api } from "./api.js";
import { lineChart } from "./chart.js";
import { badge, bar, bytes, clear, duration, h, num, section, table } from "./dom.js";
import { t } from "./i18n.js";

const EVERY_S = 5;

export function stateBadge(state) {
  const kind = { ready: "ok", failed: "bad", loading: "busy", unloading: "busy", restarting: "busy", pending: "busy" }[state];
  return badge(t(`state.${state}`), kind || "plain");
}

export function memoryBar(memory) {
  const label = t("ov.memory.label", {
    used: bytes(memory.used_bytes),
    budget: bytes(memory.budget_bytes),
    total: bytes(memory.system_total_bytes),
    free: bytes(memory.system_available_bytes),
  });
  return bar(memory.used_bytes, memory.budget_bytes, label);
}

function card(label, value, id) {
  return h("div", { class: "card", id }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value));
}

// systemd's watchdog (on or off, the last ping's age) and, under it, the model processes' hang
// limit; the details in the tooltip.
function watchdogCard(w) {
  const secs = (s) => num(s, s < 10 ? 1 : 0);
  let systemd;
  if (!w.enabled) systemd = badge(t("ov.watchdog.off"), "plain");
  else if (w.since_ping_s === null) systemd = badge(t("ov.watchdog.wait"), "busy");
  else systemd = badge(t("ov.watchdog.on", { ago: secs(w.since_ping_s) }), w.since_ping_s <= w.timeout_s ? "ok" : "bad");
  const title = w.enabled
    ? t("ov.watchdog.title", { timeout: secs(w.timeout_s), every: secs(w.ping_interval_s) })
    : t("ov.watchdog.offtitle");
  const value = h(
    "div",
    { title },
    systemd,
    h("div", { class: "card-note muted", id: "ov-watchdog-models" }, t("ov.watchdog.models", { s: secs(w.model_hang_timeout_s) })),
  );
  return card(t("ov.watchdog"), value, "ov-watchdog");
}

function render(root, health, activity) {
  const models = health.models;
  const count = (s) => models.filter((m) => m.state === s).length;
  const other = models.length - count("ready") - count("loading") - count("failed");
  const running = models.reduce((a, m) => a + m.running, 0);
  const queued = models.reduce((a, m) => a + m.queued, 0);
  const cards = h(
    "div",
    { class: "cards" },
    card(t("ov.version"), health.version, "ov-version"),
    card(t("ov.uptime"), duration(health.uptime_s), "ov-uptime"),
    card(t("ov.health"), badge(health.status, health.status === "ok" ? "ok" : "bad"), "ov-health"),
    watchdogCard(health.watchdog),
    card(t("ov.default"), health.default_model || "–", "ov-default"),
    card(t("ov.running"), num(running), "ov-running"),
    card(t("ov.queued"), num(queued), "ov-queued"),
  );
  const columns = [
    { label: t("col.model"), cell: (m) => h("strong", {}, m.name) },
    { label: t("col.state"), cell: (m) => stateBadge(m.state) },
    { label: t("col.running"), cell: (m) => num(m.running), class: "num" },
    { label: t("col.queued"), cell: (m) => num(m.queued), class: "num" },
    { label: t("col.kv"), cell: (m) => `${num(m.kv_usage * 100, 1)}%`, class: "num" },
    { label: t("col.memory"), cell: (m) => bytes(m.memory_rss_bytes || m.memory_estimated_bytes), class: "num" },
    { label: t("col.reason"), cell: (m) => (m.error ? h("span", { class: "error" }, m.error) : "") },
  ];
  const summary = t("ov.models.summary", { ready: count("ready"), loading: count("loading"), failed: count("failed"), other });
  clear(
    root,
    cards,
    section(t("ov.memory"), h("div", { id: "ov-memory" }, memoryBar(health.memory))),
    section(t("ov.models"), h("p", { class: "muted", id: "ov-summary" }, summary), h("div", { id: "ov-models" }, table(columns, models))),
    section(t("ov.activity"), charts(activity), h("p", { class: "muted small" }, t("ov.live", { s: EVERY_S }))),
  );
}

function charts(activity) {
  if (!activity) return h("p", { class: "muted" }, t("ov.chart.none"));
  const minutes = activity.minutes;
  const label = (m, i) => (i % 15 === 0 || i === minutes.length - 1 ? new Date(m.start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "");
  const tps = minutes.map((m, i) => ({ x: label(m, i), y: m.output_tokens_per_s }));
  const rpm = minutes.map((m, i) => ({ x: label(m, i), y: m.requests }));
  return h(
    "div",
    { class: "chart-row", id: "ov-charts" },
    h("div", { class: "chart-box" }, lineChart(tps, { title: t("ov.chart.tps"), kind: "a" })),
    h("div", { class: "chart-box" }, lineChart(rpm, { title: t("ov.chart.rpm"), kind: "b" })),
  );
}

export function show(root) {
  let stopped = false;
  let timer = null;
  root.append(h("p", { class: "muted" }, t("common.loading")));
  async function tick() {
    try {
      const [health, activity] = await Promise.all([
        api("/api/v1/health"),
        api("/api/v1/activity"),
      ]);
      if (!stopped) render(root, health, activity);
    } catch (err) {
      if (!stopped && err.status !== 401) clear(root, h("p", { class: "error" }, t("common.error", { message: err.message })));
    }
    if (!stopped) timer = setTimeout(tick, EVERY_S * 1000);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
