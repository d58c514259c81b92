// The syncer web UI: one page, state from the REST API, kept live by the event stream.
// Rendering builds DOM nodes with h() (never innerHTML), so names from peers stay text.

import * as api from "./api.js";
import { bytes, rate, ago, h, clear } from "./dom.js";

const state = {
  status: null,
  folders: new Map(),   // id -> summary row
  devices: [],
  pending: { devices: [], folders: [] },
  config: null,
  progress: new Map(),  // folder -> [{name, blocks, have, size}]
  open: new Set(),      // folder ids whose details are shown
  changes: [],          // recent change lines, newest first
};
const MAX_CHANGES = 50;
const $ = (sel) => document.querySelector(sel);

// --- start --------------------------------------------------------------------------------
async function main() {
  $("#login-form").addEventListener("submit", onLogin);
  window.addEventListener("hashchange", route);
  try {
    await api.startSession();
  } catch (e) {
    if (e.status === 401) return showLogin();
    throw e;
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  wireForms();
  route();
  await loadAll();
  setLive("live");
  // recent changes from what the daemon's event buffer still holds
  const last = state.status.last_event_id;
  const past = await api.get(`/rest/events?since=${Math.max(0, last - 2000)}&timeout=0&limit=1000` +
    "&events=LocalChangeDetected,RemoteChangeDetected,ItemFinished,ConflictCreated,ConflictResolved");
  onEvents(past.filter((e) => e.id <= last));
  api.eventLoop(last, onEvents, setLive, loadAll);
}

function showLogin() {
  $("#login").hidden = false;
  $("#app").hidden = true;
  setLive("logged-out");
}

async function onLogin(e) {
  e.preventDefault();
  try {
    await api.login(e.target.password.value);
    location.reload();
  } catch (err) {
    $("#login-error").textContent = err.message;
  }
}

function setLive(s) {
  const el = $("#live");
  el.textContent = s;
  el.className = "badge " + (s === "live" ? "ok" : "warn");
  if (s === "logged-out") showLogin();
}

function route() {
  const page = location.hash === "#settings" ? "settings" : "overview";
  $("#overview").hidden = page !== "overview";
  $("#settings").hidden = page !== "settings";
  for (const p of ["overview", "settings"]) $(`#nav-${p}`).classList.toggle("active", p === page);
}

async function loadAll() {
  const [status, pending, config] = await Promise.all([
    api.get("/rest/status"), api.get("/rest/pending"), api.get("/rest/config"),
  ]);
  state.status = status;
  state.folders = new Map(status.folders.map((f) => [f.id, f]));
  state.devices = status.devices;
  state.pending = pending;
  state.config = config;
  $("#device-name").textContent = status.name;
  $("#my-id").textContent = status.device_id;
  $("#qr").src = "/rest/qr.svg";
  renderAll();
}

function renderAll() {
  renderPending();
  renderFolders();
  renderDevices();
  renderSettings();
  renderChanges();
}

// --- events -------------------------------------------------------------------------------
let refreshTimer = null;
function refreshSoon(what) {
  // several events in a row (a reconnect, a config change) cause one reload
  refreshSoon.what = new Set([...(refreshSoon.what || []), ...what]);
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    const todo = refreshSoon.what;
    refreshSoon.what = new Set();
    refreshTimer = null;
    try {
      if (todo.has("devices")) { state.devices = await api.get("/rest/devices"); renderDevices(); }
      if (todo.has("folders")) {
        state.folders = new Map((await api.get("/rest/folders")).map((f) => [f.id, f]));
        renderFolders();
      }
      if (todo.has("pending")) { state.pending = await api.get("/rest/pending"); renderPending(); }
      if (todo.has("config")) { state.config = await api.get("/rest/config"); renderSettings(); }
    } catch (e) { console.warn("refresh failed", e); }
  }, 200);
}

