// harstream console: plain JavaScript, no build step. Every value from the server goes into
// the page as text (textContent / attributes), never as HTML.
"use strict";

const API = "/console/api";
const ACTIVITY_COLOURS = {
  WALKING: "#1b6e2a", WALKING_UPSTAIRS: "#5b8c00", WALKING_DOWNSTAIRS: "#0e7c86",
  SITTING: "#0b57d0", STANDING: "#7b4fb8", LAYING: "#b3261e",
};
const state = {
  session: null, devices: new Map(), counts: {}, source: null, alertFilter: "open",
  seenFalls: new Set(), route: "", pipelineTimer: null, renderPending: false,
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;  // CSSOM: allowed by the CSP, unlike a style attribute
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
const $ = (id) => document.getElementById(id);
function announce(text) { $("announce").textContent = text; }
function ago(t, now) {
  if (t === null || t === undefined) return "never";
  const s = Math.max(0, (now || Date.now() / 1000) - t);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}
function when(t) { return t ? new Date(t * 1000).toLocaleString() : "–"; }
function pct(x) { return x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)} %`; }
function words(s) { return s ? s.toLowerCase().replaceAll("_", " ") : "–"; }

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (opts.method && opts.method !== "GET") {
    opts.headers["Content-Type"] = "application/json";
    if (state.session) opts.headers["X-CSRF-Token"] = state.session.csrf_token;
  }
  const response = await fetch(API + path, opts);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401 && path !== "/login") { showLogin(); }
  if (!response.ok) {
    const err = new Error((body && (body.detail || body.title)) || `HTTP ${response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

// -- session ------------------------------------------------------------------------------
function showLogin() {
  state.session = null;
  if (state.source) { state.source.close(); state.source = null; }
  for (const id of ["top", "fleet-view", "alerts-view", "device-view", "pipeline-view"]) $(id).hidden = true;
  $("login-view").hidden = false;
  $("login-name").focus();
}
async function loggedIn(session) {
  state.session = session;
  $("login-view").hidden = true;
  $("top").hidden = false;
  $("who").textContent = `${session.name} (${session.role})`;
  await loadFleet();
  await refreshOpenBadge();
  connectEvents();
  if (!location.hash || location.hash === "#/login") location.hash = "#/fleet";
  route();
}
$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  $("login-submit").disabled = true;
  try {
    const session = await api("/login", {
      method: "POST",
      body: JSON.stringify({ name: $("login-name").value, password: $("login-password").value }),
    });
    $("login-password").value = "";
    await loggedIn(session);
  } catch (e) {
    $("login-error").textContent = e.message;
  } finally {
    $("login-submit").disabled = false;
  }
});
$("logout").addEventListener("click", async () => {
  try { await api("/logout", { method: "POST", body: "{}" }); } finally { showLogin(); }
});

