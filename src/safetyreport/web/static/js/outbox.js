// The outbox: what waits on this device, in IndexedDB, until the server took it: reports
// (the report page) and the steps of treatment sessions (the session flowsheet).
//
// An entry is {key, user, kind, body, state, error, createdAt, attempts}. ``key`` is the
// Idempotency-Key made when the form was opened: sending an entry twice (a lost answer,
// two tabs) stores one report. An entry is deleted only after a 2xx answer; a 422 keeps
// it as "failed" with the server's reasons until the nurse corrects or discards it.
// States: queued (waiting), sending (a request is out; after a crash it is sent again),
// failed (the server refused it).
//
// A session's step also has ``path`` (where it is POSTed: /api/v1/sessions, or the
// session's /dose, /observations or /discharge) and ``session`` ({id, clinic, patient_ref,
// drug}: the id is made on the tablet, so the later steps can be queued before the session
// reached the server). Its kind is "session", "dose", "observation" or "discharge". Entries
// go oldest first (``createdAt``, see nextCreatedAt); a session's step waits while an
// earlier step of the same session is refused, so nothing reaches the server out of order.
//
// ``sendQueued`` is the one sender: the report page and the flowsheet call it (and draw
// the outbox from its hooks), and every other signed-in page of a reporting user calls it
// on load, so a user's reports and steps leave the tablet when she signs in again,
// wherever she lands.
//
// The server's answer that raised alerts is kept (database "safetyreport-answers") until
// the nurse dismisses its action cards on the report page or the flowsheet: an entry sent
// in the background, from another page or another tab, still shows what to do about it.
// An answer is {key, user, kind, body, reportId, alerts, sentAt}, alerts as the 201 lists
// them (for a session's step, body carries the session's clinic and patient too).

import { api, beforeSignOut, problemMessage, setCsrfToken } from "./common.js";

const STORE = "outbox";
const ANSWERS = "answers";
// Each store in a database of its own, so adding the answers needed no upgrade of the
// outbox's database (an upgrade waits for every open tab of the old page to close).
const DATABASES = { [STORE]: "safetyreport", [ANSWERS]: "safetyreport-answers" };
const DB_VERSION = 1;

const opened = {};

