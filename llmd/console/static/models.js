// Models: every model llmd knows (state, file, memory estimated and measured, context, slots,
// KV use, keep-alive) with load / unload / pin / reload; what fits in the memory budget (the
// plan); how to add a model; and each failed file's reason.

import { api } from "./api.js";
import { badge, bytes, clear, duration, h, num, section, table } from "./dom.js";
import { t } from "./i18n.js";
import { memoryBar, stateBadge } from "./overview.js";

const EVERY_S = 5;
const LOADED = new Set(["ready", "loading", "restarting"]);

function folderOf(models) {
  const dropped = models.find((m) => m.source === "models_dir" && m.path);
  return dropped ? dropped.path.replace(/[/\\][^/\\]*$/, "") : null;
}

export function show(root) {
  let stopped = false;
  let timer = null;
  const busy = new Map(); // model name -> the action under way
  let last = null;
  let problem = null; // the last action's error, shown above the table until the next one

  async function act(model, action, body) {
    problem = null;
    busy.set(model.name, action);
    draw();
    try {
      await api(`/api/v1/models/${encodeURIComponent(model.name)}/${action}`, { method: "POST", body: body || {} });
    } catch (err) {
      if (err.status !== 401) problem = `${model.name}: ${t("common.error", { message: err.message })}`;
    } finally {
      busy.delete(model.name);
      await refresh();
    }
  }

  function actions(m) {
    const doing = busy.get(m.name);
    if (doing) return h("span", { class: "muted" }, t("models.busy", { action: t(`models.${doing}`) }));
    const btn = (action, label, body) => h("button", { type: "button", class: "small", "data-action": action, "data-model": m.name, onclick: () => act(m, action, body) }, t(label));
    const loaded = LOADED.has(m.state);
    return h(
      "div",
      { class: "actions" },
      loaded ? btn("unload", "models.unload") : btn("load", "models.load"),
      m.pinned ? btn("pin", "models.unpin", { pinned: false }) : btn("pin", "models.pin", { pinned: true }),
      loaded ? btn("reload", "models.reload") : null,
    );
  }

  function draw() {
    if (!last || stopped) return;
    const { list, health, plan } = last;
    const live = new Map(health.models.map((m) => [m.name, m]));
    const columns = [
      { label: t("col.model"), cell: (m) => [h("strong", {}, m.name), m.aliases.length ? h("div", { class: "muted small" }, m.aliases.join(", ")) : null] },
      { label: t("col.state"), cell: (m) => [stateBadge(m.state), m.pinned ? badge(t("state.pinned"), "info") : null] },
      { label: t("col.file"), cell: (m) => [bytes(m.file_size_bytes), h("div", { class: "muted small" }, [m.quantization, m.architecture].filter(Boolean).join(" · "))], class: "num" },
      { label: t("col.estimated"), cell: (m) => bytes(m.memory.corrected_estimate_bytes || m.memory.estimated_bytes), class: "num" },
      { label: t("col.measured"), cell: (m) => bytes(m.memory.measured_bytes), class: "num" },
      { label: t("col.context"), cell: (m) => `${num(m.ctx_per_seq)} / ${num(m.context_length)}`, class: "num" },
      { label: t("col.slots"), cell: (m) => num(m.parallel), class: "num" },
      { label: t("col.kv"), cell: (m) => (live.has(m.name) && LOADED.has(m.state) ? `${num(live.get(m.name).kv_usage * 100, 1)}%` : "–"), class: "num" },
      { label: t("col.keepalive"), cell: (m) => [duration(m.keep_alive_s), m.expires_in_s !== null && m.expires_in_s !== undefined ? h("div", { class: "muted small" }, `⏱ ${duration(m.expires_in_s)}`) : null], class: "num" },
      { label: t("col.actions"), cell: actions },
    ];
    const models = table(columns, list.models);
    models.id = "models-table";
    for (const [i, m] of list.models.entries()) models.tBodies[0].rows[i].dataset.model = m.name;
    const failed = list.models.filter((m) => m.state === "failed" || m.error);
    clear(
      root,
      section(t("models.title"), h("div", { id: "models-memory" }, memoryBar(list.memory)), problem ? h("p", { class: "error", role: "alert", id: "models-error" }, problem) : null, models),
      section(t("models.plan"), planView(plan)),
      h(
        "div",
        { class: "two" },
        section(t("models.failed"), failed.length ? h("ul", { class: "failed", id: "models-failed" }, failed.map((m) => h("li", {}, h("strong", {}, m.name), ": ", h("span", { class: "error" }, m.error || t("state.failed"))))) : h("p", { class: "muted" }, t("models.failed.none"))),
        section(t("models.add"), h("p", {}, t("models.add.help", { dir: folderOf(list.models) ? ` (${folderOf(list.models)})` : "" }))),
      ),
    );
  }

  function planView(plan) {
    if (!plan) return h("p", { class: "muted" }, "–");
    const tog = plan.together;
    const line = tog.all_fit
      ? t("models.plan.all", { bytes: bytes(tog.resident_bytes) })
      : t("models.plan.some", { resident: tog.resident.join(", ") || t("common.none"), evict: tog.load_on_demand_by_eviction.join(", ") || t("common.none") });
    const columns = [
      { label: t("col.model"), cell: (m) => m.name },
      { label: t("col.estimated"), cell: (m) => (m.error ? h("span", { class: "error" }, m.error) : bytes(m.estimated_bytes)), class: "num" },
      { label: t("col.fits"), cell: (m) => (m.error ? "–" : badge(t(m.fits_alone ? "common.yes" : "common.no"), m.fits_alone ? "ok" : "bad")) },
      { label: t("col.maxctx"), cell: (m) => (m.error ? "–" : Object.entries(m.max_ctx_per_seq_alone).map(([p, c]) => `${p}×${num(c)}`).join("  ")), class: "small" },
    ];
    return [h("p", { id: "models-plan", class: tog.all_fit ? "" : "warn-text" }, line), table(columns, plan.models)];
  }

  async function refresh() {
    try {
      const [list, health, plan] = await Promise.all([api("/api/v1/models"), api("/api/v1/health"), api("/api/v1/models/plan").catch(() => null)]);
      last = { list, health, plan };
      draw();
    } catch (err) {
      if (!stopped && err.status !== 401) clear(root, h("p", { class: "error" }, t("common.error", { message: err.message })));
    }
  }

  async function tick() {
    // Not while an action runs: its answer redraws, and a click must not meet a moved button.
    if (!busy.size) await refresh();
    if (!stopped) timer = setTimeout(tick, EVERY_S * 1000);
  }

  root.append(h("p", { class: "muted" }, t("common.loading")));
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