function onEvents(batch) {
  for (const e of batch) {
    const d = e.data;
    switch (e.type) {
      case "FolderSummary":
        state.folders.set(d.folder, d.summary);
        renderFolder(d.folder);
        if (state.open.has(d.folder)) loadDetails(d.folder, ["need"]);
        break;
      case "FolderStateChanged": {
        const f = state.folders.get(d.folder);
        if (f) { f.state = d.to; f.error = d.error; renderFolder(d.folder); }
        break;
      }
      case "DownloadProgress":
        state.progress.set(d.folder, d.items);
        if (state.open.has(d.folder)) loadDetails(d.folder, ["need"]);
        break;
      case "FolderCompletion": {
        const f = state.folders.get(d.folder);
        if (f) { f.device_completion = { ...(f.device_completion || {}), [d.device]: d.completion }; renderFolder(d.folder); }
        break;
      }
      case "DeviceConnected": case "DeviceDisconnected": case "DeviceStatistics":
        refreshSoon(["devices"]);
        break;
      case "PendingDevicesChanged":
        state.pending.devices = d.devices; renderPending();
        break;
      case "PendingFoldersChanged":
        state.pending.folders = d.folders; renderPending();
        break;
      case "ConfigSaved":
        refreshSoon(["devices", "folders", "config", "pending"]);
        break;
      case "LocalChangeDetected": case "RemoteChangeDetected":
        for (const it of d.items) addChange(e, d.folder, it.name, `${it.action}${d.device ? " by " + shortId(d.device) : " here"}`);
        break;
      case "ItemFinished":
        addChange(e, d.folder, d.item, d.error ? `failed: ${d.error}` : `synced (${d.action})`);
        break;
      case "ConflictCreated": case "ConflictResolved":
        addChange(e, d.folder, d.item, e.type === "ConflictCreated" ? "conflict copy created" : "conflict resolved");
        if (state.open.has(d.folder)) loadDetails(d.folder, ["conflicts"]);
        break;
    }
  }
  renderChanges();
}

function addChange(e, folder, name, what) {
  state.changes.unshift({ time: e.time, folder, name, what });
  state.changes.length = Math.min(state.changes.length, MAX_CHANGES);
}

// --- pending ------------------------------------------------------------------------------
function renderPending() {
  const box = clear($("#pending"));
  for (const d of state.pending.devices) {
    box.append(h("div", { class: "card pending", "data-pending-device": d.device_id },
      h("p", {}, "Device ", h("code", {}, d.device_id), d.name ? ` (${d.name})` : "", ` wants to connect from ${d.address}.`),
      h("div", { class: "buttons" },
        h("button", { class: "accept", onclick: () => act(() => api.post(`/rest/pending/devices/${d.device_id}/accept`, { name: d.name })) }, "Add device"),
        h("button", { class: "dismiss secondary", onclick: () => act(() => api.del(`/rest/pending/devices/${d.device_id}`)) }, "Dismiss"))));
  }
  for (const f of state.pending.folders) {
    box.append(h("div", { class: "card pending", "data-pending-folder": f.folder_id },
      h("p", {}, `${deviceName(f.offered_by)} offers folder `, h("b", {}, f.label || f.folder_id), ` (${f.folder_id}).`),
      h("div", { class: "buttons" },
        h("button", { class: "accept", onclick: () => openFolderForm({ id: f.folder_id, label: f.label }) }, "Accept…"),
        h("button", { class: "dismiss secondary", onclick: () => act(() => api.del(`/rest/pending/folders/${f.folder_id}`)) }, "Dismiss"))));
  }
}

// --- folders ------------------------------------------------------------------------------
function renderFolders() {
  const box = $("#folders");
  const ids = [...state.folders.keys()].sort();
  for (const el of [...box.children]) if (!state.folders.has(el.dataset.folder)) el.remove();
  if (!ids.length) { clear(box).append(h("p", { class: "empty" }, "No folders yet.")); return; }
  box.querySelector(".empty")?.remove();
  for (const id of ids) renderFolder(id);
}

