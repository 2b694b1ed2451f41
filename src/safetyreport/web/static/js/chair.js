// At the chair: what the nurse must do about the alerts her reports raised.
//
// Every alert in a report's answer gets an action card at the top of the report page,
// from the answers the outbox keeps (outbox.js), so a report sent in the background
// (later, from another page or tab) shows its cards too. A card stays until the nurse
// dismisses it. A hold (the pre-dose hold) says "Do not dose" and cannot be dismissed
// until she records an override with a reason (POST /api/v1/alerts/{id}/override).

import { NetworkError, announce, api, formatLocal, h } from "./common.js";
import * as outbox from "./outbox.js";

const SEVERITY_LABELS = { critical: "Critical", urgent: "Urgent", high: "High", info: "Info" };
const SEVERITY_RANK = { critical: 3, urgent: 2, high: 1, info: 0 };
const STATUS_LABELS = { open: "Open", acknowledged: "Acknowledged", resolved: "Resolved" };

// --- what a report said, in a few words ------------------------------------------

/** The label the page's form of ``kind`` gives the choice ``value`` of ``name``. */
function choiceLabel(kind, name, value) {
  const field = document.querySelector(`#form-${kind} .field[data-field="${CSS.escape(name)}"]`);
  const choice = field?.querySelector(`option[value="${CSS.escape(String(value))}"], input[value="${CSS.escape(String(value))}"]`);
  const text = choice?.tagName === "OPTION" ? choice.textContent : choice?.closest("label")?.textContent;
  return text?.trim() || String(value ?? "");
}

function quantities(kind, body) {
  if (body.expected_quantity === undefined && body.actual_quantity === undefined) {
    return "";
  }
  const unit = body.unit ? ` ${choiceLabel(kind, "unit", body.unit)}` : "";
  const expected = body.expected_quantity !== undefined ? `expected ${body.expected_quantity}` : "";
  const actual = body.actual_quantity !== undefined ? `counted ${body.actual_quantity}` : "";
  return [expected, actual].filter(Boolean).join(", ") + unit;
}

/** The readings of a session's observation or discharge: "BP 150/95, pulse 88, MOAA/S 4". */
export function readings(body) {
  const parts = [];
  if (body.systolic !== undefined && body.diastolic !== undefined) {
    parts.push(`BP ${body.systolic}/${body.diastolic}`);
  }
  const named = [["pulse", "pulse"], ["respiratory_rate", "RR"], ["spo2", "SpO2"], ["moaa_s", "MOAA/S"], ["cadss_total", "CADSS"]];
  for (const [name, label] of named) {
    if (body[name] !== undefined && body[name] !== null) {
      parts.push(`${label} ${body[name]}${name === "spo2" ? "%" : ""}`);
    }
  }
  return parts.join(", ");
}

/** The key values of a report: "BP 210/125", "MOAA/S 2, severe", "Theft: expected 10 ml";
 * of a session's step (the flowsheet): "Checklist BP 150/95", "Dose 56 mg", the readings. */
export function keyValues(kind, body) {
  const label = (name) => choiceLabel(kind, name, body[name]);
  switch (kind) {
    case "session":
      return `Session opened, checklist BP ${body.checklist?.systolic}/${body.checklist?.diastolic} (before dose)`;
    case "dose":
      return `Dose ${body.dose_mg} mg`;
    case "observation":
      return `Observation: ${readings(body)}`;
    case "discharge":
      return `Discharge: ${readings(body)}${body.override_reason ? " (override)" : ""}`;
    case "blood_pressure":
      return `BP ${body.systolic}/${body.diastolic} (${label("phase").toLowerCase()})`;
    case "dissociation":
      return `MOAA/S ${body.moaa_s}, ${label("severity").toLowerCase()}` +
        (body.respiratory_depression ? ", respiratory depression" : "");
    case "adverse_event":
      return `${label("category")}: ${body.verbatim_term}`;
    case "misuse_concern":
      return [label("concern_type"), quantities(kind, body)].filter(Boolean).join(": ");
    case "stock_incident":
      return [label("incident_type"), quantities(kind, body)].filter(Boolean).join(": ");
    default:
      return kind;
  }
}

/** Whom the report concerns: the patient, or for a stock incident its clinic. */
export function subjectOf(body) {
  return body.patient_ref || `clinic ${body.clinic}`;
}

/** "patient PT-0777", or for a stock incident its clinic. */
const whom = (body) => (body.patient_ref ? `patient ${body.patient_ref}` : subjectOf(body));

const capital = (text) => text.charAt(0).toUpperCase() + text.slice(1);