// -- live updates -------------------------------------------------------------------------
function connectEvents() {
  if (state.source) state.source.close();
  const source = new EventSource(API + "/events");
  state.source = source;
  source.addEventListener("hello", () => { $("fleet-live").textContent = "Live updates: connected"; });
  source.addEventListener("update", (ev) => {
    const doc = JSON.parse(ev.data);
    for (const row of doc.devices) state.devices.set(row.device_id, Object.assign(row, { _changed: Date.now() }));
    state.counts = doc.counts;
    state.now = doc.now;
    for (const change of doc.alerts) alertChanged(change);
    scheduleRender();
  });
  source.addEventListener("resync", () => loadFleet());
  source.addEventListener("logout", () => showLogin());
  source.onerror = () => {
    $("fleet-live").textContent = "Live updates: reconnecting…";
    // The browser reconnects by itself; on success everything is reloaded once.
    source.addEventListener("open", () => loadFleet(), { once: true });
  };
}
function scheduleRender() {
  if (state.renderPending) return;
  state.renderPending = true;
  requestAnimationFrame(() => {
    state.renderPending = false;
    if (state.route === "fleet") renderFleet();
  });
}
function alertChanged(change) {
  const alert = change.alert;
  refreshOpenBadge();
  if (change.event === "opened" && alert.type === "FALL_SUSPECTED" && !state.seenFalls.has(alert.alert_id)) {
    state.seenFalls.add(alert.alert_id);
    fallCue(alert);  // the banner is role=alert: announced at once
  } else if (change.event === "opened") {
    announce(`New ${alert.severity} alert: ${words(alert.type)} on ${alert.device_id}`);
  }
  if (state.route === "alerts") loadAlerts();
  if (state.route === "device" && alert.device_id === state.deviceId) loadDevice(state.deviceId, true);
}
function fallCue(alert) {
  const banner = $("fall-banner");
  banner.replaceChildren(
    el("span", { text: `Suspected fall: ${alert.device_id} — ${alert.reason}` }),
    el("a", { href: "#/alerts", text: "Open the alert inbox" }),
    el("button", { type: "button", class: "secondary", onclick: () => { banner.hidden = true; } }, "Dismiss"),
  );
  banner.hidden = false;
  beep();
}
function beep() {
  // A short two-tone alarm made here (no sound file); browsers allow it after the login click.
  try {
    const ctx = new (window.AudioContext || window.webkitAudioContext)();
    [880, 660, 880].forEach((f, i) => {
      const osc = ctx.createOscillator(); const gain = ctx.createGain();
      osc.frequency.value = f; gain.gain.value = 0.15;
      osc.connect(gain).connect(ctx.destination);
      osc.start(ctx.currentTime + i * 0.25); osc.stop(ctx.currentTime + i * 0.25 + 0.2);
    });
  } catch (e) { /* no audio: the banner is the cue */ }
}
async function refreshOpenBadge() {
  try {
    const doc = await api("/alerts?state=open&limit=1000");
    $("open-badge").textContent = String(doc.alerts.length);
  } catch (e) { /* shown on the next change */ }
}

// -- fleet --------------------------------------------------------------------------------
async function loadFleet() {
  const doc = await api("/fleet");
  state.devices = new Map(doc.devices.map((d) => [d.device_id, d]));
  state.counts = doc.counts;
  state.now = doc.now;
  if (state.route === "fleet") renderFleet();
}
function statusOf(d) { return d.online === true ? "online" : d.online === false ? "offline" : "unknown"; }
function renderFleet() {
  const c = state.counts;
  $("fleet-counts").replaceChildren(
    ...[["devices", "devices"], ["online", "online"], ["offline", "offline"],
      ["with_alerts", "with open alerts"], ["open_alerts", "open alerts"]]
      .map(([k, label]) => el("li", { "data-count": k }, el("strong", { text: c[k] ?? 0 }), label)),
  );
  const q = $("fleet-search").value.trim().toLowerCase();
  const show = $("fleet-status").value;
  const now = Date.now() / 1000;
  const rows = [...state.devices.values()]
    .filter((d) => !q || d.device_id.toLowerCase().includes(q) || (d.activity || "").toLowerCase().includes(q))
    .filter((d) => show === "all" || (show === "alerts" ? d.open_alerts.length > 0 : statusOf(d) === show))
    .sort((a, b) => (b.open_alerts.length > 0) - (a.open_alerts.length > 0) || a.device_id.localeCompare(b.device_id));
  const body = $("fleet-body");
  body.replaceChildren(...rows.map((d) => {
    const s = statusOf(d);
    const tr = el("tr", { "data-device": d.device_id },
      el("td", { "data-label": "Device" }, el("a", { href: `#/device/${encodeURIComponent(d.device_id)}`, text: d.device_id })),
      el("td", { "data-label": "Status", class: `status status-${s}`, text: s }),
      el("td", { "data-label": "Activity", class: "activity", text: words(d.activity) }),
      el("td", { "data-label": "Confidence", class: "confidence", text: pct(d.confidence) }),
      el("td", { "data-label": "Last seen", text: ago(d.last_seen, now) }),
      el("td", { "data-label": "Open alerts", class: "alerts-cell" },
        d.open_alerts.length ? d.open_alerts.map((a) => el("span", { class: `chip sev-${a.severity}`, text: words(a.type) })) : "none"),
    );
    if (d._changed && Date.now() - d._changed < 1000) tr.classList.add("flash");
    return tr;
  }));
}
$("fleet-search").addEventListener("input", renderFleet);
$("fleet-status").addEventListener("change", renderFleet);
$("fleet-filters").addEventListener("submit", (ev) => ev.preventDefault());