function renderFolder(id) {
  const f = state.folders.get(id);
  const box = $("#folders");
  if (!f) return;
  let card = box.querySelector(`[data-folder="${CSS.escape(id)}"]`);
  if (!card) {
    card = h("article", { class: "card folder", "data-folder": id },
      h("div", { class: "summary" }), h("div", { class: "details", hidden: true }));
    box.querySelector(".empty")?.remove();
    box.append(card);
  }
  const pct = Number(f.completion ?? 100);
  const devs = Object.entries(f.device_completion || {});
  const s = clear(card.querySelector(".summary"));
  append(s,
    h("div", { class: "title" },
      h("h3", {}, f.label || f.id), h("span", { class: `badge state state-${f.state}` }, f.state)),
    h("div", { class: "bar", title: `${pct}%` }, h("div", { style: `width:${pct}%` })),
    h("dl", {},
      dt("Completion", h("span", { class: "completion" }, `${pct.toFixed(pct === 100 ? 0 : 1)}%`)),
      dt("Needed", h("span", { class: "need" }, `${f.need_files} items, ${bytes(f.need_bytes)}`)),
      dt("Local", `${f.local_files} files, ${bytes(f.local_bytes)}`),
      dt("Rates", `↓ ${rate(f.down_rate)}  ↑ ${rate(f.up_rate)}`),
      dt("Last scan", f.last_scan ? ago(f.last_scan) : "—"),
      dt("Path", h("code", {}, f.path)),
      dt("ID", h("code", {}, f.id)),
      devs.length ? dt("Devices", devs.map(([d, c]) => `${deviceName(d)} ${c}%`).join(", ")) : null),
    f.error ? h("p", { class: "error folder-error" }, f.error) : null,
    h("div", { class: "buttons" },
      h("button", { class: "toggle", onclick: () => toggleDetails(id) }, state.open.has(id) ? "Hide details" : "Details"),
      h("button", { class: "secondary", onclick: () => act(() => api.post(`/rest/scan?folder=${encodeURIComponent(id)}`)) }, "Rescan"),
      f.state === "paused" && !f.error
        ? h("button", { class: "secondary", onclick: () => act(() => api.post(`/rest/folders/${id}/resume`)) }, "Resume")
        : h("button", { class: "secondary", onclick: () => act(() => api.post(`/rest/folders/${id}/pause`)) }, "Pause"),
      f.state === "paused" && f.error
        ? h("button", { class: "danger", onclick: () => confirm("Record these deletions and sync them?") && act(() => api.post(`/rest/resume?folder=${encodeURIComponent(id)}`)) }, "Confirm deletions")
        : null,
      h("button", { class: "danger", onclick: () => confirm(`Stop sharing ${f.label || id}? Files stay on disk.`) && act(() => api.del(`/rest/folders/${id}`)) }, "Remove")));
}

// Element.append would turn null into the text "null"
const append = (el, ...kids) => el.append(...kids.filter((k) => k !== null && k !== undefined));

function dt(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value));
}

function toggleDetails(id) {
  if (state.open.has(id)) state.open.delete(id); else state.open.add(id);
  const card = $(`#folders [data-folder="${CSS.escape(id)}"]`);
  card.querySelector(".details").hidden = !state.open.has(id);
  renderFolder(id);
  if (state.open.has(id)) loadDetails(id, ["need", "conflicts", "versions"]);
}

const detailsBusy = new Set();
async function loadDetails(id, parts) {
  const key = id + parts.join();
  if (detailsBusy.has(key)) return;
  detailsBusy.add(key);
  try {
    const card = $(`#folders [data-folder="${CSS.escape(id)}"]`);
    if (!card) return;
    const box = card.querySelector(".details");
    const part = (name, title) => {
      const el = clear(box.querySelector(`.${name}`));
      el.append(h("h4", {}, title));
      return el;
    };
    const q = `/rest/folders/${encodeURIComponent(id)}`;
    for (const p of ["need", "conflicts", "versions"]) {
      if (!box.querySelector(`.${p}`)) box.append(h("div", { class: p }));
    }
    if (parts.includes("need")) {
      const need = await api.get(`${q}/need?perpage=100`);
      const el = part("need", `Out of sync (${need.total})`);
      const list = h("ul", { class: "items" });
      for (const it of need.items) {
        const prog = it.blocks ? ` ${Math.floor((100 * it.have_blocks) / it.blocks)}%` : "";
        list.append(h("li", { "data-item": it.name }, h("code", {}, it.name), " ",
          h("span", { class: `reason reason-${it.reason}` }, it.reason_text + prog), " ", h("small", {}, bytes(it.size))));
      }
      el.append(need.items.length ? list : h("p", { class: "empty" }, "Everything is in sync."));
      if (need.total > need.items.length) el.append(h("p", {}, h("small", {}, `… and ${need.total - need.items.length} more`)));
    }
    if (parts.includes("conflicts")) {
      const c = await api.get(`${q}/conflicts?perpage=100`);
      const el = part("conflicts", `Conflicts (${c.items.length}${c.more ? "+" : ""})`);
      const list = h("ul", { class: "items" });
      for (const it of c.items) list.append(h("li", { "data-conflict": it.copy }, h("code", {}, it.copy), " copy of ", h("code", {}, it.name)));
      el.append(c.items.length ? list : h("p", { class: "empty" }, "No conflicts."));
    }
    if (parts.includes("versions")) {
      const v = await api.get(`${q}/versions?perpage=100`);
      const el = part("versions", "Old versions");
      const list = h("ul", { class: "items" });
      for (const it of v.items) {
        list.append(h("li", { "data-version": it.version }, h("code", {}, it.name || it.version), " ",
          h("small", {}, `${new Date(it.time * 1000).toLocaleString()}, ${bytes(it.size)}`), " ",
          it.name ? h("button", { class: "secondary restore", onclick: () => act(() => api.post(`${q}/versions/restore`, { version: it.version }).then(() => loadDetails(id, ["versions"]))) }, "Restore") : null));
      }
      el.append(v.items.length ? list : h("p", { class: "empty" }, "No old versions."));
    }
  } catch (e) {
    console.warn("details", e);
  } finally {
    detailsBusy.delete(key);
  }
}

