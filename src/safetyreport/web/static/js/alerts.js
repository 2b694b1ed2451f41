// The officer's queue: a triage view of the alerts, loaded from the API and kept current
// by the live event stream (SSE). One row per alert, grouped by patient (or, for stock
// incidents and clinic-wide patterns, by clinic); each group shows the highest severity
// of its alerts. Rows and groups are sorted by the time left to their deadline.
//
// Alerts raised (or renewed: open again with a new deadline) after the page loaded are
// "new" until the officer opens or acknowledges them: a sticky bar links to them, the tab
// title counts them, a sound plays if she turned it on, and a critical one is a browser
// notification if she allowed them. The unseen ids live in sessionStorage, so a reload
// keeps them. Rows are updated in place, so an open "resolve" form or the focus survive.

import { announce, api, formatLocal, h, problemMessage, serverNow, UNSEEN_ALERTS_KEY } from "./common.js";

const SEVERITIES = ["critical", "urgent", "high", "info"];
const SEVERITY_RANK = { critical: 3, urgent: 2, high: 1, info: 0 };
// A shape and a word for each severity, so none is told by its colour alone.
const SEVERITY_ICON = { critical: "◆", urgent: "▲", high: "●", info: "○" };
const PAGE_LIMIT = 200;
const MAX_PAGES = 10;
// Stream events that make an alert new to the officer: raised, or open again with its
// deadline started again.
const NEW_ACTIONS = new Set(["opened", "renewed"]);
const UNSEEN_KEY = UNSEEN_ALERTS_KEY;
const SOUND_KEY = "safetyreport-queue-sound";
const DEA_FIELDS = ["dea_notified_on", "dea_form106_number", "dea_not_reportable_reason"];

const queueEl = document.getElementById("queue");
const rowTemplate = document.getElementById("alert-row");
const groupTemplate = document.getElementById("alert-group");
const statusFilter = document.getElementById("status-filter");
const clinicFilter = document.getElementById("clinic-filter");
const streamStatus = document.getElementById("stream-status");
const baseTitle = document.title;

const alerts = new Map(); // id -> alert (the API's AlertView)
const rows = new Map(); // id -> <li>
const groups = new Map(); // group key -> <section>
const unseen = readUnseen(); // ids of new alerts the officer has not opened yet

function wanted(alert) {
  const status = statusFilter.value;
  const statusOk = status === "unresolved" ? alert.status !== "resolved" : alert.status === status;
  const clinic = clinicFilter?.value || "";
  return statusOk && (!clinic || alert.clinic === clinic);
}

/** Keep the newer of two views of one alert (revisions only grow). */
function upsert(alert) {
  const known = alerts.get(alert.id);
  if (known && known.revision > alert.revision) {
    return false;
  }
  alerts.set(alert.id, alert);
  return true;
}

// --- deadlines and order -------------------------------------------------------------

/** The deadline that matters now: the acknowledgement's while open, the DEA written
 * notice's for an acknowledged theft or loss; null when nothing is due. */
function deadlineOf(alert) {
  if (alert.status === "open" && alert.ack_deadline) {
    return { at: alert.ack_deadline, what: "Acknowledge", start: windowStart(alert, alert.ack_deadline) };
  }
  if (alert.status === "acknowledged" && alert.dea_notice_due) {
    return { at: alert.dea_notice_due, what: "DEA notice", start: alert.first_seen_at };
  }
  return null;
}

// When the acknowledgement clock started: the last report that joined (a renewal starts
// it again), unless that came after the deadline was set (a report that did not renew).
function windowStart(alert, deadline) {
  const last = new Date(alert.last_seen_at).getTime();
  return last < new Date(deadline).getTime() ? alert.last_seen_at : alert.first_seen_at;
}

const rank = (alert) => SEVERITY_RANK[alert.severity] ?? 0;

/** The most pressing first: the nearest deadline, then no deadline; then the most
 * severe, then the oldest. */