// -- alerts -------------------------------------------------------------------------------
for (const b of document.querySelectorAll(".tabs button")) {
  b.addEventListener("click", () => {
    state.alertFilter = b.dataset.state;
    for (const o of document.querySelectorAll(".tabs button")) o.setAttribute("aria-pressed", String(o === b));
    loadAlerts();
  });
}
async function loadAlerts() {
  const q = state.alertFilter ? `?state=${state.alertFilter}` : "";
  const doc = await api(`/alerts${q}`);
  renderAlerts($("alert-list"), doc.alerts);
}
function renderAlerts(list, alerts) {
  const openDetails = new Set([...list.querySelectorAll("details[open]")].map((d) => d.dataset.alert));
  const notes = new Map([...list.querySelectorAll("textarea")].map((t) => [t.dataset.alert, t.value]));
  if (!alerts.length) { list.replaceChildren(el("li", { class: "hint", text: "No alerts here." })); return; }
  list.replaceChildren(...alerts.map((a) => alertItem(a, openDetails.has(a.alert_id), notes.get(a.alert_id))));
}
function alertItem(a, historyOpen, note) {
  const noteId = `note-${a.alert_id}`;
  const item = el("li", { class: `alert sev-${a.severity}${state.seenFalls.has(a.alert_id) && a.state === "open" ? " new" : ""}`,
    "data-alert": a.alert_id, "data-type": a.type, "data-state": a.state },
  el("h3", {}, `${words(a.type)} — `, el("a", { href: `#/device/${encodeURIComponent(a.device_id)}`, text: a.device_id })),
  el("p", { class: "reason", text: a.reason }),
  el("p", { class: "meta" },
    el("span", { class: `chip sev-${a.severity}`, text: a.severity }),
    el("span", { class: "state", text: a.state }),
    ` · opened ${when(a.opened_at)}`,
    a.acknowledged_by ? ` · acknowledged by ${a.acknowledged_by}` : ""),
  );
  if (a.state !== "resolved" && state.session && state.session.can_act) {
    const ta = el("textarea", { id: noteId, rows: 1, maxlength: 500, "data-alert": a.alert_id });
    ta.value = note || "";
    const act = async (action) => {
      try {
        await api(`/alerts/${encodeURIComponent(a.alert_id)}/${action}`, { method: "POST", body: JSON.stringify({ note: ta.value || null }) });
        announce(`Alert ${words(a.type)} of ${a.device_id} ${action === "ack" ? "acknowledged" : "resolved"}`);
        ta.value = "";
      } catch (e) { announce(`Failed: ${e.message}`); alert(e.message); }
      if (state.route === "alerts") loadAlerts(); else if (state.route === "device") loadDevice(state.deviceId, true);
      refreshOpenBadge();
    };
    item.append(el("div", { class: "act" },
      el("label", { for: noteId }, "Note (optional)", ta),
      a.state === "open" ? el("button", { type: "button", class: "ack", onclick: () => act("ack") }, "Acknowledge") : null,
      el("button", { type: "button", class: "resolve secondary", onclick: () => act("resolve") }, "Resolve"),
    ));
  }
  const details = el("details", { "data-alert": a.alert_id }, el("summary", { text: "History" }));
  if (historyOpen) details.open = true;
  const fill = async () => {
    try {
      const doc = await api(`/alerts/${encodeURIComponent(a.alert_id)}/history`);
      details.replaceChildren(details.firstChild, el("ol", { class: "history" }, doc.events.map((e) =>
        el("li", {}, `${when(e.at)} — ${e.event}${e.operator ? ` by ${e.operator}` : " (rules)"}${e.note ? `: “${e.note}”` : ""}`))));
    } catch (e) { details.append(el("p", { class: "error", text: e.message })); }
  };
  details.addEventListener("toggle", () => { if (details.open) fill(); });
  if (historyOpen) fill();
  item.append(details);
  return item;
}

