// Shared by every page: calling the API with the session's CSRF token, local times,
// the online/offline banner and the service worker. Loaded as a module; pages import it.

const CSRF_HEADER = "X-CSRF-Token";

let csrfToken = document.querySelector('meta[name="csrf-token"]')?.content || "";

export function setCsrfToken(token) {
  csrfToken = token;
  document.querySelector('meta[name="csrf-token"]')?.setAttribute("content", token);
}

export const currentUser = document.body.dataset.user || "";

// The server's clock minus ours, learnt from the Date header of API answers, so
// countdowns to deadlines do not depend on a tablet's clock being right.
let clockOffsetMs = 0;

// The alerts new to this officer that she has not opened yet (ids, in this tab's session
// storage): the queue keeps them, an alert's page forgets its own.
export const UNSEEN_ALERTS_KEY = `safetyreport-unseen-alerts:${currentUser}`;

export function forgetUnseenAlert(id) {
  try {
    const ids = JSON.parse(sessionStorage.getItem(UNSEEN_ALERTS_KEY) || "[]");
    if (ids.includes(id)) {
      sessionStorage.setItem(UNSEEN_ALERTS_KEY, JSON.stringify(ids.filter((other) => other !== id)));
    }
  } catch (error) {
    // Storage unavailable or unreadable: nothing was kept.
  }
}

export function serverNow() {
  return Date.now() + clockOffsetMs;
}

function learnClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    clockOffsetMs = date - Date.now();
  }
}

/**
 * Call the API with the session cookie. Unsafe methods carry the CSRF token.
 * Returns {status, ok, data, response}; a network failure throws (NetworkError).
 * ``cache`` is fetch's cache mode: "no-store" for what must be current even on a page
 * reached by the Back button (Chrome then prefers its HTTP cache, however old).
 */
export async function api(method, url, { json, body, headers = {}, signal, cache } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin", signal };
  if (cache) {
    init.cache = cache;
  }
  if (method !== "GET" && method !== "HEAD") {
    init.headers[CSRF_HEADER] = csrfToken;
  }
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw new NetworkError(error.message);
  }
  learnClock(response);
  if (response.status === 401) {
    await forgetPages();
  } else if (currentUser) {
    noteActivity();
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  return { status: response.status, ok: response.ok, data, response };
}

export class NetworkError extends Error {}

/** The message of an API problem document, for people. */
export function problemMessage(result) {
  if (result.status === 401) {
    return "Your session has ended. Sign in again.";
  }
  if (result.status === 409) {
    return "Someone else changed this at the same moment. The page shows the latest state; try again if still needed.";
  }
  const data = result.data || {};
  return data.detail || data.title || `The server answered ${result.status}.`;
}

/** A new idempotency key (UUID v4); randomUUID needs a secure context, which we have. */
export function newKey() {
  if (crypto.randomUUID) {
    return crypto.randomUUID();
  }
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// --- times ---------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");

/** "+01:00" for this device at ``date``. */
export function offsetText(date = new Date()) {
  const minutes = -date.getTimezoneOffset();
  const sign = minutes >= 0 ? "+" : "-";
  const abs = Math.abs(minutes);
  return `${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

/** A local time as ISO 8601 with this device's offset (the API refuses times without one). */
export function isoWithOffset(date) {
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}${offsetText(date)}`
  );
}

