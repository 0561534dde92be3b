// Keys: create one (name, admin or not, models allowed, rpm / tpm / concurrency / monthly
// limits; the secret shown once with a copy button), revoke one, and each key's tokens this
// month against its monthly quota.

import { api, session } from "./api.js";
import { badge, bar, clear, h, num, section, table } from "./dom.js";
import { t } from "./i18n.js";

const LIMITS = [
  ["rpm", "keys.rpm"],
  ["tpm", "keys.tpm"],
  ["concurrency", "keys.concurrency"],
  ["monthly_tokens", "keys.monthly"],
];

function field(label, input) {
  return h("label", { class: "field" }, h("span", {}, label), input);
}

function secretBox(created, onDone) {
  const input = h("input", { type: "text", readonly: true, value: created.secret, id: "key-secret", class: "mono", spellcheck: "false" });
  const copy = h("button", { type: "button", id: "key-copy" }, t("keys.copy"));
  copy.addEventListener("click", async () => {
    input.select();
    try {
      await navigator.clipboard.writeText(created.secret);
    } catch {
      document.execCommand("copy"); // a page not in a secure context has no clipboard API
    }
    copy.textContent = t("keys.copied");
  });
  const done = h("button", { type: "button", class: "primary", id: "key-done", onclick: onDone }, t("keys.done"));
  return h("div", { class: "secret", role: "alert" }, h("p", {}, t("keys.secret", { name: created.name })), h("div", { class: "row" }, input, copy, done));
}

function limits(k) {
  const parts = LIMITS.filter(([name]) => k[name]).map(([name, label]) => `${t(label)} ${num(k[name])}`);
  return parts.length ? parts.join(" · ") : h("span", { class: "muted" }, t("keys.unlimited"));
}

