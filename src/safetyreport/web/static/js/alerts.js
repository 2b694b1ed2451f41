// The alert queue: loaded from the API, kept current by the live event stream (SSE),
// most severe first, then oldest first, with a countdown to each acknowledgement deadline.
// Cards are updated in place, so an open "resolve" form or the focus survive updates.

import {
  announce, api, countdownText, formatLocal, h, problemMessage,
} from "./common.js";

const SEVERITY_RANK = { critical: 3, urgent: 2, high: 1, info: 0 };
const PAGE_LIMIT = 200;
const MAX_PAGES = 10;

const queueEl = document.getElementById("queue");
const template = document.getElementById("alert-card");
const statusFilter = document.getElementById("status-filter");
const clinicFilter = document.getElementById("clinic-filter");
const streamStatus = document.getElementById("stream-status");

const alerts = new Map(); // id -> alert (the API's AlertView)
const cards = new Map(); // id -> <li>

function wanted(alert) {
  const status = statusFilter.value;
  const statusOk = status === "unresolved" ? alert.status !== "resolved" : alert.status === status;
  const clinic = clinicFilter?.value || "";
  return statusOk && (!clinic || alert.clinic === clinic);
}

function compare(a, b) {
  return (
    (SEVERITY_RANK[b.severity] ?? 0) - (SEVERITY_RANK[a.severity] ?? 0) ||
    a.first_seen_at.localeCompare(b.first_seen_at) ||
    a.id.localeCompare(b.id)
  );
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

// --- cards -----------------------------------------------------------------------

const slot = (card, name) => card.querySelector(`[data-slot="${name}"]`);

function buildCard(alert) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.id = alert.id;
  const reason = slot(card, "reason");
  reason.id = `reason-${alert.id}`;
  slot(card, "reason-label").setAttribute("for", reason.id);
  slot(card, "reason-error").id = `reason-error-${alert.id}`;
  reason.setAttribute("aria-describedby", `reason-error-${alert.id}`);
  const form = card.querySelector(".resolve-form");
  const toggle = card.querySelector('[data-action="show-resolve"]');
  card.querySelector('[data-action="acknowledge"]').addEventListener("click", () => act(card, "acknowledge", {}));
  toggle.addEventListener("click", () => {
    form.hidden = !form.hidden;
    toggle.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) {
      reason.focus();
    }
  });
  card.querySelector('[data-action="cancel-resolve"]').addEventListener("click", () => {
    form.hidden = true;
    toggle.setAttribute("aria-expanded", "false");
    toggle.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = reason.value.trim();
    const error = slot(card, "reason-error");
    if (!text) {
      error.textContent = "Say why the alert is resolved.";
      error.hidden = false;
      reason.setAttribute("aria-invalid", "true");
      reason.focus();
      return;
    }
    error.hidden = true;
    reason.removeAttribute("aria-invalid");
    act(card, "resolve", { reason: text });
  });
  return card;
}

function metaText(alert) {
  const group =
    alert.group_by === "patient" ? `patient ${alert.group_key}` : alert.group_by === "report" ? "one incident" : "whole clinic";
  const reports = `${alert.report_count} report${alert.report_count === 1 ? "" : "s"}`;
  return `${alert.clinic} · ${group} · ${reports} · first ${formatLocal(alert.first_seen_at)} · last ${formatLocal(alert.last_seen_at)}`;
}

function updateCard(card, alert) {
  card.className = `alert-card sev-${alert.severity}`;
  card.dataset.status = alert.status;
  card.dataset.revision = String(alert.revision);
  const severity = slot(card, "severity");
  severity.textContent = alert.severity;
  severity.className = `badge sev-${alert.severity}`;
  const title = slot(card, "title");
  title.textContent = alert.rule_name;
  title.href = `/alerts/${alert.id}`;
  const status = slot(card, "status");
  status.textContent = alert.status + (alert.escalation_level ? ` · escalated ×${alert.escalation_level}` : "");
  status.className = `status-chip status-${alert.status}`;
  slot(card, "meta").textContent = metaText(alert);
  slot(card, "assigned").textContent = assignedText(alert);
  const details = slot(card, "details");
  details.href = `/alerts/${alert.id}`;
  details.setAttribute("aria-label", `Details of ${alert.rule_name}, ${alert.clinic}`);
  card.querySelector('[data-action="acknowledge"]').hidden = alert.status !== "open";
  const resolvable = alert.status !== "resolved";
  card.querySelector('[data-action="show-resolve"]').hidden = !resolvable;
  if (!resolvable) {
    card.querySelector(".resolve-form").hidden = true;
  }
  updateDeadline(card, alert);
}

