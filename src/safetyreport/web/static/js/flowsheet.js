// The session flowsheet: a treatment session recorded at the chair, step by step.
//
// Open the session (with its pre-dose checklist), record the dose, add the timed
// observations, discharge. Every step goes into the outbox (outbox.js, the report page's
// too) and is sent from there in order, each with its own Idempotency-Key, so a step saved
// offline reaches the server once when the tablet is back online. The session's id is
// made here, so its later steps can be queued before the session reached the server.
//
// The sessions in progress on this tablet are kept in localStorage (FLOWSHEET_PREFIX +
// user: {current, sessions: {id: record}}), so a reload resumes them; they name patients,
// so they are forgotten when the sign-in session ends (common.js forgetPages); their
// unsent steps stay in the outbox, and the records are rebuilt from it. A session of
// another tablet is loaded from the API (?id=).
//
// A record is {id, clinic, patient_ref, drug, session: {key, body}, dose: {key, body} | null,
// observations: [{key, body}], discharge: {key, body} | null, sent: {key: true}}.

import {
  FLOWSHEET_PREFIX, NetworkError, announce, api, currentUser, formatLocal, h, localInputValue,
  newKey,
} from "./common.js";
import { clearErrors, fillForm, formStatus, readForm, resetForm, showErrors, watchConditions } from "./forms.js";
import * as outbox from "./outbox.js";
import { alertSentence, noteDoseOverride, readings, showCards } from "./chair.js";

const RETRY_MS = 20000;
const MINUTE = 60000;
// The fitness-to-leave criteria and their numbers come from the server (the page lists the
// stored ones, discharge_criteria, each drug's; the server decides at discharge).
const STEP_LABELS = { session: "Session opened", dose: "Dose", observation: "Observation", discharge: "Discharge" };
const STATE_LABELS = { queued: "Queued", sending: "Sending", sent: "Sent", failed: "Refused", waiting: "Waiting" };
const CHECKLIST = ["systolic", "diastolic", "fasting", "cns_depressants", "pregnancy_possible", "transport_arranged"];
const SESSION_FIELDS = ["clinic", "patient_ref", "drug", "weight_kg", "age_band", "prescriber", "network_ref"];

const STORE_KEY = `${FLOWSHEET_PREFIX}${currentUser}`;
const forms = Object.fromEntries(
  [...document.querySelectorAll("form.flow-form")].map((f) => [f.dataset.step, f]),
);
let signedOut = false;
// Steps saved from a form on this page: their confirmation speaks of their alerts.
const submittedHere = new Set();
let entries = []; // this user's outbox, as last read

// --- the records of the sessions on this tablet ---------------------------------------

function loadStore() {
  try {
    const kept = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    if (kept && typeof kept === "object" && kept.sessions) {
      return kept;
    }
  } catch (error) {
    // Unreadable: start again (the outbox keeps every unsent step).
  }
  return { current: null, sessions: {} };
}

let store = loadStore();

function saveStore() {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(store));
  } catch (error) {
    console.warn("could not keep the flowsheet:", error);
  }
}

const current = () => (store.current ? store.sessions[store.current] || null : null);

function newRecord(id, session) {
  return {
    id,
    clinic: session.body.clinic,
    patient_ref: session.body.patient_ref,
    drug: session.body.drug,
    session,
    dose: null,
    observations: [],
    discharge: null,
    sent: {},
  };
}

/** Records for the steps in the outbox whose record this tablet forgot (signed out with
 * steps unsent): the outbox entries carry everything the flowsheet shows. */
function rebuildFromOutbox() {
  let changed = false;
  for (const entry of entries.filter(outbox.isStep)) {
    const id = entry.session.id;
    let record = store.sessions[id];
    if (!record) {
      record = newRecord(id, { key: null, body: { ...entry.session } });
      store.sessions[id] = record;
      changed = true;
    }
    const step = { key: entry.key, body: entry.body };
    if (entry.kind === "session" && record.session.key !== entry.key) {
      record.session = step;
      changed = true;
    } else if (entry.kind === "observation" && !record.observations.some((o) => o.key === entry.key)) {
      record.observations.push(step);
      changed = true;
    } else if ((entry.kind === "dose" || entry.kind === "discharge") && record[entry.kind]?.key !== entry.key) {
      record[entry.kind] = step;
      changed = true;
    }
  }
  if (changed) {
    saveStore();
  }
}