function openDb(store) {
  if (!opened[store]) {
    opened[store] = new Promise((resolve, reject) => {
      const request = indexedDB.open(DATABASES[store], DB_VERSION);
      request.onupgradeneeded = () => {
        const db = request.result;
        if (!db.objectStoreNames.contains(store)) {
          db.createObjectStore(store, { keyPath: "key" });
        }
      };
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }
  return opened[store];
}

// Run ``work(store)`` in one transaction on ``store``; resolves when it has committed.
async function withStore(mode, work, store = STORE) {
  const db = await openDb(store);
  return new Promise((resolve, reject) => {
    const tx = db.transaction(store, mode);
    let result;
    tx.oncomplete = () => resolve(result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("outbox transaction aborted"));
    const request = work(tx.objectStore(store));
    if (request) {
      request.onsuccess = () => { result = request.result; };
    }
  });
}

/** Every entry, oldest first. */
export async function all() {
  const entries = await withStore("readonly", (store) => store.getAll());
  return (entries || []).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

/** A ``createdAt`` for a new entry: now, but after every entry there is, so that steps
 * saved within the same millisecond still go in the order they were saved. */
export async function nextCreatedAt() {
  const last = (await all()).at(-1);
  const now = Date.now();
  const after = last ? Date.parse(last.createdAt) + 1 : now;
  return new Date(Math.max(now, after)).toISOString();
}

/** The step of a treatment session (not a report). */
export const isStep = (entry) => Boolean(entry.session);

/** How many entries, in words: "3 report(s)", or with a flowsheet's steps among them
 * "2 report(s) and 1 session step(s)". */
export function describe(entries) {
  const steps = entries.filter(isStep).length;
  const reports = entries.length - steps;
  return [reports ? `${reports} report(s)` : "", steps ? `${steps} session step(s)` : ""].filter(Boolean).join(" and ");
}

export function put(entry) {
  return withStore("readwrite", (store) => store.put(entry));
}

export function remove(key) {
  return withStore("readwrite", (store) => store.delete(key));
}

/** Add ``entry``, replacing the entry ``replacedKey`` (a corrected one) in the same commit. */
export function add(entry, replacedKey = null) {
  return withStore("readwrite", (store) => {
    if (replacedKey && replacedKey !== entry.key) {
      store.delete(replacedKey);
    }
    return store.put(entry);
  });
}

// --- answers with alerts ----------------------------------------------------------

/** ``user``'s kept answers, oldest first. */
export async function answers(user) {
  const kept = await withStore("readonly", (store) => store.getAll(), ANSWERS);
  return (kept || []).filter((a) => a.user === user).sort((a, b) => a.sentAt.localeCompare(b.sentAt));
}

export function putAnswer(answer) {
  return withStore("readwrite", (store) => store.put(answer), ANSWERS);
}

export function removeAnswer(key) {
  return withStore("readwrite", (store) => store.delete(key), ANSWERS);
}

/** Forget every kept answer: they name patients, and the session that saw them ended. */
export function forgetAnswers() {
  return withStore("readwrite", (store) => store.clear(), ANSWERS);
}

/** The entry leaves the outbox, its answer kept first if it raised alerts: should the
 * tablet stop between the two, the entry is sent again with its key, and the replayed
 * answer takes the same place. */
async function settle(entry, answer) {
  if (answer.alerts.length) {
    await putAnswer(answer);
  }
  await remove(entry.key);
}

export async function update(key, changes) {
  return withStore("readwrite", (store) => {
    const request = store.get(key);
    request.onsuccess = () => {
      if (request.result) {
        store.put({ ...request.result, ...changes });
      }
    };
  });
}

// --- sending ---------------------------------------------------------------------

// A request on bad Wi-Fi that has not answered by then is abandoned and retried later
// with the same key (if the server did store it, the retry replays its answer).
const SEND_TIMEOUT_MS = 20000;

/** Ask the server whether ``user`` is still signed in here, and for a fresh CSRF token. */
async function refreshSession(user) {
  try {
    const result = await api("GET", "/web/session");
    if (result.status === 401 || (result.ok && result.data?.username !== user)) {
      return "signed-out";
    }
    if (result.ok) {
      setCsrfToken(result.data.csrf_token);
      return "ok";
    }
    return "unavailable";
  } catch (error) {
    return "unavailable";
  }
}

// A 409 of the idempotency lock: the same key is still being processed (another tab).
const BUSY = "still being processed";

/** Whether a session step the server refused with 409 (done already) is this step, stored
 * earlier: its Idempotency-Key had expired while the tablet was offline longer than the
 * server keeps keys. The session as the server has it says. */
async function storedAlready(entry) {
  let result;
  try {
    result = await api("GET", `/api/v1/sessions/${entry.session.id}`, { cache: "no-store" });
  } catch (error) {
    return false;
  }
  const view = result.ok ? result.data : null;
  const same = (a, b) => Boolean(a && b) && Date.parse(a) === Date.parse(b);
  switch (view && entry.kind) {
    case "session":
      return view.created_by === entry.user && view.patient_ref === entry.body.patient_ref;
    case "dose":
      return same(view.dosed_at, entry.body.dosed_at) && view.dose_mg === entry.body.dose_mg;
    case "discharge":
      return same(view.discharged_at, entry.body.discharged_at);
    default:
      return false;
  }
}

async function sendOne(entry, hooks) {
  await update(entry.key, { state: "sending", attempts: (entry.attempts || 0) + 1 });
  await hooks.changed?.();
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), SEND_TIMEOUT_MS);
  let result;
  try {
    result = await api("POST", entry.path || "/api/v1/reports", {
      json: entry.body,
      headers: { "Idempotency-Key": entry.key },
      signal: controller.signal,
    });
  } catch (error) {
    await update(entry.key, { state: "queued" });
    return { state: "queued" };
  } finally {
    clearTimeout(timer);
  }
  let stored = result.ok;
  if (result.status === 409 && isStep(entry) && !(result.data?.detail || "").includes(BUSY)) {
    stored = await storedAlready(entry);
    if (!stored) {
      const message = problemMessage(result);
      await update(entry.key, { state: "failed", error: { message, errors: [{ field: "$", message }] } });
      return { state: "failed", errors: [{ field: "$", message }] };
    }
  }
  if (stored) {
    const answer = {
      key: entry.key,
      user: entry.user,
      kind: entry.kind,
      // A step's answer names its session's clinic and patient, as a report's does.
      body: isStep(entry)
        ? { ...entry.body, clinic: entry.session.clinic, patient_ref: entry.session.patient_ref }
        : entry.body,
      reportId: result.ok ? result.data?.id || null : null,
      alerts: (result.ok && result.data?.alerts) || [],
      sentAt: new Date().toISOString(),
    };
    await settle(entry, answer);
    await hooks.sent?.({ ...entry, state: "sent", answer });
    return { state: "sent", answer };
  }
  if (result.status === 401) {
    hooks.session?.("signed-out");
    await update(entry.key, { state: "queued" });
    return { state: "queued" };
  }
  if (result.status === 409 || result.status === 429 || result.status >= 500) {
    // Busy or briefly down: the same key is sent again later.
    await update(entry.key, { state: "queued" });
    return { state: "queued" };
  }
  const errors = result.data?.errors || [{ field: "$", message: problemMessage(result) }];
  await update(entry.key, { state: "failed", error: { message: problemMessage(result), errors } });
  return { state: "failed", errors };
}

async function sendRound(user, hooks) {
  const outcomes = new Map();
  const run = async () => {
    // Only this user's entries: another user's reports on this tablet are never sent
    // in her session; they wait for their author to sign in again.
    const mine = (await all()).filter((e) => e.user === user);
    if (!mine.some((e) => e.state !== "failed") || !navigator.onLine) {
      return;
    }
    const session = await refreshSession(user);
    hooks.session?.(session);
    if (session !== "ok") {
      return;
    }
    // Sessions with a refused step: their later steps wait until it is corrected or
    // discarded (a dose before its session, an observation before its dose, never).
    const stopped = new Set(mine.filter((e) => isStep(e) && e.state === "failed").map((e) => e.session.id));
    for (const entry of mine) {
      if (entry.state === "failed" || (isStep(entry) && stopped.has(entry.session.id))) {
        continue;
      }
      const outcome = await sendOne(entry, hooks);
      outcomes.set(entry.key, outcome);
      if (outcome.state === "queued") {
        break; // no network or a busy server: the rest wait for the next try
      }
      if (outcome.state === "failed" && isStep(entry)) {
        stopped.add(entry.session.id);
      }
    }
  };
  try {
    // One tab sends at a time; the others wait, then find what is left (an entry sent
    // by another tab is gone when this one reads the outbox).
    await (navigator.locks ? navigator.locks.request("safetyreport-outbox", run) : run());
  } catch (error) {
    // Storage trouble: nothing was lost (entries leave only after a 2xx); try again later.
    console.warn("could not send the outbox:", error);
  }
  await hooks.changed?.();
  return outcomes;
}

// Rounds run one after another; a call while one runs waits for the next round.
let running = null;
let next = null;

/**
 * Send ``user``'s queued entries, oldest first; resolves to a Map key -> {state, errors?}
 * of the entries this round tried (a sent one with its ``answer``); a session's step
 * behind a refused step of its session is not tried. Hooks (all optional):
 * ``changed()`` after the outbox changed, ``sent(entry)`` for each entry the server took
 * (with its ``answer``: the report's id and alerts), ``session(state)`` with
 * "ok", "signed-out" or "unavailable".
 */
export function sendQueued(user, hooks = {}) {
  if (!user) {
    return Promise.resolve(new Map());
  }
  if (next) {
    return next;
  }
  if (!running) {
    running = sendRound(user, hooks).finally(() => { running = null; });
    return running;
  }
  next = running.catch(() => null).then(() => {
    next = null;
    return sendQueued(user, hooks);
  });
  return next;
}

/** Keep the page's outbox flowing: ``flush`` when the tablet is back online, when the page
 * is shown again, and every ``retryMs`` while an entry of ``user``'s waits (a refused one
 * waits for the nurse, not for a retry); and ask before signing out while entries of
 * theirs (``what``: how the page names them) are still here. */
export function keepSending(user, flush, retryMs, what) {
  beforeSignOut(async () => {
    const waiting = (await all()).filter((e) => e.user === user).length;
    const message =
      `${waiting} ${what} still on this tablet. They stay here and are sent ` +
      "the next time you sign in. Sign out?";
    return !waiting || window.confirm(message);
  });
  window.addEventListener("online", () => flush());
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      flush();
    }
  });
  setInterval(async () => {
    const pending = (await all()).some((e) => e.user === user && e.state !== "failed");
    if (pending) {
      flush();
    }
  }, retryMs);
}