function compareRows(a, b) {
  const da = deadlineOf(a);
  const db = deadlineOf(b);
  if (da && db) {
    const diff = new Date(da.at).getTime() - new Date(db.at).getTime();
    if (diff) {
      return diff;
    }
  } else if (da || db) {
    return da ? -1 : 1;
  }
  return rank(b) - rank(a) || a.first_seen_at.localeCompare(b.first_seen_at) || a.id.localeCompare(b.id);
}

/** A patient's alerts together; stock incidents and clinic-wide patterns by clinic. */
function groupKey(alert) {
  return alert.group_by === "patient" ? `patient:${alert.clinic}:${alert.group_key}` : `clinic:${alert.clinic}`;
}

/** Visible alerts in groups, the groups in the order of their most pressing row. */
function arrange(visible) {
  const byKey = new Map();
  for (const alert of [...visible].sort(compareRows)) {
    const key = groupKey(alert);
    if (!byKey.has(key)) {
      byKey.set(key, []);
    }
    byKey.get(key).push(alert);
  }
  // Map keeps insertion order: a group comes where its first (most pressing) row came.
  return [...byKey.entries()].map(([key, members]) => ({ key, members }));
}

/** "12 min left", "overdue 3 min", "1 d 4 h left". */
function timeLeftText(deadline, now = serverNow()) {
  const ms = new Date(deadline).getTime() - now;
  const seconds = Math.floor(Math.abs(ms) / 1000);
  const minutes = Math.floor(seconds / 60);
  const hours = Math.floor(minutes / 60);
  const days = Math.floor(hours / 24);
  let span;
  if (seconds < 60) {
    span = `${seconds} s`;
  } else if (minutes < 60) {
    span = `${minutes} min`;
  } else if (hours < 48) {
    span = `${hours} h ${String(minutes % 60).padStart(2, "0")} min`;
  } else {
    span = `${days} d ${hours % 24} h`;
  }
  return { overdue: ms < 0, text: ms < 0 ? `overdue ${span}` : `${span} left` };
}

// --- new alerts: the bar, the title, sound and notifications ----------------------------

function readUnseen() {
  try {
    return new Set(JSON.parse(sessionStorage.getItem(UNSEEN_KEY) || "[]"));
  } catch (error) {
    return new Set();
  }
}

function saveUnseen() {
  try {
    sessionStorage.setItem(UNSEEN_KEY, JSON.stringify([...unseen]));
  } catch (error) {
    // Storage unavailable: the highlight lasts as long as the page.
  }
}

function markSeen(id) {
  if (unseen.delete(id)) {
    saveUnseen();
    renderNew();
    const row = rows.get(id);
    if (row) {
      updateRow(row, alerts.get(id));
    }
  }
}

function markNew(alert) {
  unseen.add(alert.id);
  saveUnseen();
  announce(`New ${alert.severity} alert: ${alert.rule_name}, ${alert.clinic}.`);
  if (soundOn()) {
    chime(alert.severity === "critical" ? 3 : 1);
  }
  if (alert.severity === "critical") {
    notify(alert);
  }
}

/** The new alerts still waiting to be opened, the newest first. */
function newAlerts() {
  return [...unseen]
    .map((id) => alerts.get(id))
    .filter((alert) => alert && alert.status !== "resolved")
    .sort((a, b) => b.last_seen_at.localeCompare(a.last_seen_at));
}

function groupLabel(alert) {
  return alert.group_by === "patient" ? `patient ${alert.group_key}` : `clinic ${alert.clinic}`;
}

function renderNew() {
  const fresh = newAlerts();
  const bar = document.getElementById("new-bar");
  document.title = fresh.length ? `(${fresh.length}) ${baseTitle}` : baseTitle;
  bar.hidden = fresh.length === 0;
  document.getElementById("new-count").textContent =
    `${fresh.length} new alert${fresh.length === 1 ? "" : "s"}`;
  document.getElementById("new-list").replaceChildren(
    ...fresh.map((alert) => {
      const link = h(
        "a",
        { href: `#alert-${alert.id}`, class: `new-link sev-${alert.severity}` },
        severityTag(alert.severity),
        ` ${alert.rule_name}`,
        h("span", { class: "new-where" }, ` · ${groupLabel(alert)}${alert.group_by === "patient" ? ` · ${alert.clinic}` : ""}`),
      );
      link.addEventListener("click", (event) => {
        event.preventDefault();
        goToRow(alert.id);
      });
      return h("li", {}, link);
    }),
  );
}