/** One sentence on the alerts of an answer, for the confirmation under the form. */
export function alertSentence(body, alerts) {
  if (!alerts.length) {
    return "No alert raised.";
  }
  const gravest = alerts.reduce((a, b) => (SEVERITY_RANK[b.severity] > SEVERITY_RANK[a.severity] ? b : a));
  const raised = alerts.length === 1
    ? `${capital(gravest.severity)} alert raised`
    : `${alerts.length} alerts raised, the gravest ${gravest.severity}`;
  const hold = alerts.some((a) => a.hold && !a.override_reason)
    ? ` Do not dose ${subjectOf(body)}: see the hold at the top of the page.`
    : " See the action cards at the top of the page.";
  return `${raised}; the safety officer has been notified.${hold}`;
}

// --- the cards -------------------------------------------------------------------

const section = () => document.getElementById("chair-alerts");
const cards = new Map(); // alert id -> its card element, kept while nothing on it changes
let known = null; // the alert ids shown so far (null before the first showing)

const isHeld = (alert) => alert.hold && !alert.override_reason;

/** Every alert of ``user``'s kept answers, once each (the latest answer's view of it). */
async function keptAlerts(user) {
  const byAlert = new Map();
  for (const answer of await outbox.answers(user)) {
    for (const alert of answer.alerts) {
      byAlert.set(alert.id, { answer, alert });
    }
  }
  // Holds still holding first, then the gravest, then the newest.
  return [...byAlert.values()].sort((a, b) =>
    Number(isHeld(b.alert)) - Number(isHeld(a.alert))
    || SEVERITY_RANK[b.alert.severity] - SEVERITY_RANK[a.alert.severity]
    || b.answer.sentAt.localeCompare(a.answer.sentAt));
}

/** Change ``alertId`` in every kept answer of ``user``: ``change(alert)`` returns the new
 * alert, or null to drop it; an answer left without alerts is forgotten. */
async function changeAlert(user, alertId, change) {
  for (const answer of await outbox.answers(user)) {
    if (!answer.alerts.some((a) => a.id === alertId)) {
      continue;
    }
    const alerts = answer.alerts.map((a) => (a.id === alertId ? change(a) : a)).filter(Boolean);
    await (alerts.length ? outbox.putAnswer({ ...answer, alerts }) : outbox.removeAnswer(answer.key));
  }
}

/** A dose recorded with an override reason (the flowsheet's) overrode every hold open on
 * its patient at its clinic (sessions/service.py record_dose): their cards say so. */
export async function noteDoseOverride(user, clinic, patientRef, reason) {
  for (const answer of await outbox.answers(user)) {
    if (answer.body.clinic !== clinic || answer.body.patient_ref !== patientRef || !answer.alerts.some(isHeld)) {
      continue;
    }
    const alerts = answer.alerts.map((a) => (isHeld(a) ? { ...a, override_reason: reason, overriddenByMe: true } : a));
    await outbox.putAnswer({ ...answer, alerts });
  }
}

