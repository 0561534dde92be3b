// The shell: the header (navigation, who is signed in, the language switch), the sign-in
// form, and a hash router that shows one page at a time and stops the last one's timers.

import { loadSession, needsSignIn, onSession, session, signIn, signOut } from "./api.js";
import { clear, h } from "./dom.js";
import { applyStatic, language, setLanguage, t } from "./i18n.js";
import * as keys from "./keys.js";
import * as models from "./models.js";
import * as overview from "./overview.js";
import * as playground from "./playground.js";
import * as usage from "./usage.js";

const PAGES = { overview, models, keys, usage, playground };
const $ = (id) => document.getElementById(id);
let current = null; // { name, stop }

function pageName() {
  const name = location.hash.replace(/^#/, "");
  return name in PAGES ? name : "overview";
}

function show() {
  if (current && current.stop) current.stop();
  current = null;
  const name = pageName();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === name);
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = clear($("page"));
  const locked = needsSignIn();
  $("signin").hidden = !locked;
  $("page").hidden = locked;
  if (locked) {
    $("signin-key").focus();
    return;
  }
  root.dataset.page = name;
  current = { name, stop: PAGES[name].show(root) };
}

function header() {
  const who = $("who");
  if (session.signed_in) who.textContent = t("session.as", { key: session.key || "" });
  else if (session.auth === "open") who.textContent = t("session.open");
  else who.textContent = "";
  $("signout").hidden = !session.signed_in;
  $("lang").textContent = t("lang.switch");
}

async function submitSignIn(event) {
  event.preventDefault();
  const error = $("signin-error");
  error.textContent = "";
  try {
    await signIn($("signin-key").value);
    $("signin-key").value = "";
  } catch (err) {
    if (err.status === 401) error.textContent = t("signin.wrong");
    else if (err.status === 403) error.textContent = t("signin.notadmin");
    else error.textContent = t("common.error", { message: err.message });
  }
}

let shown = null;
onSession(() => {
  header();
  // Re-render only when the lock changes: a 401 mid-page shows the form, a sign-in the page.
  const locked = needsSignIn();
  if (shown !== locked) {
    shown = locked;
    show();
  }
});

async function start() {
  applyStatic();
  $("lang").addEventListener("click", () => {
    setLanguage(language() === "zh" ? "en" : "zh");
    header();
    show();
  });
  $("signout").addEventListener("click", () => signOut().catch(() => {}));
  $("signin-form").addEventListener("submit", submitSignIn);
  window.addEventListener("hashchange", show);
  try {
    await loadSession();
  } catch (err) {
    clear($("page"), h("p", { class: "error" }, t("common.error", { message: err.message })));
  }
}

start();
