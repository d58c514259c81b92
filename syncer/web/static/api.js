// The REST API as the browser uses it: the session cookie goes along by itself; every
// state-changing request carries the session's CSRF token (auth.py explains why).

let csrf = null;
let csrfHeader = "X-Syncer-CSRF";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function call(method, path, body) {
  const headers = {};
  if (method !== "GET") {
    if (csrf) headers[csrfHeader] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || resp.statusText);
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body ?? {});
export const patch = (path, body) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);

export async function startSession() {
  const s = await get("/rest/gui/session");
  csrf = s.csrf;
  csrfHeader = s.csrf_header || csrfHeader;
  return s;
}

export async function login(password) {
  await call("POST", "/login", { password });
}

// Long-polls /rest/events from `since`, handing each batch to onEvents; tells onState
// "live", "retrying" or "logged-out". A gap in the ids (events that left the daemon's buffer
// before we asked) is reported as onGap so the caller can reload everything.
export async function eventLoop(since, onEvents, onState, onGap) {
  let last = since;
  let delay = 1000;
  for (;;) {
    try {
      const batch = await get(`/rest/events?since=${last}&timeout=50`);
      onState("live");
      delay = 1000;
      if (batch.length && batch[0].id > last + 1 && last > 0) onGap();
      if (batch.length) {
        last = batch[batch.length - 1].id;
        onEvents(batch);
      }
    } catch (e) {
      if (e.status === 401) { onState("logged-out"); return; }
      onState("retrying");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }
}