/** Scroll to an alert's row and focus it; show every unresolved alert if filtered out. */
async function goToRow(id) {
  if (!rows.has(id)) {
    statusFilter.value = "unresolved";
    if (clinicFilter) {
      clinicFilter.value = "";
    }
    alerts.clear();
    await load();
  }
  const row = rows.get(id);
  if (row) {
    history.replaceState(null, "", `#alert-${id}`);
    row.focus({ preventScroll: true });
    row.scrollIntoView({ block: "center" });
  }
}

function soundOn() {
  try {
    return localStorage.getItem(SOUND_KEY) === "on";
  } catch (error) {
    return false;
  }
}

let audio = null;

/** ``times`` short tones, made here (no audio file). */
function chime(times) {
  try {
    audio ??= new AudioContext();
    if (audio.state === "suspended") {
      audio.resume();
    }
    const start = audio.currentTime + 0.05;
    for (let i = 0; i < times; i += 1) {
      const at = start + i * 0.35;
      const tone = audio.createOscillator();
      const gain = audio.createGain();
      tone.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, at);
      gain.gain.exponentialRampToValueAtTime(0.3, at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.25);
      tone.connect(gain).connect(audio.destination);
      tone.start(at);
      tone.stop(at + 0.3);
    }
  } catch (error) {
    console.warn("could not play the alert sound:", error);
  }
}

function setUpSound() {
  const toggle = document.getElementById("sound-toggle");
  toggle.checked = soundOn();
  toggle.addEventListener("change", () => {
    try {
      if (toggle.checked) {
        localStorage.setItem(SOUND_KEY, "on");
      } else {
        localStorage.removeItem(SOUND_KEY);
      }
    } catch (error) {
      // Storage unavailable: the choice lasts as long as the page.
    }
    if (toggle.checked) {
      chime(1); // a sample, and the click lets the browser start the sound
    }
  });
  // Browsers start sound only after a gesture on the page: the first one unlocks it.
  window.addEventListener("pointerdown", () => audio?.resume(), { once: true });
}

const canNotify = () => "Notification" in window;

/** A critical alert as a notification: severity, rule and clinic, never the patient. */
function notify(alert) {
  if (!canNotify() || Notification.permission !== "granted") {
    return;
  }
  try {
    const notification = new Notification(`Critical alert: ${alert.rule_name}`, {
      body: `${alert.rule_name}, clinic ${alert.clinic}. Open the alert queue to act on it.`,
      tag: alert.id,
      requireInteraction: true,
    });
    notification.addEventListener("click", () => {
      window.focus();
      goToRow(alert.id);
      notification.close();
    });
  } catch (error) {
    console.warn("could not show a notification:", error);
  }
}

function showNotifyState() {
  const button = document.getElementById("allow-notifications");
  const state = document.getElementById("notify-status");
  if (!canNotify()) {
    button.hidden = true;
    state.hidden = true;
    return;
  }
  const permission = Notification.permission;
  button.hidden = permission !== "default";
  state.hidden = permission === "default";
  state.textContent =
    permission === "granted"
      ? "Notifications on for critical alerts."
      : "Notifications are blocked: allow them in the browser's site settings.";
}

function setUpNotifications() {
  showNotifyState();
  document.getElementById("allow-notifications").addEventListener("click", async () => {
    try {
      await Notification.requestPermission();
    } finally {
      showNotifyState();
    }
  });
}

// --- rows and groups -------------------------------------------------------------------

const slot = (el, name) => el.querySelector(`[data-slot="${name}"]`);

function severityTag(severity) {
  return h(
    "span",
    { class: `sev-tag sev-${severity}` },
    h("span", { class: "sev-icon", "aria-hidden": "true" }, SEVERITY_ICON[severity] || "○"),
    ` ${severity}`,
  );
}