/** A record of a session from the API (opened on another tablet, or forgotten here). */
function recordFromView(view) {
  const checklist = view.checklist || {};
  const body = {
    id: view.id, clinic: view.clinic, patient_ref: view.patient_ref, drug: view.drug, checklist,
    ...Object.fromEntries(["weight_kg", "age_band", "prescriber", "network_ref"].filter((n) => view[n] !== null && view[n] !== undefined).map((n) => [n, view[n]])),
  };
  const record = newRecord(view.id, { key: `server-${view.id}`, body });
  if (view.dosed_at) {
    record.dose = { key: `server-dose-${view.id}`, body: { dose_mg: view.dose_mg, dosed_at: view.dosed_at, lot: view.lot || undefined } };
  }
  record.observations = (view.observations || []).map((o) => ({ key: `server-${o.id}`, body: o }));
  if (view.discharged_at) {
    record.discharge = { key: `server-discharge-${view.id}`, body: { discharged_at: view.discharged_at, ...(view.discharge || {}) } };
  }
  for (const step of [record.session, record.dose, record.discharge, ...record.observations].filter(Boolean)) {
    record.sent[step.key] = true;
  }
  return record;
}

// --- the state of a step -------------------------------------------------------------

const entryOf = (key) => entries.find((e) => e.key === key);

/** queued, sending, failed, waiting (behind a refused step of its session) or sent. */
function stateOf(record, key) {
  const entry = entryOf(key);
  if (!entry) {
    return "sent";
  }
  if (entry.state === "queued") {
    const refused = entries.some((e) => outbox.isStep(e) && e.session.id === record.id && e.state === "failed"
      && e.createdAt < entry.createdAt);
    return refused ? "waiting" : "queued";
  }
  return entry.state;
}

const failed = (record, step) => Boolean(step) && stateOf(record, step.key) === "failed";

// --- saving a step ---------------------------------------------------------------------

/** The body of a step from its form, or null (the form's errors shown). */
function bodyOf(step, form) {
  clearErrors(form);
  keepTimeNow(form);
  const { values, errors } = readForm(form);
  if (errors.length) {
    showErrors(form, errors);
    formStatus(form, "Please correct the marked fields.", "error");
    return null;
  }
  if (step !== "session") {
    return values;
  }
  const body = { id: form.dataset.sessionId, checklist: {} };
  for (const [name, value] of Object.entries(values)) {
    if (CHECKLIST.includes(name)) {
      body.checklist[name] = value;
    } else if (SESSION_FIELDS.includes(name)) {
      body[name] = value;
    }
  }
  return body;
}

function pathOf(step, id) {
  const tail = { session: "", dose: "/dose", observation: "/observations", discharge: "/discharge" }[step];
  return `/api/v1/sessions${step === "session" ? "" : `/${id}${tail}`}`;
}

/** A step's body as its form's fields (the session's checklist is the form's own). */
const formValues = (step, body) => (step === "session" ? { ...body, ...body.checklist } : body);

