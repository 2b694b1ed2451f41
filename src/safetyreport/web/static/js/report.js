// The report page: one form per kind, the offline outbox, and the recent reports.
//
// Submitting never talks to the server directly: the report goes into the outbox
// (IndexedDB) first, then the outbox is sent. Online, the nurse learns at once whether
// the server took it (or sees its errors beside the fields); offline, it waits and is
// sent on page load, when the browser comes back online, and every RETRY_MS.

import {
  announce, currentUser, forgetPages, formatLocal, h, localInputValue, localizeTimes,
  newKey, parseLocalInput,
} from "./common.js";
import {
  clearErrors, fillForm, formStatus, readForm, resetForm, showErrors, watchConditions,
} from "./forms.js";
import * as outbox from "./outbox.js";
import { alertSentence, keyValues, showCards, subjectOf } from "./chair.js";

const RETRY_MS = 20000;
// A new report's time is "now" when its form opens. A form left idle this long takes
// the time again when it is next touched, unless the nurse set the time herself.
const IDLE_MS = 3 * 60 * 1000;
// The kinds' names as the page's kind picker shows them (from web/forms.py).
const KIND_LABELS = Object.fromEntries(
  [...document.querySelectorAll('input[name="kind-picker"]')].map((r) => [r.value, r.labels[0].textContent.trim()]),
);
const STATE_LABELS = { queued: "Queued", sending: "Sending", sent: "Sent", failed: "Failed", waiting: "Waiting" };

const forms = [...document.querySelectorAll("form.report-form")];
const sentThisVisit = [];
// Reports sent from a form on this page: their confirmation speaks of their alerts.
const submittedHere = new Set();
// Reports saved on this tablet from a form while offline: key -> {form, the status it showed}.
const savedFrom = new Map();
let signedOut = false;

const formFor = (kind) => forms.find((f) => f.dataset.kind === kind);

// --- the forms -----------------------------------------------------------------

/** A new, empty report: a fresh idempotency key, defaults, the time now. */
function openForm(form) {
  form.dataset.key = newKey();
  delete form.dataset.replaces;
  form.querySelector(".editing-note").hidden = true;
  resetForm(form);
  form.dataset.autoTime = "true";
  form.dataset.touchedAt = String(Date.now());
  showTimeAgo(form);
}

// --- the time of a new report ------------------------------------------------------

function timeInput(form) {
  return form.querySelector('.field[data-widget="datetime"] input');
}

/** "n min ago" beside the time, so a stale time is seen before the report is sent. */
function showTimeAgo(form) {
  const ago = form.querySelector(".time-ago");
  const when = parseLocalInput(timeInput(form)?.value || "");
  if (!ago) {
    return;
  }
  if (!when) {
    ago.textContent = "";
    return;
  }
  // The time is kept to the minute: within that minute it is "now".
  const minutes = Math.floor((Date.now() - when.getTime()) / 60000);
  ago.textContent = minutes === 0 ? "now" : minutes > 0 ? `${minutes} min ago` : `in ${-minutes} min`;
}

function watchTime(form) {
  const input = timeInput(form);
  if (!input) {
    return;
  }
  const ago = h("span", { class: "time-ago", id: `${input.id}-ago` }, "");
  input.after(ago);
  input.setAttribute("aria-describedby", `${input.getAttribute("aria-describedby") || ""} ${ago.id}`.trim());
  input.addEventListener("input", () => {
    delete form.dataset.autoTime; // the nurse's own time stays
    showTimeAgo(form);
  });
  form.addEventListener("focusin", (event) => {
    const idle = Date.now() - Number(form.dataset.touchedAt || 0);
    if (form.dataset.autoTime && event.target !== input && idle > IDLE_MS) {
      input.value = localInputValue(new Date());
      announce("When it happened: set to now.");
    }
    form.dataset.touchedAt = String(Date.now());
    showTimeAgo(form);
  });
}

function pickKind(kind) {
  for (const form of forms) {
    form.hidden = form.dataset.kind !== kind;
  }
  const radio = document.querySelector(`input[name="kind-picker"][value="${kind}"]`);
  if (radio) {
    radio.checked = true;
  }
}

// The steps of a treatment session share the outbox (saved on the session flowsheet).
const STEP_LABELS = { session: "Session opened", dose: "Session dose", observation: "Session observation", discharge: "Session discharge" };

function summary(entry) {
  if (outbox.isStep(entry)) {
    const time = entry.body.dosed_at || entry.body.observed_at || entry.body.discharged_at || entry.createdAt;
    return [STEP_LABELS[entry.kind] || entry.kind, entry.session.patient_ref, formatLocal(time)].join(" · ");
  }
  // A stock incident has no patient, and its time is when it was discovered.
  const time = entry.body.occurred_at || entry.body.discovered_at;
  const when = time ? formatLocal(time) : "";
  return [KIND_LABELS[entry.kind] || entry.kind, entry.body.patient_ref, when].filter(Boolean).join(" · ");
}