function fillSeverity(container, severity) {
  const tag = slot(container, "severity");
  tag.className = `sev-tag sev-${severity}`;
  tag.replaceChildren(
    h("span", { class: "sev-icon", "aria-hidden": "true" }, SEVERITY_ICON[severity] || "○"),
    ` ${severity}`,
  );
}

function buildRow(alert) {
  const row = rowTemplate.content.firstElementChild.cloneNode(true);
  row.dataset.id = alert.id;
  row.id = `alert-${alert.id}`;
  const form = row.querySelector(".resolve-form");
  // Each field's label, input and error tied together by ids of this row.
  for (const field of form.querySelectorAll(".field[data-field]")) {
    const input = field.querySelector("input, textarea");
    const id = `${field.dataset.field}-${alert.id}`;
    input.id = id;
    field.querySelector("label").htmlFor = id;
    field.querySelector(".error").id = `${id}-error`;
    input.setAttribute("aria-describedby", `${id}-error`);
  }
  const toggle = row.querySelector('[data-action="show-resolve"]');
  row.querySelector('[data-action="acknowledge"]').addEventListener("click", () => act(row, "acknowledge", {}));
  toggle.addEventListener("click", () => {
    form.hidden = !form.hidden;
    toggle.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) {
      form.elements.reason.focus();
    }
  });
  row.querySelector('[data-action="cancel-resolve"]').addEventListener("click", () => {
    form.hidden = true;
    toggle.setAttribute("aria-expanded", "false");
    toggle.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = resolution(form);
    clearFieldErrors(form);
    if (!body.reason) {
      showFieldErrors(row, [{ field: "reason", message: "Say why the alert is resolved." }]);
      return;
    }
    act(row, "resolve", body);
  });
  // Opening the alert is seeing it (a click, a middle click, Enter).
  const title = slot(row, "title");
  for (const type of ["click", "auxclick"]) {
    title.addEventListener(type, () => markSeen(alert.id));
  }
  return row;
}

/** The resolve form's body: the reason and the DEA details filled in (the server says
 * which a theft or loss alert needs). */
function resolution(form) {
  const body = { reason: form.elements.reason.value.trim() };
  for (const name of DEA_FIELDS) {
    const value = form.elements[name].value.trim();
    if (value && !form.querySelector(".dea-resolution").hidden) {
      body[name] = value;
    }
  }
  return body;
}

function clearFieldErrors(form) {
  for (const error of form.querySelectorAll(".field > .error")) {
    error.hidden = true;
    error.textContent = "";
  }
  for (const input of form.querySelectorAll("[aria-invalid]")) {
    input.removeAttribute("aria-invalid");
  }
}

/** Errors beside their fields; true if every one had a field. */
function showFieldErrors(row, errors) {
  const form = row.querySelector(".resolve-form");
  let first = null;
  let placed = true;
  for (const { field, message } of errors) {
    const box = form.querySelector(`.field[data-field="${field}"]`);
    if (!box || box.closest("[hidden]")) {
      placed = false;
      continue;
    }
    const error = box.querySelector(".error");
    error.textContent = message;
    error.hidden = false;
    const input = box.querySelector("input, textarea");
    input.setAttribute("aria-invalid", "true");
    first ??= input;
  }
  first?.focus();
  return placed;
}

/** A local time, with its date unless it is today. */
function shortTime(value) {
  const text = formatLocal(value);
  return text.slice(0, 10) === formatLocal(new Date(serverNow())).slice(0, 10) ? text.slice(11) : text;
}

/** The server's errors in the form's words: the API's field names become the labels, and
 * a message several fields share is said once (returned as ``shared``), not beside each. */