export function show(root) {
  let stopped = false;
  let secret = null; // the box with a new key's secret, until "Done"
  const confirming = new Set();

  function form(models) {
    const name = h("input", { name: "name", id: "key-name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._@\\-]{0,63}", autocomplete: "off" });
    const admin = h("input", { type: "checkbox", name: "admin", id: "key-admin" });
    const all = h("input", { type: "checkbox", id: "key-all-models", checked: true });
    const picks = models.map((m) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "model", value: m, disabled: true }), m));
    all.addEventListener("change", () => {
      for (const l of picks) l.firstChild.disabled = all.checked;
    });
    const nums = LIMITS.map(([key, label]) => field(t(label), h("input", { type: "number", min: 1, step: 1, name: key, id: `key-${key}` })));
    const description = h("input", { name: "description", id: "key-description" });
    const error = h("p", { class: "error", role: "alert" });
    const el = h(
      "form",
      { id: "key-form", class: "form" },
      h("div", { class: "row" }, field(t("keys.name"), name), field(t("keys.description"), description)),
      h("label", { class: "check" }, admin, t("keys.admin")),
      h("fieldset", {}, h("legend", {}, t("keys.models")), h("label", { class: "check" }, all, t("keys.models.all")), h("div", { class: "picks" }, picks)),
      h("div", { class: "row" }, nums),
      h("div", { class: "row" }, h("button", { type: "submit", class: "primary", id: "key-submit" }, t("keys.submit"))),
      error,
    );
    el.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const body = { name: name.value.trim(), admin: admin.checked, description: description.value };
      if (!all.checked) body.models = picks.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value);
      for (const [key] of LIMITS) {
        const v = el.elements[key].value;
        if (v) body[key] = Number(v);
      }
      try {
        const created = await api("/api/v1/keys", { method: "POST", body });
        el.reset();
        secret = secretBox(created, () => {
          secret = null;
          refresh();
        });
        // Shown from what the answer says, not asked again: the first key makes the API
        // require one, and a 401 now would replace the page before the secret is copied.
        const { secret: _, ...shown } = created;
        draw({ ...last, keys: [...last.keys, { ...shown, month_tokens: 0 }] });
        // The header said the API was open: no longer, from this key on.
        if (session.auth === "open") document.getElementById("who").textContent = t("session.locking");
      } catch (err) {
        if (err.status !== 401) error.textContent = t("common.error", { message: err.message });
      }
    });
    return el;
  }

  async function revoke(k) {
    problem = null;
    if (!confirming.has(k.name)) {
      confirming.add(k.name);
      return draw(last);
    }
    confirming.delete(k.name);
    try {
      await api(`/api/v1/keys/${encodeURIComponent(k.name)}`, { method: "DELETE" });
    } catch (err) {
      if (err.status !== 401) problem = `${k.name}: ${t("common.error", { message: err.message })}`;
    }
    await refresh();
  }

  function revokeCell(k) {
    if (k.status !== "active") return "";
    if (!confirming.has(k.name)) return h("button", { type: "button", class: "small danger", "data-revoke": k.name, onclick: () => revoke(k) }, t("keys.revoke"));
    return h(
      "div",
      { class: "actions" },
      h("button", { type: "button", class: "small danger", "data-confirm": k.name, onclick: () => revoke(k) }, t("keys.revoke.confirm", { name: k.name })),
      h("button", { type: "button", class: "small", onclick: () => { confirming.delete(k.name); draw(last); } }, t("common.cancel")),
    );
  }

  let last = null;
  let problem = null; // a revocation's error, shown above the table until the next one
  function draw(data) {
    if (stopped || !data) return;
    last = data;
    const { keys, models } = data;
    const columns = [
      { label: t("col.name"), cell: (k) => [h("strong", {}, k.name), k.description ? h("div", { class: "muted small" }, k.description) : null, h("div", { class: "muted small mono" }, k.prefix)] },
      { label: t("col.status"), cell: (k) => badge(t(`state.${k.status}`), k.status === "active" ? "ok" : "plain") },
      { label: t("col.admin"), cell: (k) => (k.admin ? badge(t("common.yes"), "info") : t("common.no")) },
      { label: t("col.models"), cell: (k) => (k.models ? k.models.join(", ") : t("common.all")) },
      { label: t("col.limits"), cell: limits, class: "small" },
      { label: t("col.month"), cell: (k) => (k.monthly_tokens ? bar(k.month_tokens, k.monthly_tokens, `${num(k.month_tokens)} / ${num(k.monthly_tokens)}`) : num(k.month_tokens)), class: "num" },
      { label: t("col.created"), cell: (k) => (k.created ? k.created.replace("T", " ").slice(0, 16) : "–"), class: "small" },
      { label: t("col.actions"), cell: revokeCell },
    ];
    const list = table(columns, keys, t("common.none"));
    list.id = "keys-table";
    for (const [i, k] of keys.entries()) list.tBodies[0].rows[i].dataset.key = k.name;
    const first = !keys.length && session.auth === "open" ? h("p", { class: "notice", id: "keys-first" }, t("keys.first")) : null;
    clear(root, secret, section(t("keys.title"), problem ? h("p", { class: "error", role: "alert" }, problem) : null, list), section(t("keys.create"), first, form(models)));
  }

  async function refresh() {
    try {
      const [list, models] = await Promise.all([api("/api/v1/keys"), api("/api/v1/models")]);
      // Each key's tokens this month: GET /api/v1/keys/{name} (a few keys in an office).
      const keys = await Promise.all(list.data.map((k) => (k.status === "active" ? api(`/api/v1/keys/${encodeURIComponent(k.name)}`) : { ...k, month_tokens: null })));
      draw({ keys, models: models.models.map((m) => m.name) });
    } catch (err) {
      if (!stopped && err.status !== 401) clear(root, secret, h("p", { class: "error" }, t("common.error", { message: err.message })));
    }
  }

  root.append(h("p", { class: "muted" }, t("common.loading")));
  refresh();
  return () => {
    stopped = true;
  };
}