async function save(step) {
  const form = forms[step];
  const body = bodyOf(step, form);
  if (!body) {
    return;
  }
  let record = current();
  const key = form.dataset.key;
  const replaces = form.dataset.replaces || null;
  if (step === "session") {
    if (!record || record.id !== body.id) {
      record = newRecord(body.id, { key, body });
      store.sessions[record.id] = record;
      store.current = record.id;
    } else {
      Object.assign(record, { clinic: body.clinic, patient_ref: body.patient_ref, drug: body.drug, session: { key, body } });
    }
  } else if (step === "observation") {
    record.observations = record.observations.filter((o) => o.key !== replaces);
    record.observations.push({ key, body });
  } else {
    record[step] = { key, body };
  }
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  // The form is cleared for the next step now, before the tablet stores this one (which
  // waits on IndexedDB): what the nurse types meanwhile is the next step's, kept.
  openForm(step, { keepStatus: true });
  const entry = {
    key,
    user: currentUser,
    kind: step,
    body,
    path: pathOf(step, record.id),
    session: { id: record.id, clinic: record.clinic, patient_ref: record.patient_ref, drug: record.drug },
    state: "queued",
    error: null,
    // A corrected step takes the refused one's place: the steps after it still follow it.
    createdAt: entryOf(replaces)?.createdAt || await outbox.nextCreatedAt(),
    attempts: 0,
  };
  try {
    try {
      await outbox.add(entry, replaces);
    } catch (error) {
      fillForm(form, formValues(step, body)); // not stored: the nurse's values are back
      throw error;
    }
    if (replaces && replaces !== key) {
      delete record.sent[replaces];
    }
    saveStore();
    history.replaceState(null, "", `${location.pathname}?id=${record.id}`);
    submittedHere.add(key);
    formStatus(form, "Saved on this tablet. Sending…", "warn");
    await render();
    const outcome = (await flush()).get(key);
    tellOutcome(step, entry, outcome);
  } finally {
    button.disabled = false;
  }
}

function tellOutcome(step, entry, outcome) {
  const form = forms[step];
  if (outcome?.state === "sent") {
    const sent = step === "session" ? "Session opened on the server." : `${STEP_LABELS[step]} recorded on the server.`;
    formStatus(form, `${sent} ${alertSentence(outcome.answer.body, outcome.answer.alerts)}`, "ok");
    if (outcome.answer.alerts.length) {
      document.getElementById("chair-alerts").scrollIntoView({ block: "start" });
    }
  } else if (outcome?.state === "failed") {
    correct(entry.key);
  } else if (entryOf(entry.key)) {
    const why = signedOut ? "You are signed out" : stateOf(current(), entry.key) === "waiting"
      ? "An earlier step was refused" : "No connection";
    formStatus(form, `${why}: saved on this tablet; it will be sent in order, once.`, "warn");
    announce(`${STEP_LABELS[step]} saved on this tablet.`);
  }
}

/** Load a refused step into its form, with the server's reasons beside the fields. */
function correct(key) {
  const record = current();
  const entry = entryOf(key);
  if (!record || !entry) {
    return;
  }
  const form = forms[entry.kind];
  form.hidden = false;
  fillForm(form, formValues(entry.kind, entry.body));
  if (entry.kind === "discharge" || entry.kind === "session") {
    form.dataset.autoTime = "true"; // discharged when she discharges again
    keepTimeNow(form);
  } else {
    delete form.dataset.autoTime; // the refused step's own time
  }
  form.dataset.key = newKey();
  form.dataset.replaces = key;
  if (entry.kind === "session") {
    form.dataset.sessionId = record.id;
  }
  // The checklist's fields are the form's own; the observations' criterion is the session's.
  const errors = (entry.error?.errors || []).map((e) => ({
    ...e, field: e.field === "observations" ? "$" : e.field.replace(/^checklist\./, ""),
  }));
  const override = form.querySelector('.override');
  if (override) {
    const needed = errors.some((e) => e.field === "override_reason") || entry.kind === "discharge";
    override.hidden = !needed;
    override.querySelector("textarea").value = entry.body.override_reason || "";
  }
  showErrors(form, errors);
  const note = form.querySelector(".step-state");
  note.hidden = false;
  note.className = "step-state notice notice-error";
  note.textContent = entry.kind === "discharge"
    ? "The server refused the discharge: see the criteria below. Correct the readings, or give a reason to discharge all the same."
    : `The server refused this step${entry.kind === "session" ? "" : "; the later steps of the session wait for it"}. Correct it and send it again, or discard it.`;
  formStatus(form, "");
  if (entry.kind === "discharge") {
    showCriteria(errors);
  }
  form.scrollIntoView({ block: "start" });
}