// -- device page --------------------------------------------------------------------------
async function loadDevice(id, quiet) {
  state.deviceId = id;
  $("device-title").textContent = `Device ${id}`;
  let doc;
  try {
    doc = await api(`/devices/${encodeURIComponent(id)}?utc_offset_s=${-new Date().getTimezoneOffset() * 60}`);
  } catch (e) {
    $("device-facts").replaceChildren(el("dt", { text: "Error" }), el("dd", { text: e.message }));
    return;
  }
  const d = doc.device;
  const facts = [["Status", statusOf(d)], ["Activity", words(d.activity)], ["Confidence", pct(d.confidence)],
    ["Last seen", ago(d.last_seen)], ["Model", d.model_version ? `v${d.model_version} ${d.model_label || ""}` : "–"]];
  $("device-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  renderHistory(doc.history, doc.alerts);
  renderAlerts($("device-alerts"), doc.alerts);
  if (!quiet) renderRaw(id, doc.alerts[0]);
}
function toSeconds(t) { return typeof t === "number" ? t : Date.parse(t) / 1000; }
function legend() {
  return el("ul", { class: "legend", "aria-label": "Activity colours" },
    Object.entries(ACTIVITY_COLOURS).map(([k, c]) => el("li", {}, el("span", { style: `background:${c}` }), words(k))));
}
function bandChart(segments, alerts, start, end, what, tick, units, every) {
  const W = 960, H = 70;
  const x = (t) => ((Math.min(Math.max(t, start), end) - start) / (end - start)) * W;
  const shown = segments.filter((s) => toSeconds(s.end ?? s.end_time) > start && toSeconds(s.start ?? s.start_time) < end);
  // Marked at the device-clock time that decided them, the clock the segments are on.
  const at = (a) => (a.details && typeof a.details.event_time === "number" ? a.details.event_time : a.opened_at);
  const marked = alerts.filter((a) => at(a) >= start && at(a) <= end);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H + 20}`, width: "100%", role: "img", class: "bands",
    "aria-label": `Activity over ${what}: ${shown.length} segments; ${marked.length} alerts` });
  chart.append(svg("rect", { x: 0, y: 10, width: W, height: H - 20, fill: "#eee" }));
  for (const s of shown) {
    const a = toSeconds(s.start ?? s.start_time), b = toSeconds(s.end ?? s.end_time);
    chart.append(svg("rect", { x: x(a), y: 10, width: Math.max(1, x(b) - x(a)), height: H - 20,
      fill: ACTIVITY_COLOURS[s.activity] || "#888" }, svg("title", {}, `${words(s.activity)} ${new Date(a * 1000).toLocaleTimeString()}–${new Date(b * 1000).toLocaleTimeString()}`)));
  }
  for (const a of marked) {
    chart.append(svg("path", { d: `M${x(at(a))} 0 l6 9 h-12 z`, fill: "#b3261e" }, svg("title", {}, `${words(a.type)} at ${when(at(a))}`)));
    chart.append(svg("line", { x1: x(at(a)), x2: x(at(a)), y1: 8, y2: H - 10, stroke: "#b3261e", "stroke-width": 2 }));
  }
  for (let u = 0; u <= units; u += every) chart.append(svg("text", { x: Math.min(W - 40, (u / units) * W), y: H + 12 }, tick(u)));
  return chart;
}
function renderHistory(history, alerts) {
  const timeline = $("device-timeline");
  const sums = $("device-summaries");
  if (!history.available) {
    const msg = el("p", { class: "unavailable", role: "status" }, `History unavailable: ${history.reason}`);
    timeline.replaceChildren(msg);
    sums.replaceChildren(el("p", { class: "unavailable", text: "Daily summaries unavailable (same reason)." }));
    return;
  }
  const act = history.activity || {};
  const segments = Array.isArray(act) ? act : (act.segments || act.activity || []);
  const day = bandChart(segments, alerts, history.day_start, history.day_end, "today", (t) => `${Math.round(t)}h`, 24, 3);
  // The last hour, so minutes of activity are visible beside the whole day.
  const now = Math.min(Date.now() / 1000, history.day_end);
  const hour = bandChart(segments, alerts, now - 3600, now, "the last 60 minutes", (t) => `−${60 - Math.round(t)} min`, 60, 10);
  timeline.replaceChildren(el("h3", { text: "Over 24 hours" }), day, el("h3", { text: "The last 60 minutes" }), hour, legend());
  const minutesOf = (summary) => (summary ? (summary.minutes_per_activity || summary.minutes || {}) : {});
  const totalOf = (m) => Object.values(m).reduce((p, v) => p + v, 0);
  // One scale for the 7 bars: the busiest day fills the height.
  const scale = Math.max(1, ...history.summaries.map(({ summary }) => totalOf(minutesOf(summary))));
  sums.replaceChildren(...history.summaries.map(({ date, summary }) => {
    const fig = el("figure", {});
    const minutes = minutesOf(summary);
    const total = totalOf(minutes);
    const bar = svg("svg", { viewBox: "0 0 120 90", width: 120, height: 90, role: "img",
      "aria-label": summary ? `${date}: ${Object.entries(minutes).map(([k, v]) => `${words(k)} ${Math.round(v)} min`).join(", ")}` : `${date}: no data` });
    let y = 80;
    for (const [k, v] of Object.entries(minutes)) {
      const h = (v / scale) * 70;
      y -= h;
      bar.append(svg("rect", { x: 40, y, width: 40, height: h, fill: ACTIVITY_COLOURS[k] || "#888" }));
    }
    bar.append(svg("line", { x1: 30, x2: 90, y1: 80, y2: 80, stroke: "#444" }));
    const extra = summary && summary.lying_minutes !== undefined
      ? [el("br"), `lying ${summary.lying_minutes < 10 ? summary.lying_minutes.toFixed(1) : Math.round(summary.lying_minutes)} min · ${summary.posture_changes ?? 0} posture changes`] : [];
    fig.append(bar, el("figcaption", {}, date, el("br"), summary ? `${Math.round(total)} min with data` : "no data", ...extra));
    return fig;
  }));
}
async function renderRaw(id, latest) {
  const box = $("device-raw");
  if (!latest) { box.replaceChildren(el("p", { class: "hint", text: "No alert for this device yet." })); return; }
  box.replaceChildren(el("p", { class: "hint", text: "Reading the raw signal…" }));
  let doc;
  try { doc = await api(`/devices/${encodeURIComponent(id)}/raw?alert_id=${encodeURIComponent(latest.alert_id)}`); } catch (e) {
    box.replaceChildren(el("p", { class: "unavailable", text: `Raw signal unavailable: ${e.message}` })); return;
  }
  if (!doc.available) { box.replaceChildren(el("p", { class: "unavailable", text: `Raw signal unavailable: ${doc.reason}` })); return; }
  const W = 960, H = 200, t = doc.t, series = [["total acceleration |a| (g)", doc.total_acc, "#0b57d0"], ["body acceleration |a − g| (g)", doc.body_acc, "#b3261e"]];
  const all = series.flatMap((s) => s[1]);
  const top = Math.max(1.5, ...all), t0 = t[0], t1 = t[t.length - 1];
  const px = (v) => ((v - t0) / Math.max(1e-9, t1 - t0)) * W, py = (v) => H - (v / top) * (H - 10);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H + 20}`, width: "100%", role: "img",
    "aria-label": `Acceleration over the ${Math.round(t1 - t0)} s before ${words(latest.type)}; peak ${Math.max(...doc.total_acc).toFixed(2)} g` });
  for (const [name, values, colour] of series) {
    chart.append(svg("polyline", { fill: "none", stroke: colour, "stroke-width": 1.2,
      points: values.map((v, i) => `${px(t[i]).toFixed(1)},${py(v).toFixed(1)}`).join(" ") }, svg("title", {}, name)));
  }
  chart.append(svg("text", { x: 40, y: H + 16 }, `${Math.round(t1 - t0)} s of signal up to ${words(latest.type)} (${when(latest.opened_at)})`));
  chart.append(svg("text", { x: 2, y: 12 }, `${top.toFixed(1)} g`), svg("text", { x: 2, y: H - 2 }, "0 g"));
  box.replaceChildren(chart, el("ul", { class: "legend" }, series.map(([n, , c]) => el("li", {}, el("span", { style: `background:${c}` }), n))),
    el("p", { class: "hint", text: doc.note || "" }));
}

