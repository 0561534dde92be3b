// The console's only way to the daemon: its own API, same origin, as the signed-in admin key
// (the HttpOnly session cookie) or with no key when the API is open (no keys, loopback).
// A state-changing call carries the session's CSRF token; a 401 means signed out.

export const session = {
  auth: "open",
  signed_in: false,
  key: null,
  admin: false,
  csrf: null,
  expires: null,
};

const listeners = new Set();

// `fn(session)` is called whenever the session changes (signed in or out, auth turned on).
export function onSession(fn) {
  listeners.add(fn);
}

function changed() {
  for (const fn of listeners) fn(session);
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export function headers(method, body) {
  const out = {};
  if (body !== undefined) out["Content-Type"] = "application/json";
  if (UNSAFE.has(method) && session.csrf) out["X-CSRF-Token"] = session.csrf;
  return out;
}

// The answer's JSON, or an ApiError with the daemon's message. `raw`: the Response itself
// (a stream, a CSV). A 401 marks the session signed out and shows the sign-in form.
export async function api(path, { method = "GET", body, raw = false, signal } = {}) {
  const resp = await fetch(path, {
    method,
    headers: headers(method, body),
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    signal,
  });
  if (resp.status === 401 && !path.startsWith("/ui/session")) signedOut();
  if (!resp.ok) throw await errorOf(resp);
  if (raw) return resp;
  return resp.status === 204 ? null : resp.json();
}

export async function errorOf(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  let code = null;
  try {
    const body = await resp.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || body.error.type || null;
    }
  } catch {
    // not JSON: the status line says enough
  }
  return new ApiError(resp.status, message, code);
}

function signedOut() {
  Object.assign(session, { auth: "required", signed_in: false, key: null, csrf: null });
  changed();
}

// What /ui/session says now: whether the API needs a key, and who is signed in.
export async function loadSession() {
  const resp = await fetch("/ui/session", { credentials: "same-origin", cache: "no-store" });
  if (!resp.ok) throw await errorOf(resp);
  Object.assign(session, await resp.json());
  changed();
  return session;
}

export async function signIn(key) {
  const resp = await fetch("/ui/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ key }),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!resp.ok) throw await errorOf(resp);
  Object.assign(session, await resp.json());
  changed();
}

export async function signOut() {
  try {
    await api("/ui/session", { method: "DELETE" });
  } finally {
    Object.assign(session, { signed_in: false, key: null, csrf: null });
    changed();
  }
}

export function needsSignIn() {
  return session.auth === "required" && !session.signed_in;
}