async function discard(record, entry) {
  const whole = entry.kind === "session";
  const question = whole
    ? `Discard the session of ${record.patient_ref} and every step of it on this tablet? Nothing of it has been stored.`
    : `Discard this ${STEP_LABELS[entry.kind].toLowerCase()} of ${record.patient_ref}? It has not been stored.`;
  if (!window.confirm(question)) {
    return;
  }
  const keys = whole ? entries.filter((e) => outbox.isStep(e) && e.session.id === record.id).map((e) => e.key) : [entry.key];
  for (const key of keys) {
    await outbox.remove(key);
  }
  if (whole) {
    delete store.sessions[record.id];
    store.current = null;
  } else if (entry.kind === "observation") {
    record.observations = record.observations.filter((o) => o.key !== entry.key);
  } else {
    record[entry.kind] = null;
  }
  saveStore();
  for (const form of Object.values(forms)) {
    delete form.dataset.replaces;
  }
  await render();
}

// --- the forms ------------------------------------------------------------------------

// A step's time (when dosed, observed, discharged) is "now" until the nurse sets it
// herself: the form keeps it current while it waits, and takes it again on saving.
const timeInput = (form) => form.querySelector('.field[data-widget="datetime"] input');

function keepTimeNow(form) {
  const input = timeInput(form);
  if (input && form.dataset.autoTime && document.activeElement !== input) {
    const now = localInputValue(new Date());
    if (input.value !== now) {
      input.value = now;
    }
  }
}

function watchTime(form) {
  timeInput(form)?.addEventListener("input", () => {
    delete form.dataset.autoTime; // the nurse's own time stays
  });
}

function openForm(step, { keepStatus = false } = {}) {
  const form = forms[step];
  form.dataset.key = newKey();
  delete form.dataset.replaces;
  if (step === "session") {
    form.dataset.sessionId = newKey();
  }
  resetForm(form);
  form.dataset.autoTime = "true";
  const override = form.querySelector(".override");
  if (override) {
    override.hidden = true;
    override.querySelector("textarea").value = "";
  }
  const note = form.querySelector(".step-state");
  note.hidden = true;
  if (!keepStatus) {
    formStatus(form, "");
  }
  if (step === "discharge") {
    showCriteria([]);
  }
}

// --- the timer and the criteria ---------------------------------------------------------

/** When the dose was given: saved (sent or waiting to be), not refused by the server. */
const doseTime = (record) => (record?.dose && !failed(record, record.dose) ? Date.parse(record.dose.body.dosed_at) : null);

function span(ms) {
  const seconds = Math.floor(Math.abs(ms) / 1000);
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return hours ? `${hours} h ${pad(minutes)} min` : `${minutes} min ${pad(seconds % 60)} s`;
}

/** The stored fitness-to-leave criteria of a drug: its items of the page's list. */
function criteriaOf(drug) {
  return [...document.getElementById("criteria").children].filter((item) => item.dataset.drug === drug);
}

/** The numbers of a drug's criterion of one kind of check, or null if it has none. */
function paramsOf(drug, check) {
  const item = criteriaOf(drug).find((i) => i.dataset.check === check);
  return item ? JSON.parse(item.dataset.params) : null;
}

/** Whether a blood pressure was taken in the drug's window after the dose (null: the drug
 * has no such criterion). */
function bpInWindow(record) {
  const window = paramsOf(record.drug, "blood_pressure_between");
  const dosed = doseTime(record);
  if (window === null) {
    return null;
  }
  return dosed !== null && record.observations.some((o) => {
    const at = Date.parse(o.body.observed_at);
    return o.body.systolic !== undefined && o.body.systolic !== null
      && at >= dosed + window.from_minutes * MINUTE && at <= dosed + window.to_minutes * MINUTE;
  });
}