function overrideForm(user, alert, id, answerBody) {
  const reason = h("textarea", {
    id: `${id}-reason`, name: "reason", rows: 3, maxlength: 2000,
    "aria-describedby": `${id}-hint ${id}-error`,
  });
  const error = h("p", { class: "error", id: `${id}-error`, hidden: true });
  const button = h("button", { type: "submit", class: "primary big" }, "Record override");
  const form = h(
    "form", { class: "override-form", novalidate: true },
    h("label", { for: reason.id }, "Reason for dosing despite the hold"),
    h("p", { class: "hint", id: `${id}-hint` }, "Who decided, and on which reading. It is recorded with your name and shown to the safety officer."),
    reason, error, button,
  );
  const fail = (message) => {
    error.textContent = message;
    error.hidden = false;
    reason.focus();
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    reason.removeAttribute("aria-invalid");
    const text = reason.value.trim();
    if (!text) {
      reason.setAttribute("aria-invalid", "true");
      fail("Write the reason for dosing despite the hold. Nothing was recorded.");
      return;
    }
    button.disabled = true;
    try {
      const result = await api("POST", `/api/v1/alerts/${alert.id}/override`, { json: { reason: text } });
      if (result.ok) {
        await changeAlert(user, alert.id, (a) => ({ ...a, override_reason: text, overriddenByMe: true }));
        await showCards(user);
        cards.get(alert.id)?.querySelector(".override-done")?.focus();
        announce("Override recorded. Dosing may proceed.");
        return;
      }
      fail(overrideProblem(result));
      if ((result.status === 409 || result.status === 404) && !form.parentElement.querySelector(".dismiss")) {
        // Decided elsewhere (overridden by someone else, or not hers to decide): the card
        // may go, or it would stay pinned for good.
        form.after(dismissButton(user, alert, subjectOf(answerBody)));
      }
    } catch (problem) {
      if (!(problem instanceof NetworkError)) {
        throw problem;
      }
      fail("No connection: the override was not recorded. Dosing still waits; try again when the tablet is online.");
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

/** Why the server did not record an override, in plain words. */
function overrideProblem(result) {
  const detail = result.data?.detail || "";
  switch (result.status) {
    case 401:
      return "Your session has ended: the override was not recorded. Sign in again, then record it.";
    case 403:
      return "Your role may not record an override. Ask a nurse or the safety officer.";
    case 404:
      return "This alert is not one of your clinics': the override was not recorded.";
    case 409:
      return `Not recorded: ${detail || "the alert changed meanwhile"}.`;
    case 422: {
      const reasons = (result.data?.errors || []).map((e) => e.message).join(" ");
      return `Not recorded: the reason ${reasons || "was refused"}.`;
    }
    default:
      return "The server could not record the override just now. Dosing still waits; try again.";
  }
}

function dismissButton(user, alert, subject) {
  const button = h(
    "button", { type: "button", class: "secondary dismiss" },
    "Dismiss", h("span", { class: "visually-hidden" }, ` the alert ${alert.title}, ${subject}`),
  );
  button.addEventListener("click", async () => {
    await changeAlert(user, alert.id, () => null);
    await showCards(user);
    // Focus stays near: the next card, else (none left) the report form's kind picker.
    const next = section().querySelector(".action-card .dismiss, .action-card textarea");
    (next || document.querySelector('input[name="kind-picker"]:checked'))?.focus();
  });
  return button;
}

function card(user, { answer, alert }) {
  const id = `card-${alert.id}`;
  const subject = subjectOf(answer.body);
  const held = isHeld(alert);
  const severity = SEVERITY_LABELS[alert.severity] || alert.severity;
  const status = `Status: ${STATUS_LABELS[alert.status] || alert.status}`;
  const state = held ? "Dosing on hold" : alert.hold ? `Hold overridden · ${status}` : status;
  let done = null;
  if (alert.hold && !held) {
    const who = alert.overriddenByMe ? "Override recorded by you" : "Override recorded";
    const reason = alert.override_reason.replace(/[.\s]+$/, ""); // its own full stop, not two
    done = h("p", { class: "override-done", tabindex: "-1" }, `${who}: ${reason}. Dosing may proceed.`);
  }
  const el = h(
    "article",
    {
      class: `action-card sev-${alert.severity}${held ? " held" : ""}`,
      "data-alert": alert.id, "data-rule": alert.rule, "aria-labelledby": `${id}-title`,
    },
    h("p", { class: "card-tags" },
      h("span", { class: `sev-tag sev-${alert.severity}` }, severity),
      h("span", { class: "card-state" }, state)),
    h("h3", { id: `${id}-title` }, held ? `Do not dose ${subject}` : alert.title),
    h("p", { class: "card-subject" },
      `${held ? `${alert.title}. ` : ""}${capital(whom(answer.body))} · ${keyValues(answer.kind, answer.body)} · sent ${formatLocal(answer.sentAt)}`),
    h("p", { class: "guidance" }, alert.guidance),
    held ? overrideForm(user, alert, id, answer.body) : done,
    held ? null : dismissButton(user, alert, subject),
  );
  el.dataset.shown = JSON.stringify([alert, answer.key]);
  return el;
}

/** Show ``user``'s action cards; a card not seen before on this page is announced, but
 * for the answers ``quiet`` (keys) that the form's confirmation already speaks of. */
export async function showCards(user, quiet = new Set()) {
  const items = await keptAlerts(user);
  const elements = items.map((item) => {
    const existing = cards.get(item.alert.id);
    // A card whose alert is unchanged stays as it is (with any reason being typed).
    return existing?.dataset.shown === JSON.stringify([item.alert, item.answer.key]) ? existing : card(user, item);
  });
  cards.clear();
  items.forEach((item, i) => cards.set(item.alert.id, elements[i]));
  const list = document.getElementById("chair-alert-list");
  const current = [...list.children];
  if (current.length !== elements.length || current.some((el, i) => el !== elements[i])) {
    list.replaceChildren(...elements);
  }
  section().hidden = items.length === 0;
  const fresh = known ? items.filter((i) => !known.has(i.alert.id) && !quiet.has(i.answer.key)) : [];
  known = new Set(items.map((i) => i.alert.id));
  if (fresh.length) {
    const held = fresh.find((i) => isHeld(i.alert));
    announce(held
      ? `Do not dose ${subjectOf(held.answer.body)}: a hold needs an override with a reason.`
      : `${fresh.length} new alert card(s) at the top of the page.`);
  }
  return fresh;
}