async function submit(form) {
  clearErrors(form);
  const { values, errors } = readForm(form);
  if (errors.length) {
    showErrors(form, errors);
    formStatus(form, "Please correct the marked fields.", "error");
    return;
  }
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const entry = {
      key: form.dataset.key,
      user: currentUser,
      kind: form.dataset.kind,
      body: { kind: form.dataset.kind, ...values },
      state: "queued",
      error: null,
      createdAt: new Date().toISOString(),
      attempts: 0,
    };
    await outbox.add(entry, form.dataset.replaces || null);
    form.dataset.replaces = entry.key;
    submittedHere.add(entry.key);
    formStatus(form, "Saved on this tablet. Sending…", "warn");
    await render();
    const outcome = (await flush()).get(entry.key);
    reportOutcome(form, entry, outcome);
  } finally {
    button.disabled = false;
  }
}

function reportOutcome(form, entry, outcome) {
  if (outcome?.state === "sent") {
    openForm(form);
    confirmSent(form, entry, outcome.answer);
    if (outcome.answer?.alerts.length) {
      document.getElementById("chair-alerts").scrollIntoView({ block: "start" });
    }
  } else if (outcome?.state === "failed") {
    // Kept in the form (and in the outbox, as failed) for the nurse to correct; the
    // corrected report gets a new key and replaces the refused one.
    form.dataset.key = newKey();
    form.querySelector(".editing-note").hidden = false;
    showErrors(form, outcome.errors);
    formStatus(form, "The server refused this report. Correct the marked fields and submit again.", "error");
  } else {
    openForm(form);
    const why = signedOut ? "You are signed out" : "No connection";
    formStatus(form, `${why}: the report is saved on this tablet and will be sent automatically.`, "warn");
    announce("Report saved on this tablet.");
    savedFrom.set(entry.key, { form, status: form.querySelector(".form-status").textContent });
  }
}

/** The confirmation under the form: it stays (role=status, so it is heard) until the
 * next submission, "Clear form" or its own "Dismiss". */
function confirmSent(form, entry, answer) {
  const sent = `Report sent: ${keyValues(entry.kind, entry.body)}, ${subjectOf(entry.body)}.`;
  formStatus(form, `${sent} ${alertSentence(entry.body, answer?.alerts || [])}`, "ok lasting");
}

/** A report saved while offline was sent later: its form says so, unless the nurse has
 * moved on (the form shows something else by now). */
function confirmSentLater(entry) {
  const saved = savedFrom.get(entry.key);
  savedFrom.delete(entry.key);
  if (saved && saved.form.querySelector(".form-status").textContent === saved.status) {
    confirmSent(saved.form, entry, entry.answer);
  } else {
    submittedHere.delete(entry.key); // no confirmation speaks of its cards: announce them
  }
}

/** Load a refused report into its form, with the server's reasons beside the fields. */
function correct(entry) {
  pickKind(entry.kind);
  const form = formFor(entry.kind);
  fillForm(form, entry.body);
  delete form.dataset.autoTime; // the refused report's own time
  showTimeAgo(form);
  form.dataset.key = newKey();
  form.dataset.replaces = entry.key;
  form.querySelector(".editing-note").hidden = false;
  formStatus(form, "");
  showErrors(form, entry.error?.errors || []);
  form.scrollIntoView({ block: "start" });
}

// --- sending (outbox.sendQueued, shared with the other pages) ---------------------

const sendHooks = {
  changed: () => render(),
  sent: (entry) => {
    sentThisVisit.unshift(entry);
    confirmSentLater(entry);
  },
  session: (state) => { signedOut = state === "signed-out"; },
};

async function flush() {
  const outcomes = await outbox.sendQueued(currentUser, sendHooks);
  if ([...outcomes.values()].some((o) => o.state === "sent")) {
    refreshRecent();
  }
  return outcomes;
}

// --- showing the outbox ------------------------------------------------------------

function entryItem(entry) {
  const state = entry.state;
  const item = h(
    "li",
    { class: "outbox-item", "data-key": entry.key, "data-state": state },
    h("span", { class: `state state-${state}` }, STATE_LABELS[state]),
    h("span", { class: "what" }, summary(entry)),
  );
  if (state === "failed" && outbox.isStep(entry)) {
    // Corrected where it was made: on the flowsheet of its session.
    const reasons = (entry.error?.errors || []).map((e) => e.message).join(" ");
    item.append(
      h("a", { class: "button secondary", href: `/sessions/flowsheet?id=${entry.session.id}` }, "Open the flowsheet"),
      h("p", { class: "problem" }, reasons || entry.error?.message || ""),
    );
  } else if (state === "failed") {
    const fix = h("button", { type: "button", class: "secondary" }, "Correct");
    fix.addEventListener("click", () => correct(entry));
    const discard = h("button", { type: "button", class: "secondary danger-link" }, "Discard");
    discard.addEventListener("click", async () => {
      if (window.confirm(`Discard this report (${summary(entry)})? It has not been stored.`)) {
        await outbox.remove(entry.key);
        await render();
      }
    });
    const reasons = (entry.error?.errors || []).map((e) => `${e.field === "$" ? "" : `${e.field}: `}${e.message}`);
    item.append(fix, discard, h("p", { class: "problem" }, reasons.join(" ") || entry.error?.message || ""));
  }
  return item;
}

