// Admins only: the sign-in lock-outs of the last 24 hours that look like an attack (an
// account attacked from many addresses, an address guessing many accounts), newest first,
// from GET /api/v1/auth/lockouts, refreshed every 30 s. Nothing is shown when there are none.

import { api, formatLocal, h, problemMessage, serverNow } from "./common.js";

const WINDOW_MS = 24 * 60 * 60 * 1000;
const REFRESH_MS = 30 * 1000;

const panel = document.getElementById("lockouts");
const list = document.getElementById("lockouts-list");
const summary = document.getElementById("lockouts-summary");
const errorEl = document.getElementById("lockouts-error");

function what(alert) {
  return alert.scope === "account"
    ? { label: `Account ${alert.key}`, pattern: "attacked from many addresses" }
    : { label: `Address ${alert.key}`, pattern: "guessing at many accounts" };
}

/** Local time to the second: the first locks last only seconds. */
function at(value) {
  const date = new Date(value);
  return `${formatLocal(date)}:${String(date.getSeconds()).padStart(2, "0")}`;
}

function item(alert) {
  const { label, pattern } = what(alert);
  const n = alert.clinics.length;
  const over = new Date(alert.locked_until).getTime() <= serverNow();
  const parts = [
    `${alert.failures} failed sign-ins`,
    `raised ${at(alert.raised_at)}`,
    `${over ? "lock ended" : "locked until"} ${at(alert.locked_until)}`,
  ];
  if (n) {
    parts.push(`clinic${n === 1 ? "" : "s"} ${alert.clinics.join(", ")}`);
  }
  // Each part kept on one line, so a time is never split.
  const meta = parts.flatMap((part, i) => [i ? " · " : "", h("span", { class: "nowrap" }, part)]);
  return h(
    "li",
    { class: "lockout", "data-scope": alert.scope, "data-key": alert.key },
    h("p", { class: "lockout-what" }, h("strong", {}, label), `: ${pattern}`),
    h("p", { class: "lockout-meta" }, meta),
  );
}

function show(alerts) {
  panel.hidden = alerts.length === 0;
  list.replaceChildren(...alerts.map(item));
  const text = alerts.length
    ? `${alerts.length === 1 ? "1 lock-out" : `${alerts.length} lock-outs`} in the last 24 hours`
      + ` ${alerts.length === 1 ? "looks" : "look"} like password guessing.`
      + " Check with the people concerned."
    : "";
  // Only a change is announced again.
  if (summary.textContent !== text) {
    summary.textContent = text;
  }
}

// What the panel shows: the window's alerts, newest first. The first load asks for the
// whole window; later ones only for alerts raised after the newest shown (an empty
// answer is not audited, so polling adds no audit entries while nothing happens).
let shown = [];

async function load() {
  const windowStart = serverNow() - WINDOW_MS;
  const since = shown.length ? shown[0].raised_at : new Date(windowStart).toISOString();
  try {
    const result = await api("GET", `/api/v1/auth/lockouts?${new URLSearchParams({ since })}`);
    if (!result.ok) {
      throw new Error(problemMessage(result));
    }
    errorEl.hidden = true;
    shown = [...result.data, ...shown].filter((a) => new Date(a.raised_at).getTime() >= windowStart);
    show(shown);
  } catch (error) {
    errorEl.textContent = `Could not load the sign-in lock-outs: ${error.message}`;
    errorEl.hidden = false;
  }
}

load();
// A tab in the background does not ask; it asks when shown again.
setInterval(() => { if (!document.hidden) { load(); } }, REFRESH_MS);
document.addEventListener("visibilitychange", () => { if (!document.hidden) { load(); } });