// --- devices ------------------------------------------------------------------------------
function deviceName(id) {
  const d = state.devices.find((x) => x.device_id === id);
  return (d && d.name) || shortId(id);
}
const shortId = (id) => (id || "").slice(0, 7);

function renderDevices() {
  const box = clear($("#devices"));
  if (!state.devices.length) box.append(h("p", { class: "empty" }, "No devices yet: add one with its device ID."));
  for (const d of state.devices) {
    const addrs = (d.addresses || []).map((a) => `${a.address} (${a.source})`).join(", ");
    box.append(h("article", { class: `card device ${d.connected ? "connected" : ""}`, "data-device": d.device_id },
      h("div", { class: "title" },
        h("h3", {}, d.name || shortId(d.device_id)),
        h("span", { class: `badge conn ${d.connected ? "ok" : ""}` }, d.paused ? "paused" : d.connected ? "connected" : "disconnected")),
      h("dl", {},
        dt("ID", h("code", {}, d.device_id)),
        d.connected ? dt("Transport", h("span", { class: "transport" }, `${d.transport} ${d.route && d.route !== "direct" ? "(" + d.route + ")" : ""}`)) : null,
        d.connected ? dt("Address", d.address) : null,
        dt("Addresses", addrs || "discovered"),
        dt("Rates", `↓ ${rate(d.down_rate)}  ↑ ${rate(d.up_rate)}`),
        dt(d.connected ? "Connected" : "Last seen", d.connected ? ago(d.since) : d.last_seen ? ago(d.last_seen) : "never")),
      h("div", { class: "buttons" },
        h("button", { class: "secondary", onclick: () => act(() => api.post(`/rest/devices/${d.device_id}/${d.paused ? "resume" : "pause"}`)) }, d.paused ? "Resume" : "Pause"),
        h("button", { class: "danger", onclick: () => confirm(`Remove ${d.name || d.device_id}?`) && act(() => api.del(`/rest/devices/${d.device_id}`)) }, "Remove"))));
  }
  renderShareWith();
}

function renderShareWith(selected = []) {
  const box = clear($("#share-with"));
  for (const d of state.devices) {
    box.append(h("label", { class: "check" },
      h("input", { type: "checkbox", name: "devices", value: d.device_id, checked: selected.includes(d.device_id) }), ` ${d.name || shortId(d.device_id)}`));
  }
}

// --- forms --------------------------------------------------------------------------------
function openFolderForm(preset = {}) {
  const form = $("#add-folder");
  form.reset();
  form.id.value = preset.id || "";
  form.label.value = preset.label || "";
  $("#add-folder-title").textContent = preset.id ? `Accept folder ${preset.id}` : "Add folder";
  renderShareWith();
  form.hidden = false;
  form.path.focus();
}