async function render() {
  // Only this user's entries: another user's reports on this tablet are neither shown
  // nor sent (see outbox.sendQueued); they wait for their author to sign in again.
  const mine = (await outbox.all()).filter((e) => e.user === currentUser);
  const section = document.getElementById("outbox");
  const list = document.getElementById("outbox-list");
  const items = [...mine.map(entryItem), ...sentThisVisit.slice(0, 10).map(entryItem)];
  list.replaceChildren(...items);
  section.hidden = items.length === 0;
  document.getElementById("outbox-summary").textContent = outboxSummary(mine);
  document.body.dataset.outbox = String(mine.filter((e) => e.state !== "failed").length);
  try {
    await showCards(currentUser, submittedHere);
  } catch (error) {
    // Storage trouble: the outbox above is drawn all the same; the cards at the next render.
    console.warn("could not show the action cards:", error);
  }
}

function outboxSummary(mine) {
  const waiting = mine.filter((e) => e.state !== "failed");
  const failed = mine.filter((e) => e.state === "failed");
  const count = outbox.describe;
  const parts = [];
  if (waiting.length) {
    const where = signedOut
      ? "Your session has ended: sign in again to send them. They stay on this tablet."
      : navigator.onLine ? "Sending…" : "They will be sent when the network is back.";
    parts.push(`${count(waiting)} waiting to be sent. ${where}`);
  }
  if (failed.length) {
    parts.push(`${count(failed)} refused by the server: correct or discard them.`);
  }
  return parts.join(" ") || "All reports sent.";
}

// The recent reports come from the server on every visit and are never part of the
// page the tablet keeps offline (they name patients).
// A patient reference to find that patient's reports instead of the recent ones.
let findingPatient = "";
const PATIENT_REF = /^[A-Za-z0-9_-]{1,64}$/;

async function refreshRecent() {
  const list = document.getElementById("recent-list");
  const query = findingPatient ? `?patient_ref=${encodeURIComponent(findingPatient)}` : "";
  try {
    const response = await fetch(`/report/recent${query}`, { credentials: "same-origin", cache: "no-store" });
    if (response.ok && !response.redirected) {
      // Our own server-rendered (escaped) fragment.
      list.innerHTML = await response.text();
      localizeTimes(list);
      return;
    }
    if (response.redirected) {
      await forgetPages(); // sent to the login form: the session has ended
    }
  } catch (error) {
    // Offline: below.
  }
  if (!list.querySelector(".report-list")) {
    list.replaceChildren(h("p", { class: "empty" }, "Recent reports are shown when this tablet is online."));
  }
}

function watchFind() {
  const find = document.getElementById("find-report");
  const input = document.getElementById("find-patient");
  const error = document.getElementById("find-patient-error");
  const clear = document.getElementById("find-clear");
  const heading = document.getElementById("recent-heading");
  const recentTitle = heading.textContent;
  const show = (ref) => {
    findingPatient = ref;
    heading.textContent = ref ? `Reports of patient ${ref}` : recentTitle;
    clear.hidden = !ref;
    refreshRecent();
  };
  find.addEventListener("submit", (event) => {
    event.preventDefault();
    const ref = input.value.trim();
    const wrong = ref && !PATIENT_REF.test(ref);
    error.textContent = wrong ? "A patient reference is 1-64 letters, digits, - or _." : "";
    error.hidden = !wrong;
    input.toggleAttribute("aria-invalid", Boolean(wrong));
    if (!wrong) {
      show(ref);
    }
  });
  clear.addEventListener("click", () => {
    input.value = "";
    show("");
  });
}

// --- wiring ----------------------------------------------------------------------

function init() {
  for (const form of forms) {
    watchConditions(form);
    watchTime(form);
    openForm(form);
    form.querySelector("fieldset.form-body").disabled = false; // ready: see report.html
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submit(form);
    });
    form.querySelector(".clear-form").addEventListener("click", () => {
      openForm(form);
      formStatus(form, "");
    });
    form.querySelector(".clear-status").addEventListener("click", () => {
      formStatus(form, "");
      form.querySelector('button[type="submit"]').focus();
    });
  }
  for (const radio of document.querySelectorAll('input[name="kind-picker"]')) {
    radio.addEventListener("change", () => pickKind(radio.value));
  }
  pickKind(document.querySelector('input[name="kind-picker"]:checked')?.value || forms[0].dataset.kind);
  outbox.keepSending(currentUser, flush, RETRY_MS, "report(s) are");
  setInterval(() => forms.forEach(showTimeAgo), 30000);
  watchFind();
  refreshRecent();
  render().then(() => flush());
}

init();