function tick() {
  Object.values(forms).filter((f) => !f.hidden).forEach(keepTimeNow);
  const record = current();
  const timer = document.getElementById("flow-timer");
  const dosed = doseTime(record);
  timer.hidden = dosed === null || Boolean(record?.discharge && !failed(record, record.discharge));
  if (timer.hidden) {
    return;
  }
  const now = Date.now(); // the dose time is the tablet's too
  document.getElementById("since-dose").textContent = now >= dosed ? span(now - dosed) : "not yet";
  const line = document.getElementById("next-due-line");
  const due = document.getElementById("next-due");
  let text;
  let state = "";
  const window = paramsOf(record.drug, "blood_pressure_between");
  const monitoring = paramsOf(record.drug, "minutes_since_dose")?.minutes ?? null;
  if (window !== null && !bpInWindow(record)) {
    const at = dosed + window.due_minutes * MINUTE;
    const opens = dosed + window.from_minutes * MINUTE;
    const closes = dosed + window.to_minutes * MINUTE;
    if (now < opens) {
      text = `blood pressure at ${window.due_minutes} min (${formatLocal(new Date(at))}), in ${span(at - now)}`;
    } else if (now <= closes) {
      text = `blood pressure now: ${now < at ? `due in ${span(at - now)}` : `due ${span(now - at)} ago`}, the window closes in ${span(closes - now)}`;
      state = "due";
    } else {
      text = `the ${window.due_minutes}-minute blood pressure was missed (the window closed ${span(now - closes)} ago): record one, the discharge will need an override`;
      state = "overdue";
    }
  } else if (monitoring !== null) {
    const ready = dosed + monitoring * MINUTE;
    const done = window === null ? "" : `${window.due_minutes}-minute blood pressure done; `;
    text = now < ready
      ? `${done}discharge assessment from ${monitoring} min (${formatLocal(new Date(ready))}), in ${span(ready - now)}`
      : `${done}${monitoring} minutes have passed: assess for discharge`;
  } else {
    text = "observations as the clinic's protocol for this drug asks";
  }
  due.textContent = text;
  line.dataset.state = state;
  liveCriteria();
}

/** The fitness-to-leave checklist as the discharge form stands; ``refused`` (the server's
 * 422 errors) marks the criteria it named, with its words. */
function showCriteria(refused) {
  const list = document.getElementById("criteria");
  list.dataset.refused = JSON.stringify(refused.map((e) => ({ rule: e.rule, message: e.message })));
  liveCriteria();
}

function liveCriteria() {
  const record = current();
  const form = forms.discharge;
  const list = document.getElementById("criteria");
  if (!record || form.hidden) {
    return;
  }
  const value = (name) => {
    const field = form.querySelector(`.field[data-field="${name}"]`);
    if (["radios", "yesno"].includes(field.dataset.widget)) {
      return field.querySelector("input:checked")?.value || "";
    }
    return (field.querySelector("input, select")?.value || "").trim();
  };
  const dosed = doseTime(record);
  const leaving = new Date(value("discharged_at")).getTime();
  const hasBp = value("systolic") !== "" && value("diastolic") !== "";
  const params = (item) => JSON.parse(item.dataset.params);
  // Each kind of check as the form stands: true met, false unmet, null not applicable,
  // "server" only the server can tell (the hold level is its rule's).
  const checks = {
    minutes_since_dose: (p) => (dosed === null ? null : !Number.isNaN(leaving) && leaving - dosed >= p.minutes * MINUTE),
    blood_pressure_between: () => (dosed === null ? null : bpInWindow(record)),
    blood_pressure_at_discharge: () => hasBp,
    below_hold_level: () => (hasBp ? "server" : null),
    moaa_s_at_least: (p) => (value("moaa_s") === "" ? false : Number(value("moaa_s")) >= p.value),
    escort: () => value("escort") === "true",
  };
  const refused = JSON.parse(list.dataset.refused || "[]");
  const applies = criteriaOf(record.drug).length > 0;
  document.getElementById("criteria-note").textContent = applies
    ? "Checked here as you fill in the form; the server decides when you discharge."
    : "This drug has no fitness-to-leave criteria; the server does not hold the discharge to any.";
  for (const item of list.children) {
    item.hidden = item.dataset.drug !== record.drug;
    if (item.hidden) {
      continue;
    }
    const rule = item.dataset.rule;
    const said = refused.filter((e) => e.rule === rule).map((e) => e.message);
    const met = checks[item.dataset.check](params(item));
    let state = met === true ? "met" : met === false ? "unmet" : met === "server" ? "server" : "na";
    if (said.length) {
      state = "refused";
    }
    item.dataset.state = state;
    item.querySelector(".mark").textContent = { met: "✓", unmet: "✗", refused: "✗", server: "?", na: "–" }[state];
    const why = {
      met: "(met)",
      unmet: "(not met yet)",
      server: "(checked by the server)",
      na: dosed === null ? "(no dose recorded)" : "(needs a blood pressure at discharge)",
      refused: `Refused by the server: ${said.join("; ")}.`,
    }[state];
    item.querySelector(".why").textContent = why;
  }
}