function inFormWords(form, errors) {
  const labels = new Map(
    [...form.querySelectorAll(".field[data-field]")].map((f) => [f.dataset.field, f.querySelector("label").textContent]),
  );
  const say = (text) => text.replace(/\bdea_[a-z0-9_]+\b/g, (name) => (labels.has(name) ? `“${labels.get(name)}”` : name));
  const times = new Map();
  for (const { message: text } of errors) {
    times.set(text, (times.get(text) || 0) + 1);
  }
  const shared = [...times].filter(([, n]) => n > 1).map(([text]) => `${say(text)}.`);
  return {
    shared,
    errors: errors.map((e) => ({ ...e, message: times.get(e.message) > 1 ? "Needed: see below." : say(e.message) })),
  };
}

function assignedText(alert) {
  const parts = [`${alert.report_count} report${alert.report_count === 1 ? "" : "s"}`,
    `first ${shortTime(alert.first_seen_at)}`];
  if (alert.acknowledged_by) {
    parts.push(`Acknowledged by ${alert.acknowledged_by} ${shortTime(alert.acknowledged_at)}`);
  }
  parts.push(alert.assigned_to ? `Assigned to ${alert.assigned_to}` : "Not assigned");
  if (alert.resolved_by) {
    parts.push(`Resolved by ${alert.resolved_by}: “${alert.resolution_reason}”`);
  }
  return parts.join(" · ");
}

function updateRow(row, alert) {
  const fresh = unseen.has(alert.id);
  row.className = `alert-row sev-${alert.severity}${fresh ? " is-new" : ""}`;
  row.dataset.status = alert.status;
  row.dataset.severity = alert.severity;
  row.dataset.revision = String(alert.revision);
  fillSeverity(row, alert.severity);
  const title = slot(row, "title");
  title.textContent = alert.rule_name;
  title.href = `/alerts/${alert.id}`;
  slot(row, "new").hidden = !fresh;
  const status = slot(row, "status");
  status.textContent = alert.status + (alert.escalation_level ? ` · escalated ×${alert.escalation_level}` : "");
  status.className = `status-chip status-${alert.status}`;
  // The values that raised it, when the service says (older servers do not).
  const triggered = typeof alert.triggered_by === "string" ? alert.triggered_by.trim() : "";
  slot(row, "triggered").hidden = !triggered;
  slot(row, "triggered-text").textContent = triggered;
  slot(row, "guidance").textContent = alert.guidance || "";
  slot(row, "guidance").hidden = !alert.guidance;
  slot(row, "assigned").textContent = assignedText(alert);
  slot(row, "dea").hidden = !alert.dea_notice_due;
  row.querySelector('[data-action="acknowledge"]').hidden = alert.status !== "open";
  const resolvable = alert.status !== "resolved";
  row.querySelector('[data-action="show-resolve"]').hidden = !resolvable;
  if (!resolvable) {
    row.querySelector(".resolve-form").hidden = true;
  }
  updateTime(row, alert);
}

/** The bar and the text of the time left to the deadline that matters now. */
function updateTime(row, alert) {
  const box = slot(row, "time");
  const deadline = deadlineOf(alert);
  box.classList.toggle("no-deadline", !deadline);
  if (!deadline) {
    slot(row, "time-what").textContent = "";
    slot(row, "time-left").textContent = alert.status === "resolved" ? "resolved" : "no deadline";
    slot(row, "time-fill").style.width = "0";
    box.classList.remove("overdue", "due-soon");
    return;
  }
  const now = serverNow();
  const end = new Date(deadline.at).getTime();
  const total = Math.max(end - new Date(deadline.start).getTime(), 1);
  const share = Math.min(Math.max((end - now) / total, 0), 1);
  const { overdue, text } = timeLeftText(deadline.at, now);
  slot(row, "time-what").textContent = `${deadline.what} by ${shortTime(deadline.at)}`;
  slot(row, "time-left").textContent = text;
  // CSSOM, not a style attribute: the CSP allows it.
  slot(row, "time-fill").style.width = overdue ? "100%" : `${Math.round(share * 100)}%`;
  box.classList.toggle("overdue", overdue);
  box.classList.toggle("due-soon", !overdue && share < 0.25);
}

let groupCounter = 0;

function buildGroup(key) {
  const group = groupTemplate.content.firstElementChild.cloneNode(true);
  group.dataset.group = key;
  const head = group.querySelector(".group-head");
  groupCounter += 1;
  head.id = `group-${groupCounter}`;
  group.setAttribute("aria-labelledby", head.id);
  return group;
}