/** The value a datetime-local input shows for ``date`` (local, to the minute). */
export function localInputValue(date) {
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`
  );
}

/** The Date a datetime-local value means on this device, or null. */
export function parseLocalInput(value) {
  const match = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(value || "");
  if (!match) {
    return null;
  }
  const [, y, mo, d, h, mi, s] = match.map(Number);
  return new Date(y, mo - 1, d, h, mi, s || 0);
}

export function formatLocal(value) {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) {
    return "";
  }
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** Turn every <time datetime data-local> (UTC from the server) into local time. */
export function localizeTimes(root = document) {
  for (const el of root.querySelectorAll("time[data-local]")) {
    const text = formatLocal(el.getAttribute("datetime"));
    if (text) {
      el.textContent = text;
      el.title = `${el.getAttribute("datetime")} (UTC)`;
    }
  }
}

/** "in 12 min 5 s" / "overdue by 3 min": the time left until ``deadline``. */
export function countdownText(deadline) {
  const ms = new Date(deadline).getTime() - serverNow();
  const seconds = Math.floor(Math.abs(ms) / 1000);
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  const span = h > 0 ? `${h} h ${pad(m)} min` : `${m} min ${pad(s)} s`;
  return { overdue: ms < 0, text: ms < 0 ? `overdue by ${span}` : `${span} left` };
}

// --- small DOM helpers -----------------------------------------------------------

/** Say ``message`` to screen readers (polite). */
export function announce(message) {
  const el = document.getElementById("announcer");
  if (el) {
    el.textContent = "";
    setTimeout(() => { el.textContent = message; }, 50);
  }
}

/** Build an element: h("p", {class: "x"}, "text", child). Text is always text, never HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) {
      continue;
    }
    el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return el;
}

export function show(el, visible) {
  if (el) {
    el.hidden = !visible;
  }
}

// --- network banner --------------------------------------------------------------

function updateNetworkBanner() {
  const banner = document.getElementById("net-status");
  if (!banner) {
    return;
  }
  if (navigator.onLine) {
    if (!banner.hidden && banner.dataset.state === "offline") {
      banner.textContent = "Back online.";
      banner.className = "net-status online";
      banner.dataset.state = "online";
      setTimeout(() => { if (navigator.onLine) banner.hidden = true; }, 4000);
    }
    return;
  }
  banner.dataset.state = "offline";
  banner.className = "net-status";
  const page = document.body.dataset.page;
  banner.textContent = page === "report"
    ? "Offline. You can keep reporting: reports are saved on this tablet and sent when the network is back."
    : page === "flowsheet"
      ? "Offline. You can keep recording the session: each step is saved on this tablet and sent in order when the network is back."
      : "Offline. What you see may be out of date.";
  banner.hidden = false;
}

// --- the end of a session ---------------------------------------------------------
//
// Pages kept for offline use belong to whoever was signed in: they are forgotten when
// the session ends (sign-out, a 401, idle expiry), so the next person on a shared tablet
// finds nothing of them. The outbox (outbox.js) is not a page cache: each entry stays,
// marked with its author, until the server has answered it.

const PAGE_CACHE_PREFIX = "sr-pages-";
// Shared by this origin's tabs: the last time any of them used the session.
const ACTIVITY_KEY = "safetyreport-last-activity";
// The server's idle timeout (same setting); checked a little after it has passed.
const IDLE_MS = Number(document.body.dataset.idleSeconds || 0) * 1000;
const IDLE_MARGIN_MS = 30000;
const IDLE_CHECK_MS = 15000;

/** Delete every page the service worker kept (it keeps them in sr-pages-<version>), the
 * kept answers of sent reports (the action cards, see outbox.js) and the flowsheet's
 * sessions in progress. */
export async function forgetPages() {
  try {
    await (await import("./outbox.js")).forgetAnswers();
  } catch (error) {
    console.warn("could not forget the kept answers:", error);
  }
  forgetFlowsheets();
  if (!("caches" in window)) {
    return;
  }
  try {
    const names = await caches.keys();
    await Promise.all(names.filter((n) => n.startsWith(PAGE_CACHE_PREFIX)).map((n) => caches.delete(n)));
  } catch (error) {
    console.warn("could not forget the kept pages:", error);
  }
}

// The session flowsheet keeps its sessions in progress here (flowsheet.js); they name
// patients, so they go with the session too (their unsent steps stay in the outbox).
export const FLOWSHEET_PREFIX = "safetyreport-flowsheet:";

function forgetFlowsheets() {
  try {
    for (const key of Object.keys(localStorage)) {
      if (key.startsWith(FLOWSHEET_PREFIX)) {
        localStorage.removeItem(key);
      }
    }
  } catch (error) {
    // Storage unavailable: nothing was kept.
  }
}

let lastNoted = 0;

function noteActivity() {
  const now = Date.now();
  if (now - lastNoted < 1000) {
    return;
  }
  lastNoted = now;
  try {
    localStorage.setItem(ACTIVITY_KEY, String(now));
  } catch (error) {
    // Storage unavailable: this tab's own timer still works.
  }
}

function lastActivity() {
  try {
    return Math.max(lastNoted, Number(localStorage.getItem(ACTIVITY_KEY)) || 0);
  } catch (error) {
    return lastNoted;
  }
}

let idleCheckRunning = false;

/** Past the idle timeout: ask the server; if the session is over (or unreachable), end here too. */
async function checkIdle() {
  if (idleCheckRunning || Date.now() - lastActivity() < IDLE_MS + IDLE_MARGIN_MS) {
    return;
  }
  idleCheckRunning = true;
  try {
    let ended = true;
    try {
      const response = await fetch("/web/session", { credentials: "same-origin", cache: "no-store" });
      ended = response.status === 401;
    } catch (error) {
      // Offline: no request reached the server for longer than its idle timeout.
    }
    if (!ended) {
      noteActivity(); // another tab kept the session alive
      return;
    }
    await forgetPages();
    document.documentElement.dataset.sessionEnded = "idle";
    location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
  } finally {
    idleCheckRunning = false;
  }
}

function watchIdle() {
  if (!currentUser || !IDLE_MS) {
    return;
  }
  noteActivity();
  for (const type of ["pointerdown", "keydown", "touchstart"]) {
    window.addEventListener(type, noteActivity, { passive: true });
  }
  setInterval(checkIdle, IDLE_CHECK_MS);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      checkIdle();
    }
  });
}

// A page may hold sign-out back (the report page asks about reports still waiting).
let signOutCheck = async () => true;

export function beforeSignOut(check) {
  signOutCheck = check;
}

function guardSignOut() {
  const form = document.getElementById("logout-form");
  form?.addEventListener("submit", async (event) => {
    event.preventDefault(); // the checks below are async; form.submit() sends it after
    if (await signOutCheck()) {
      await forgetPages();
      form.submit();
    }
  });
}

// Reports this user saved on this tablet are sent from whatever page she lands on after
// signing in again (a safety officer lands on the alerts), by the outbox's one sender.
// The report page sends and shows its outbox itself. What stays unsent (refused by the
// server, or no network) is pointed out, with a link to the report form.
const WRITER_ROLES = ["nurse", "safety_officer"];
const SEND_RETRY_MS = 20000;

async function sendWaitingReports() {
  const notice = document.getElementById("outbox-notice");
  // The report page and the session flowsheet send and show the outbox themselves.
  if (!notice || !currentUser || ["report", "flowsheet"].includes(document.body.dataset.page)
      || !WRITER_ROLES.includes(document.body.dataset.role)) {
    return;
  }
  let outbox;
  try {
    outbox = await import("./outbox.js");
  } catch (error) {
    console.warn("could not read the outbox:", error);
    return;
  }
  const sent = [];
  let signedOut = false;
  const hooks = {
    sent: (entry) => { sent.push(entry); },
    session: (state) => { signedOut = state === "signed-out"; },
  };
  const mine = async () => (await outbox.all()).filter((e) => e.user === currentUser);

  const showNotice = async () => {
    const left = await mine();
    const failed = left.filter((e) => e.state === "failed");
    const waiting = left.filter((e) => e.state !== "failed");
    if (!left.length) {
      if (sent.length) {
        notice.className = "net-status online";
        notice.replaceChildren(`${outbox.describe(sent)} you saved on this tablet have been sent.`);
        notice.hidden = false;
      } else {
        notice.hidden = true;
      }
      return;
    }
    const parts = [];
    if (sent.length) {
      parts.push(`${outbox.describe(sent)} you saved on this tablet have been sent.`);
    }
    if (waiting.length) {
      const why = signedOut ? "Your session has ended." : navigator.onLine ? "They will be sent shortly." : "They will be sent when the network is back.";
      parts.push(`${outbox.describe(waiting)} you saved on this tablet have not been sent yet. ${why}`);
    }
    if (failed.length) {
      parts.push(`${outbox.describe(failed)} were refused by the server and need correcting.`);
    }
    // Refused session steps are corrected on the flowsheet, reports on the report form.
    const fix = failed.length && failed.every(outbox.isStep)
      ? h("a", { href: "/sessions/flowsheet" }, "Open the session flowsheet.")
      : h("a", { href: "/report" }, "Open the report form.");
    notice.className = "net-status";
    notice.replaceChildren(`${parts.join(" ")} `, fix);
    notice.hidden = false;
  };

  const send = async () => {
    try {
      await outbox.sendQueued(currentUser, hooks);
      await showNotice();
    } catch (error) {
      console.warn("could not send the outbox:", error);
    }
  };
  window.addEventListener("online", send);
  setInterval(async () => {
    try {
      if ((await mine()).some((e) => e.state !== "failed")) {
        send();
      }
    } catch (error) {
      // Storage trouble: tried again at the next interval.
    }
  }, SEND_RETRY_MS);
  await send();
}

// --- service worker --------------------------------------------------------------

async function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) {
    return;
  }
  try {
    await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    const registration = await navigator.serviceWorker.ready;
    if (document.body.dataset.user) {
      keepPageOffline(registration);
    }
  } catch (error) {
    console.warn("service worker unavailable:", error);
  }
}

// Ask the worker to keep this page (it keeps only its list of offline pages, see
// web/assets.py); <html data-offline-ready> says when the page is ready for offline use.
function keepPageOffline(registration) {
  navigator.serviceWorker.addEventListener("message", (event) => {
    if (event.data?.type === "page-kept" && event.data.path === location.pathname && event.data.kept) {
      document.documentElement.dataset.offlineReady = "yes";
    }
  });
  registration.active?.postMessage({ type: "keep-page", path: location.pathname });
}

function init() {
  for (const el of document.querySelectorAll(".tz-label")) {
    el.textContent = `UTC${offsetText()}`;
  }
  localizeTimes();
  updateNetworkBanner();
  window.addEventListener("online", updateNetworkBanner);
  window.addEventListener("offline", updateNetworkBanner);
  guardSignOut();
  watchIdle();
  sendWaitingReports();
  registerServiceWorker();
}

init();