// --- drawing the page -------------------------------------------------------------------

function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

function drugLabel(drug) {
  const option = forms.session.querySelector(`.field[data-field="drug"] option[value="${CSS.escape(drug || "")}"]`);
  return option?.textContent.trim() || drug;
}

/** The label of ``name`` in the form of ``step`` ("" for the body as a whole). */
function fieldLabel(step, name) {
  const field = forms[step]?.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
  const label = field?.querySelector("legend, label");
  return label ? label.firstChild.textContent.trim() : name === "$" || name === "observations" ? "" : name;
}

function stateTag(state) {
  return h("span", { class: `state state-${state}` }, STATE_LABELS[state]);
}

function stepItem(record, step, kind) {
  const state = stateOf(record, step.key);
  const time = step.body.dosed_at || step.body.observed_at || step.body.discharged_at;
  const what = {
    session: () => `Session opened · ${record.patient_ref} · checklist BP ${step.body.checklist?.systolic}/${step.body.checklist?.diastolic}`,
    dose: () => `Dose ${step.body.dose_mg} mg · ${formatLocal(time)}`,
    observation: () => `Observation · ${formatLocal(time)} · ${readings(step.body)}`,
    discharge: () => `Discharge · ${formatLocal(time)}${step.body.override_reason ? " · with an override" : ""}`,
  }[kind]();
  const item = h(
    "li",
    { class: "outbox-item", "data-key": step.key, "data-kind": kind, "data-state": state },
    stateTag(state),
    h("span", { class: "what" }, what),
  );
  const entry = entryOf(step.key);
  if (state === "failed" && entry) {
    const fix = h("button", { type: "button", class: "secondary" }, "Correct", h("span", { class: "visually-hidden" }, ` the ${STEP_LABELS[kind].toLowerCase()}`));
    fix.addEventListener("click", () => correct(step.key));
    const drop = h("button", { type: "button", class: "secondary danger-link" }, "Discard", h("span", { class: "visually-hidden" }, ` the ${STEP_LABELS[kind].toLowerCase()}`));
    drop.addEventListener("click", () => discard(record, entry));
    const reasons = (entry.error?.errors || []).map((e) => {
      const label = fieldLabel(kind, e.field.replace(/^checklist\./, ""));
      return `${label ? `${label}: ` : ""}${e.message}`;
    });
    item.append(fix, drop, h("p", { class: "problem" }, reasons.join("; ") || entry.error?.message || ""));
  } else if (state === "waiting") {
    item.append(h("p", { class: "problem" }, "Waits for the refused step above: correct or discard it."));
  }
  return item;
}

function drawSteps(record) {
  const section = document.getElementById("outbox");
  const list = document.getElementById("outbox-list");
  if (!record) {
    section.hidden = true;
    return;
  }
  const steps = [["session", record.session], ["dose", record.dose], ...record.observations.map((o) => ["observation", o]), ["discharge", record.discharge]]
    .filter(([, step]) => step);
  list.replaceChildren(...steps.map(([kind, step]) => stepItem(record, step, kind)));
  section.hidden = false;
  const states = steps.map(([, step]) => stateOf(record, step.key));
  const waiting = states.filter((s) => ["queued", "sending", "waiting"].includes(s)).length;
  const refused = states.filter((s) => s === "failed").length;
  const parts = [];
  if (waiting) {
    const where = signedOut
      ? "Your session has ended: sign in again to send them. They stay on this tablet."
      : navigator.onLine ? "Sending…" : "They will be sent in order when the network is back.";
    parts.push(`${waiting} step(s) waiting to be sent. ${where}`);
  }
  if (refused) {
    parts.push(`${refused} step(s) refused by the server: correct or discard them.`);
  }
  document.getElementById("outbox-summary").textContent = parts.join(" ") || "Every step is on the server.";
}

