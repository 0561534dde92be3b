// Playground: chat with any model through /v1/chat/completions, as any client would, the
// answer streamed (fetch and a ReadableStream, SSE parsed here) with its numbers under it:
// time to first token, tokens/s, output tokens, prompt tokens and how many were cached.

import { api, errorOf, headers } from "./api.js";
import { clear, h, num } from "./dom.js";
import { t } from "./i18n.js";

// Kept across visits to the page while the console is open (not stored anywhere).
const state = { messages: [], model: "", system: "", temperature: 0.7, max_tokens: 512, json: false };

// Yields each SSE event's data (the text after "data:"), until the stream ends.
export async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
    if (done) return;
  }
}

function bubble(role, text) {
  return h("div", { class: `msg msg-${role}` }, h("div", { class: "msg-role" }, t(role === "user" ? "pg.you" : "pg.assistant")), h("div", { class: "msg-text" }, text));
}

function statsLine(s) {
  return t("pg.stats", {
    ttft: s.ttft_ms === null ? "–" : num(s.ttft_ms),
    tps: s.tps === null ? "–" : num(s.tps, 1),
    out: num(s.completion_tokens),
    prompt: num(s.prompt_tokens),
    cached: num(s.cached_tokens),
  });
}

export function show(root) {
  let stopped = false;
  let controller = null;
  const log = h("div", { class: "chat-log", id: "pg-log", "aria-live": "polite" });
  const model = h("select", { id: "pg-model", name: "model" });
  const system = h("textarea", { id: "pg-system", rows: 3, value: state.system });
  const temperature = h("input", { id: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1, value: state.temperature });
  const maxTokens = h("input", { id: "pg-max", type: "number", min: 1, step: 1, value: state.max_tokens });
  const json = h("input", { id: "pg-json", type: "checkbox", checked: state.json });
  const input = h("textarea", { id: "pg-input", rows: 3, placeholder: t("pg.placeholder") });
  const send = h("button", { type: "submit", class: "primary", id: "pg-send" }, t("pg.send"));
  const stop = h("button", { type: "button", id: "pg-stop", disabled: true }, t("pg.stop"));
  const clearBtn = h("button", { type: "button", id: "pg-clear" }, t("pg.clear"));
  const error = h("p", { class: "error", role: "alert", id: "pg-error" });

  function redraw() {
    clear(log, state.messages.map((m) => [bubble(m.role, m.content), m.stats ? h("div", { class: "msg-stats" }, statsLine(m.stats)) : null]));
  }

  async function ask(event) {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    Object.assign(state, { model: model.value, system: system.value, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value), json: json.checked });
    error.textContent = "";
    state.messages.push({ role: "user", content: text });
    input.value = "";
    redraw();
    const answer = h("div", { class: "msg-text streaming" });
    const statsEl = h("div", { class: "msg-stats" });
    log.append(h("div", { class: "msg msg-assistant" }, h("div", { class: "msg-role" }, t("pg.assistant")), answer), statsEl);
    const messages = [...(state.system ? [{ role: "system", content: state.system }] : []), ...state.messages.map(({ role, content }) => ({ role, content }))];
    const body = { model: state.model, messages, stream: true, stream_options: { include_usage: true }, temperature: state.temperature, max_tokens: state.max_tokens };
    if (state.json) body.response_format = { type: "json_object" };
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let first = null;
    let text_ = "";
    let usage = null;
    try {
      // Not api(): the answer is a stream read as it comes, not one JSON body.
      const resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers("POST", body), body: JSON.stringify(body), credentials: "same-origin", signal: controller.signal });
      if (!resp.ok) {
        if (resp.status === 401) return void api("/api/v1/health").catch(() => {}); // shows the sign-in form
        throw await errorOf(resp);
      }
      for await (const data of sseData(resp.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (first === null) first = performance.now();
          text_ += delta.content;
          answer.textContent = text_;
          log.scrollTop = log.scrollHeight;
        }
        if (chunk.usage) usage = chunk.usage;
      }
    } catch (err) {
      if (err.name !== "AbortError") error.textContent = t("common.error", { message: err.message });
    } finally {
      const end = performance.now();
      controller = null;
      send.disabled = false;
      stop.disabled = true;
      answer.classList.remove("streaming");
      const out = usage ? usage.completion_tokens : 0;
      const stats = {
        ttft_ms: first === null ? null : first - started,
        // Tokens after the first over the time after it: the decoding speed a user sees.
        tps: first !== null && out > 1 && end > first ? ((out - 1) * 1000) / (end - first) : null,
        completion_tokens: out,
        prompt_tokens: usage ? usage.prompt_tokens : 0,
        cached_tokens: usage && usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens || 0 : 0,
      };
      if (text_) state.messages.push({ role: "assistant", content: text_, stats });
      if (!stopped) {
        statsEl.textContent = statsLine(stats);
        statsEl.id = "pg-last-stats";
      }
    }
  }

  async function loadModels() {
    try {
      const list = await api("/v1/models");
      const ids = list.data.map((m) => m.id);
      clear(model, ids.map((id) => h("option", { value: id, selected: id === state.model }, id)));
      if (!ids.length) error.textContent = t("pg.nomodel");
    } catch (err) {
      if (err.status !== 401) error.textContent = t("common.error", { message: err.message });
    }
  }

  const form = h(
    "form",
    { id: "pg-form", class: "chat-input" },
    input,
    h("div", { class: "row" }, send, stop, clearBtn),
  );
  form.addEventListener("submit", ask);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  stop.addEventListener("click", () => controller && controller.abort());
  clearBtn.addEventListener("click", () => {
    state.messages = [];
    redraw();
  });
  const side = h(
    "aside",
    { class: "panel settings" },
    h("label", { class: "field" }, h("span", {}, t("pg.model")), model),
    h("label", { class: "field" }, h("span", {}, t("pg.system")), system),
    h("div", { class: "row" }, h("label", { class: "field" }, h("span", {}, t("pg.temperature")), temperature), h("label", { class: "field" }, h("span", {}, t("pg.max")), maxTokens)),
    h("label", { class: "check" }, json, t("pg.json")),
  );
  clear(root, h("div", { class: "playground" }, side, h("section", { class: "panel chat" }, h("h2", {}, t("pg.title")), log, error, form)));
  redraw();
  loadModels();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}