function wireForms() {
  $("#add-folder-open").onclick = () => openFolderForm();
  $("#add-device-open").onclick = () => { $("#add-device").hidden = false; $("#add-device").device_id.focus(); };
  for (const form of document.querySelectorAll("form.form")) {
    form.querySelector(".cancel")?.addEventListener("click", () => { form.hidden = true; });
  }
  $("#add-folder").addEventListener("submit", (e) => submit(e, (f) => {
    const devices = [...f.querySelectorAll("input[name=devices]:checked")].map((i) => i.value);
    const body = { path: f.path.value.trim(), label: f.label.value.trim(), devices: devices.length ? devices : null };
    return f.id.value
      ? api.post(`/rest/pending/folders/${encodeURIComponent(f.id.value)}/accept`, body)
      : api.post("/rest/folders", body);
  }));
  $("#add-device").addEventListener("submit", (e) => submit(e, (f) => api.post("/rest/devices", {
    device_id: f.device_id.value.trim(),
    name: f.name.value.trim(),
    addresses: f.addresses.value.split(/\s+/).filter(Boolean),
  })));
  $("#settings-form").addEventListener("submit", (e) => submit(e, saveSettings, false));
}

async function submit(e, fn, hide = true) {
  e.preventDefault();
  const form = e.target;
  const err = form.querySelector(".error");
  err.textContent = "";
  form.classList.add("busy");
  try {
    await fn(form);
    if (hide) form.hidden = true;
    else err.textContent = "Saved.";
    await loadAll();
  } catch (x) {
    err.textContent = x.message;
  } finally {
    form.classList.remove("busy");
  }
}

async function act(fn) {
  try {
    await fn();
    refreshSoon(["folders", "devices", "pending"]);
  } catch (e) {
    alert(e.message);
  }
}

// --- settings -----------------------------------------------------------------------------
const SETTINGS_SHOWN = [
  ["Device", ["device.name"]],
  ["Listening", ["listen", "relays", "nat.enabled"]],
  ["Discovery", ["discovery.lan.enabled", "discovery.dht.enabled", "discovery.dht.bootstrap", "discovery.tracker.enabled", "discovery.tracker.urls"]],
  ["Limits", ["limits.max_send_kbps", "limits.max_recv_kbps", "limits.min_free_disk_mb", "transfer.unlimited_own_devices"]],
  ["Folders", ["watch.enabled", "scan.interval_s", "versions.keep", "versions.max_age_days"]],
  ["Web UI", ["api.address", "api.password", "api.allowed_hosts"]],
];

function renderSettings() {
  const form = $("#settings-form");
  if (!state.config || form.contains(document.activeElement)) return; // never under the user's cursor
  clear(form);
  const { settings, schema } = state.config;
  for (const [title, keys] of SETTINGS_SHOWN) {
    const fs = h("fieldset", {}, h("legend", {}, title));
    for (const k of keys) {
      const s = schema[k];
      if (!s) continue;
      const v = settings[k];
      let input;
      if (s.type === "bool") input = h("input", { type: "checkbox", name: k, checked: !!v });
      else if (s.type === "list") input = h("textarea", { name: k, rows: Math.max(1, v.length) }, v.join("\n"));
      else input = h("input", { name: k, type: k === "api.password" ? "password" : s.type === "int" ? "number" : "text", value: String(v) });
      fs.append(h("label", { class: s.type === "bool" ? "check" : "" }, s.type === "bool" ? input : null, ` ${k} `, s.type === "bool" ? null : input, h("small", {}, s.help)));
    }
    form.append(fs);
  }
  form.append(h("div", { class: "buttons" }, h("button", { type: "submit" }, "Save settings")), h("p", { class: "error" }));
}

function saveSettings(form) {
  const { settings, schema } = state.config;
  const changed = {};
  for (const el of form.querySelectorAll("[name]")) {
    const k = el.name, s = schema[k];
    let v;
    if (s.type === "bool") v = el.checked;
    else if (s.type === "list") v = el.value.split(/\s+/).filter(Boolean);
    else if (s.type === "int") v = Number(el.value);
    else v = el.value;
    if (JSON.stringify(v) !== JSON.stringify(settings[k])) changed[k] = v;
  }
  if (!Object.keys(changed).length) return Promise.resolve();
  return api.patch("/rest/config", changed);
}

// --- recent changes -----------------------------------------------------------------------
function renderChanges() {
  const box = clear($("#changes"));
  if (!state.changes.length) box.append(h("li", { class: "empty" }, "Nothing yet."));
  for (const c of state.changes) {
    const f = state.folders.get(c.folder);
    box.append(h("li", {}, h("small", {}, new Date(c.time * 1000).toLocaleTimeString()), " ",
      h("b", {}, (f && f.label) || c.folder), " ", h("code", {}, c.name), " ", c.what));
  }
}

main().catch((e) => { console.error(e); setLive("error"); });