function drawObservations(record) {
  const rows = (record?.observations || []).slice().sort((a, b) => a.body.observed_at.localeCompare(b.body.observed_at));
  const dosed = doseTime(record);
  const cell = (value) => h("td", {}, value === undefined || value === null ? "–" : String(value));
  document.getElementById("obs-rows").replaceChildren(...rows.map((o) => {
    const at = Date.parse(o.body.observed_at);
    const after = dosed !== null && at >= dosed ? `${Math.floor((at - dosed) / MINUTE)} min` : "before dose";
    const bp = o.body.systolic !== undefined && o.body.systolic !== null ? `${o.body.systolic}/${o.body.diastolic}` : "–";
    return h("tr", { "data-key": o.key },
      h("td", {}, formatLocal(o.body.observed_at).slice(11)), h("td", {}, after), h("td", {}, bp),
      cell(o.body.pulse), cell(o.body.respiratory_rate), cell(o.body.spo2), cell(o.body.moaa_s), cell(o.body.cadss_total),
      h("td", {}, stateTag(stateOf(record, o.key))));
  }));
  document.getElementById("obs-table").hidden = rows.length === 0;
  document.getElementById("observations-empty").hidden = rows.length > 0;
}

function drawBar(record) {
  const bar = document.getElementById("session-bar");
  bar.hidden = !record;
  if (!record) {
    return;
  }
  const checklist = record.session.body.checklist || {};
  const refused = failed(record, record.dose) ? " (refused by the server)" : "";
  const dose = record.dose ? `${record.dose.body.dose_mg} mg at ${formatLocal(record.dose.body.dosed_at)}${refused}` : "not yet";
  document.getElementById("session-heading").textContent = `Session of ${record.patient_ref}`;
  document.getElementById("session-facts").replaceChildren(
    ...fact("Patient", record.patient_ref),
    ...fact("Clinic", record.clinic),
    ...fact("Drug", drugLabel(record.drug)),
    ...fact("Pre-dose BP", checklist.systolic ? `${checklist.systolic}/${checklist.diastolic}` : "–"),
    ...fact("Dose", dose),
  );
}

function drawOthers() {
  const others = Object.values(store.sessions).filter((r) => r.id !== store.current && !(r.discharge && stateOf(r, r.discharge.key) === "sent"));
  const list = document.getElementById("sessions-here-list");
  list.replaceChildren(...others.map((r) => h("li", {},
    h("a", { class: "report-link", href: `${location.pathname}?id=${r.id}` },
      h("span", { class: "patient" }, r.patient_ref),
      h("span", { class: "meta" }, `${drugLabel(r.drug)} · ${r.dose ? `dosed ${formatLocal(r.dose.body.dosed_at)}` : "not dosed yet"}`)))));
  document.getElementById("sessions-here").hidden = others.length === 0;
}

/** Which forms show: the session's until it is saved (or to correct it), the dose's until
 * the dose is saved, the observations' and the discharge's until the discharge is. */
function showForms(record) {
  const closed = Boolean(record?.discharge) && !failed(record, record.discharge);
  forms.session.hidden = Boolean(record) && !failed(record, record.session);
  forms.dose.hidden = !record || closed || (Boolean(record.dose) && !failed(record, record.dose));
  forms.observation.hidden = !record || closed;
  forms.discharge.hidden = !record || closed;
  const infusion = forms.dose.querySelector('.field[data-field="infusion_minutes"]');
  if (infusion) {
    infusion.hidden = record?.drug !== "ketamine_iv";
  }
  const done = document.getElementById("closed-session");
  done.hidden = !closed;
  if (closed) {
    const state = stateOf(record, record.discharge.key);
    document.getElementById("closed-text").textContent = state === "sent"
      ? `${record.patient_ref} was discharged at ${formatLocal(record.discharge.body.discharged_at)}.`
      : `The discharge of ${record.patient_ref} at ${formatLocal(record.discharge.body.discharged_at)} is saved on this tablet and will be sent after the steps before it.`;
  }
}