function updateGroup(group, members) {
  const top = members.reduce((a, b) => (rank(b) > rank(a) ? b : a));
  const first = members[0];
  group.className = `alert-group sev-${top.severity}`;
  group.dataset.severity = top.severity;
  fillSeverity(group, top.severity);
  slot(group, "name").textContent =
    first.group_by === "patient" ? `Patient ${first.group_key}` : `Clinic ${first.clinic}: stock and clinic-wide`;
  const open = members.filter((a) => a.status === "open").length;
  slot(group, "meta").textContent =
    (first.group_by === "patient" ? `${first.clinic} · ` : "") +
    `${members.length} alert${members.length === 1 ? "" : "s"}` +
    (open ? `, ${open} open` : "");
}

/** Put ``child`` at ``index`` of ``parent``, moving only what is out of place: moving a
 * node loses the focus inside it. */
function place(parent, child, index) {
  if (parent.children[index] !== child) {
    parent.insertBefore(child, parent.children[index] || null);
  }
}

function render() {
  const visible = [...alerts.values()].filter(wanted);
  const arranged = arrange(visible);
  const ids = new Set(visible.map((a) => a.id));
  const keys = new Set(arranged.map((g) => g.key));
  for (const [id, row] of rows) {
    if (!ids.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  for (const [key, group] of groups) {
    if (!keys.has(key)) {
      group.remove();
      groups.delete(key);
    }
  }
  arranged.forEach(({ key, members }, index) => {
    let group = groups.get(key);
    if (!group) {
      group = buildGroup(key);
      groups.set(key, group);
    }
    updateGroup(group, members);
    place(queueEl, group, index);
    const list = group.querySelector(".alert-rows");
    members.forEach((alert, position) => {
      let row = rows.get(alert.id);
      if (!row) {
        row = buildRow(alert);
        rows.set(alert.id, row);
      }
      updateRow(row, alert);
      place(list, row, position);
    });
  });
  document.getElementById("queue-empty").hidden = visible.length > 0;
  renderCounts(visible, arranged.length);
  renderNew();
}

function renderCounts(visible, groupCount) {
  const counts = Object.fromEntries(SEVERITIES.map((s) => [s, 0]));
  for (const alert of visible) {
    counts[alert.severity] = (counts[alert.severity] || 0) + 1;
  }
  document.getElementById("severity-counts").replaceChildren(
    ...SEVERITIES.map((severity) =>
      h(
        "li",
        { class: `severity-count sev-${severity}${counts[severity] ? "" : " none"}`, "data-severity": severity },
        severityTag(severity),
        h("span", { class: "count" }, String(counts[severity])),
      ),
    ),
  );
  const open = visible.filter((a) => a.status === "open").length;
  document.getElementById("queue-summary").textContent =
    `${visible.length} alert${visible.length === 1 ? "" : "s"}` +
    (groupCount ? ` in ${groupCount} group${groupCount === 1 ? "" : "s"}` : "") +
    (open ? `, ${open} waiting for acknowledgement` : "") +
    (visible.length ? ". Most pressing first." : "");
}

function tick() {
  for (const [id, row] of rows) {
    // A reload clears the alerts before the list comes back; its rows go at the next render.
    const alert = alerts.get(id);
    if (alert) {
      updateTime(row, alert);
    }
  }
}

// --- loading and acting ----------------------------------------------------------------

async function loadStatus(status) {
  let cursor = null;
  for (let page = 0; page < MAX_PAGES; page += 1) {
    const params = new URLSearchParams({ status, limit: String(PAGE_LIMIT) });
    if (clinicFilter?.value) {
      params.set("clinic", clinicFilter.value);
    }
    if (cursor) {
      params.set("cursor", cursor);
    }
    // Never from the HTTP cache: after the Back button Chrome would show it, however old.
    const result = await api("GET", `/api/v1/alerts?${params}`, { cache: "no-store" });
    if (!result.ok) {
      throw new Error(problemMessage(result));
    }
    result.data.items.forEach(upsert);
    cursor = result.data.next_cursor;
    if (!cursor) {
      return;
    }
  }
}

async function load() {
  const errorEl = document.getElementById("queue-error");
  const statuses = statusFilter.value === "unresolved" ? ["open", "acknowledged"] : [statusFilter.value];
  try {
    for (const status of statuses) {
      await loadStatus(status);
    }
    errorEl.hidden = true;
    if (statusFilter.value === "unresolved" && !clinicFilter?.value) {
      forgetGone();
    }
  } catch (error) {
    errorEl.textContent = `Could not load the alerts: ${error.message}`;
    errorEl.hidden = false;
  }
  forgetHandled();
  render();
}

/** Every unresolved alert was loaded: a new one not among them was resolved meanwhile. */
function forgetGone() {
  const before = unseen.size;
  for (const id of unseen) {
    if (!alerts.has(id)) {
      unseen.delete(id);
    }
  }
  if (unseen.size !== before) {
    saveUnseen();
  }
}

/** An alert acknowledged or resolved (here or by someone else) is no longer new. */
function forgetHandled() {
  let changed = false;
  for (const id of unseen) {
    const alert = alerts.get(id);
    if (alert && alert.status !== "open") {
      unseen.delete(id);
      changed = true;
    }
  }
  if (changed) {
    saveUnseen();
  }
}

function message(row, text) {
  const el = slot(row, "message");
  el.textContent = text;
  el.hidden = !text;
}

async function act(row, action, body) {
  const id = row.dataset.id;
  message(row, "");
  const buttons = [...row.querySelectorAll("button")];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const result = await api("POST", `/api/v1/alerts/${id}/${action}`, {
      json: { ...body, revision: Number(row.dataset.revision) },
    });
    if (result.ok) {
      upsert(result.data);
      markSeen(id);
      announce(`Alert ${action === "resolve" ? "resolved" : "acknowledged"}.`);
    } else if (result.status === 422 && result.data?.errors) {
      // Said beside the fields (the DEA details of a theft or loss), else below the row.
      const { errors, shared } = inFormWords(row.querySelector(".resolve-form"), result.data.errors);
      if (!showFieldErrors(row, errors)) {
        message(row, errors.map((e) => e.message).join(" "));
      } else {
        message(row, `Nothing was changed: ${shared.length ? shared.join(" ") : "please check the marked fields."}`);
      }
    } else {
      message(row, problemMessage(result));
      if (result.status === 409) {
        const fresh = await api("GET", `/api/v1/alerts/${id}`, { cache: "no-store" });
        if (fresh.ok) {
          upsert(fresh.data);
        }
      }
    }
  } catch (error) {
    message(row, "No connection: nothing was changed. Try again when the network is back.");
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    forgetHandled();
    render();
  }
}

// --- the live stream -------------------------------------------------------------------

function setStream(state, text) {
  streamStatus.dataset.state = state;
  streamStatus.textContent = text;
}

function follow() {
  const source = new EventSource("/api/v1/alerts/stream");
  source.addEventListener("open", () => setStream("live", "Live: updates appear by themselves"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // The server refused the stream (signed out): EventSource does not retry that.
      setStream("closed", "Live updates stopped. Reload the page or sign in again.");
    } else {
      setStream("connecting", "Reconnecting to live updates…");
    }
  });
  source.addEventListener("alert", (event) => {
    const data = JSON.parse(event.data);
    if (!upsert(data.alert)) {
      return;
    }
    if (NEW_ACTIONS.has(data.action) && data.alert.status === "open") {
      markNew(data.alert);
    }
    forgetHandled();
    render();
  });
}

function init() {
  const reload = () => {
    alerts.clear();
    load();
  };
  statusFilter.addEventListener("change", reload);
  clinicFilter?.addEventListener("change", reload);
  setUpSound();
  setUpNotifications();
  // The stream first, then the list: an alert raised in between arrives either way.
  follow();
  load();
  setInterval(tick, 1000);
}

init();