function assignedText(alert) {
  const parts = [];
  if (alert.acknowledged_by) {
    parts.push(`Acknowledged by ${alert.acknowledged_by} ${formatLocal(alert.acknowledged_at)}`);
  }
  parts.push(alert.assigned_to ? `Assigned to ${alert.assigned_to}` : "Not assigned");
  if (alert.resolved_by) {
    parts.push(`Resolved by ${alert.resolved_by}: “${alert.resolution_reason}”`);
  }
  return parts.join(" · ");
}

function updateDeadline(card, alert) {
  const el = slot(card, "deadline");
  if (alert.status !== "open" || !alert.ack_deadline) {
    el.hidden = true;
    return;
  }
  const { overdue, text } = countdownText(alert.ack_deadline);
  el.hidden = false;
  el.textContent = `Acknowledge by ${formatLocal(alert.ack_deadline)}: ${text}`;
  el.classList.toggle("overdue", overdue);
}

function message(card, text) {
  const el = slot(card, "message");
  el.textContent = text;
  el.hidden = !text;
}

// --- rendering the list ----------------------------------------------------------

function render() {
  const visible = [...alerts.values()].filter(wanted).sort(compare);
  const ids = new Set(visible.map((a) => a.id));
  for (const [id, card] of cards) {
    if (!ids.has(id)) {
      card.remove();
      cards.delete(id);
    }
  }
  visible.forEach((alert, index) => {
    let card = cards.get(alert.id);
    if (!card) {
      card = buildCard(alert);
      cards.set(alert.id, card);
    }
    updateCard(card, alert);
    // Move only what is out of place: moving a node loses the focus inside it.
    if (queueEl.children[index] !== card) {
      queueEl.insertBefore(card, queueEl.children[index] || null);
    }
  });
  document.getElementById("queue-empty").hidden = visible.length > 0;
  const open = visible.filter((a) => a.status === "open").length;
  document.getElementById("queue-summary").textContent =
    `${visible.length} alert${visible.length === 1 ? "" : "s"}` + (open ? `, ${open} waiting for acknowledgement` : "");
}

function tick() {
  for (const [id, card] of cards) {
    updateDeadline(card, alerts.get(id));
  }
}

// --- loading and acting ----------------------------------------------------------

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
    const result = await api("GET", `/api/v1/alerts?${params}`);
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
  } catch (error) {
    errorEl.textContent = `Could not load the alerts: ${error.message}`;
    errorEl.hidden = false;
  }
  render();
}

async function act(card, action, body) {
  const id = card.dataset.id;
  message(card, "");
  const buttons = [...card.querySelectorAll("button")];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const result = await api("POST", `/api/v1/alerts/${id}/${action}`, {
      json: { ...body, revision: Number(card.dataset.revision) },
    });
    if (result.ok) {
      upsert(result.data);
      announce(`Alert ${action === "resolve" ? "resolved" : "acknowledged"}.`);
    } else {
      message(card, problemMessage(result));
      if (result.status === 409) {
        const fresh = await api("GET", `/api/v1/alerts/${id}`);
        if (fresh.ok) {
          upsert(fresh.data);
        }
      }
    }
  } catch (error) {
    message(card, "No connection: nothing was changed. Try again when the network is back.");
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    render();
  }
}

// --- the live stream ---------------------------------------------------------------

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
    const isNew = !alerts.has(data.alert.id);
    if (!upsert(data.alert)) {
      return;
    }
    render();
    const card = cards.get(data.alert.id);
    if (isNew && card) {
      card.classList.add("fresh");
      setTimeout(() => card.classList.remove("fresh"), 15000);
      announce(`New ${data.alert.severity} alert: ${data.alert.rule_name}, ${data.alert.clinic}.`);
    }
  });
}

function init() {
  const reload = () => {
    alerts.clear();
    load();
  };
  statusFilter.addEventListener("change", reload);
  clinicFilter?.addEventListener("change", reload);
  // The stream first, then the list: an alert raised in between arrives either way.
  follow();
  load();
  setInterval(tick, 1000);
}

init();