async function render() {
  entries = (await outbox.all()).filter((e) => e.user === currentUser);
  rebuildFromOutbox();
  const record = current();
  drawBar(record);
  drawSteps(record);
  drawObservations(record);
  showForms(record);
  drawOthers();
  tick();
  document.body.dataset.outbox = String(entries.filter((e) => e.state !== "failed").length);
  try {
    await showCards(currentUser, submittedHere);
  } catch (error) {
    console.warn("could not show the action cards:", error);
  }
}

// --- sending ------------------------------------------------------------------------

const sendHooks = {
  changed: () => render(),
  sent: async (entry) => {
    const record = outbox.isStep(entry) ? store.sessions[entry.session.id] : null;
    if (record) {
      record.sent[entry.key] = true;
      saveStore();
    }
    if (entry.kind === "dose" && entry.body.override_reason) {
      await noteDoseOverride(currentUser, entry.session.clinic, entry.session.patient_ref, entry.body.override_reason);
    }
  },
  session: (state) => { signedOut = state === "signed-out"; },
};

function flush() {
  return outbox.sendQueued(currentUser, sendHooks);
}

// --- opening a session -----------------------------------------------------------------

async function resume(id) {
  if (store.sessions[id]) {
    store.current = id;
    saveStore();
    return true;
  }
  try {
    const result = await api("GET", `/api/v1/sessions/${id}`, { cache: "no-store" });
    if (result.ok) {
      store.sessions[id] = recordFromView(result.data);
      store.current = id;
      saveStore();
      return true;
    }
    formStatus(forms.session, result.status === 404 ? "There is no such session at your clinics." : "The session could not be loaded.", "error");
  } catch (error) {
    if (!(error instanceof NetworkError)) {
      throw error;
    }
    formStatus(forms.session, "This session is not on this tablet, and the server cannot be reached now.", "error");
  }
  return false;
}

function startAnother() {
  const record = current();
  if (record?.discharge && stateOf(record, record.discharge.key) === "sent") {
    delete store.sessions[record.id]; // done and on the server: nothing to keep here
  }
  store.current = null;
  saveStore();
  history.replaceState(null, "", location.pathname);
  for (const step of Object.keys(forms)) {
    openForm(step);
  }
  render().then(() => forms.session.querySelector("input, select")?.focus());
}

async function init() {
  entries = (await outbox.all()).filter((e) => e.user === currentUser);
  rebuildFromOutbox();
  const asked = new URLSearchParams(location.search).get("id");
  if (asked && /^[0-9a-f-]{36}$/i.test(asked)) {
    if (!(await resume(asked))) {
      store.current = null;
    }
  }
  for (const [step, form] of Object.entries(forms)) {
    watchConditions(form);
    watchTime(form);
    openForm(step);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      save(step);
    });
  }
  forms.discharge.addEventListener("input", liveCriteria);
  forms.discharge.addEventListener("change", liveCriteria);
  document.getElementById("new-session").addEventListener("click", startAnother);
  outbox.keepSending(currentUser, flush, RETRY_MS, "report(s) or session step(s) are");
  setInterval(tick, 1000);
  await render();
  // A refused step of the session in progress is shown in its form at once.
  const record = current();
  const refused = record && entries.find((e) => outbox.isStep(e) && e.session.id === record.id && e.state === "failed");
  if (refused) {
    correct(refused.key);
  }
  if (record) {
    history.replaceState(null, "", `${location.pathname}?id=${record.id}`);
  }
  document.body.dataset.ready = "yes";
  await flush();
}

init();