// -- pipeline -----------------------------------------------------------------------------
function fmt(v, unit, digits) { return v === null || v === undefined ? "–" : `${Number(v).toFixed(digits ?? 1)}${unit || ""}`; }
async function loadPipeline() {
  let doc;
  try { doc = await api("/pipeline"); } catch (e) { $("pipeline-body").replaceChildren(el("p", { class: "error", text: e.message })); return; }
  $("pipeline-at").textContent = `Read from the services' /metrics at ${new Date(doc.at * 1000).toLocaleTimeString()}; refreshed every 5 s.`;
  $("pipeline-body").replaceChildren(el("div", { class: "services" }, doc.services.map((s) => {
    const rows = [];
    if (!s.up) rows.push(["status", `unreachable: ${s.error}`]);
    for (const [k, v] of Object.entries(s.throughput || {})) {
      rows.push([k, v.per_s === null ? `${Math.round(v.total)} so far` : `${fmt(v.per_s, "/s", 1)} (${Math.round(v.total)})`]);
    }
    if (s.latency) rows.push(["end-to-end p50", fmt(s.latency.p50_s * 1000, " ms", 0)], ["end-to-end p99", fmt(s.latency.p99_s * 1000, " ms", 0)]);
    if (s.pipeline_delay_s !== undefined && s.pipeline_delay_s !== null) rows.push(["lag behind devices", fmt(s.pipeline_delay_s, " s", 1)]);
    if (s.consumer_lag) for (const [g, n] of Object.entries(s.consumer_lag)) rows.push([`consumer lag (${g})`, n === null ? "unknown" : `${n} records`]);
    if (s.partitions_assigned !== undefined && s.partitions_assigned !== null) rows.push(["partitions", String(s.partitions_assigned)]);
    if (s.up && s.dead_letters !== null) rows.push(["dead letters", String(Math.round(s.dead_letters))]);
    for (const [m, v] of Object.entries(s.model_versions || {})) rows.push([`model ${m}`, `v${v}`]);
    if (s.up && !rows.length) rows.push(["status", "up (no pipeline figures of its own)"]);
    return el("section", { class: "service", "data-service": s.service, "aria-label": s.service },
      el("h2", { class: s.up ? "" : "down", text: s.service }),
      el("dl", {}, rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])));
  })));
}

// -- routing ------------------------------------------------------------------------------
function route() {
  if (!state.session) return;
  const hash = location.hash || "#/fleet";
  const [, page, arg] = hash.match(/^#\/([a-z]+)\/?(.*)$/) || [null, "fleet", ""];
  state.route = page;
  for (const v of ["fleet", "alerts", "device", "pipeline"]) $(`${v}-view`).hidden = v !== page;
  for (const v of ["fleet", "alerts", "pipeline"]) {
    const link = $(`nav-${v}`);
    if (v === page) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  clearInterval(state.pipelineTimer);
  if (page === "fleet") renderFleet();
  else if (page === "alerts") { $("fall-banner").hidden = true; loadAlerts(); }
  else if (page === "device") loadDevice(decodeURIComponent(arg));
  else if (page === "pipeline") { loadPipeline(); state.pipelineTimer = setInterval(loadPipeline, 5000); }
  document.title = `${page} · harstream console`;
  $("main").focus({ preventScroll: true });
}
window.addEventListener("hashchange", route);

(async () => {
  try { await loggedIn(await api("/session")); } catch (e) { showLogin(); }
})();
