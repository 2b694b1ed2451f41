// The safety officers' REMS forms: every overdue form, then every form due, from
// GET /api/v1/rems/forms (the earliest due first; the listing is audited). Each shows the
// patient, the session, the due date (local, with the UTC value) and how late it is, its
// prefilled content, and a form to record the submission to the REMS with its
// confirmation number (POST /api/v1/rems/forms/{id}/submission, audited); a recorded
// form leaves the list.

import { announce, api, formatLocal, h, problemMessage, serverNow } from "./common.js";

const PAGE_LIMIT = 200;
const MAX_PAGES = 10;
const HOUR = 60 * 60 * 1000;
const DAY = 24 * HOUR;
// The API's rule for a confirmation number (rems/service.py), checked here first.
const CONFIRMATION = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
const CONFIRMATION_MAX = 40;

const root = document.getElementById("rems");
const labels = JSON.parse(root?.dataset.labels || "{}");
const rowTemplate = document.getElementById("rems-row");
const summary = document.getElementById("rems-summary");
const errorBox = document.getElementById("rems-error");
const done = document.getElementById("rems-done");
const clinicFilter = document.getElementById("rems-clinic");
const lists = {
  overdue: document.getElementById("overdue-list"),
  due: document.getElementById("due-list"),
};

const drugLabel = (drug) => labels.drug?.[drug] || drug || "";
const kindLabel = (kind) => labels.kind?.[kind] || kind || "";

function time(value) {
  return value ? h("time", { datetime: value, title: `${value} (UTC)` }, formatLocal(value)) : "";
}

/** "2026-12-03 09:00 UTC" */
function utcText(value) {
  return `${new Date(value).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** How late the form is, or how long is left. */
function lateness(form) {
  const ms = serverNow() - new Date(form.due_at).getTime();
  const span = Math.abs(ms);
  const words = span >= DAY ? plural(Math.floor(span / DAY), "day") : plural(Math.max(1, Math.floor(span / HOUR)), "hour");
  return ms >= 0 ? { overdue: true, text: `${words} overdue`, days: Math.floor(span / DAY) } : { overdue: false, text: `${words} left` };
}

// --- loading ------------------------------------------------------------------------

async function fetchAll(status) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < MAX_PAGES; page += 1) {
    const params = new URLSearchParams({ status, limit: String(PAGE_LIMIT) });
    if (clinicFilter?.value) {
      params.set("clinic", clinicFilter.value);
    }
    if (cursor) {
      params.set("cursor", cursor);
    }
    const result = await api("GET", `/api/v1/rems/forms?${params}`, { cache: "no-store" });
    if (!result.ok) {
      throw new Error(problemMessage(result));
    }
    items.push(...result.data.items);
    cursor = result.data.next_cursor;
    if (!cursor) {
      break;
    }
  }
  return items;
}

async function load() {
  errorBox.hidden = true;
  summary.textContent = "Loading forms…";
  let overdue;
  let due;
  try {
    [overdue, due] = await Promise.all([fetchAll("overdue"), fetchAll("due")]);
  } catch (error) {
    summary.textContent = "";
    errorBox.textContent = `The forms could not be loaded: ${error.message}`;
    errorBox.hidden = false;
    return;
  }
  lists.overdue.replaceChildren(...overdue.map(row));
  lists.due.replaceChildren(...due.map(row));
  counts();
}

function counts() {
  const overdue = lists.overdue.children.length;
  const due = lists.due.children.length;
  document.getElementById("overdue-count").textContent = `(${overdue})`;
  document.getElementById("due-count").textContent = `(${due})`;
  document.getElementById("overdue-empty").hidden = overdue > 0;
  document.getElementById("due-empty").hidden = due > 0;
  summary.textContent = overdue
    ? `${plural(overdue, "form")} overdue, ${due} due.`
    : `No form is overdue; ${due} due.`;
  document.title = `${overdue ? `(${overdue}) ` : ""}REMS forms · safetyreport`;
}

// --- a form's row -------------------------------------------------------------------

function slot(el, name) {
  return el.querySelector(`[data-slot="${name}"]`);
}

function facts(content) {
  const pairs = [
    ["Drug", drugLabel(content.drug)],
    ["Prescriber", content.prescriber || "Not recorded"],
    ["Dose", content.dose_mg !== null ? `${content.dose_mg} mg` : "Not recorded"],
    ["Dosed at", time(content.dosed_at) || "Not recorded"],
    ["Lot", content.lot || "Not recorded"],
    ["Session opened", time(content.session_opened_at)],
    ["Observed", content.first_observation_at
      ? [time(content.first_observation_at), " to ", time(content.last_observation_at)]
      : "No observation"],
    ["Discharged at", time(content.discharged_at) || "Not discharged"],
    ["Minutes monitored", content.minutes_monitored ?? "Unknown"],
  ];
  const discharge = content.discharge;
  if (discharge) {
    const parts = [];
    if (discharge.moaa_s !== undefined) {
      parts.push(`MOAA/S ${discharge.moaa_s}`);
    }
    if (discharge.systolic !== undefined) {
      parts.push(`BP ${discharge.systolic}/${discharge.diastolic}`);
    }
    if (discharge.escort !== undefined) {
      parts.push(`escort ${discharge.escort ? "yes" : "no"}`);
    }
    pairs.push(["At discharge", parts.join(", ")]);
  }
  return pairs.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]);
}

// The vital signs' columns; those no reading has are left out.
const VITAL_COLUMNS = [
  ["Minutes after dose", (v) => v.minutes_after_dose],
  ["BP (mmHg)", (v) => (v.systolic !== undefined ? `${v.systolic}/${v.diastolic ?? ""}` : undefined)],
  ["Pulse (/min)", (v) => v.pulse],
  ["SpO2 (%)", (v) => v.spo2],
  ["Resp. rate (/min)", (v) => v.respiratory_rate],
  ["MOAA/S", (v) => v.moaa_s],
  ["CADSS", (v) => v.cadss_total],
];

function vitalTable(li, content) {
  const columns = VITAL_COLUMNS.filter(([, value]) => content.vital_signs.some((v) => value(v) !== undefined && value(v) !== null));
  slot(li, "vitals-head").replaceChildren(h("tr", {}, h("th", { scope: "col" }, "Time"), ...columns.map(([title]) => h("th", { scope: "col" }, title))));
  slot(li, "vitals").replaceChildren(...content.vital_signs.map((v) => h(
    "tr",
    {},
    h("td", {}, time(v.observed_at)),
    ...columns.map(([, value]) => h("td", { class: "number" }, value(v) ?? "")),
  )));
}

function events(content) {
  if (!content.adverse_events.length) {
    return [h("li", { class: "empty" }, "None reported for this session.")];
  }
  return content.adverse_events.map((event) => h(
    "li",
    {},
    h("a", { href: `/reports/${event.report_id}` }, kindLabel(event.kind)),
    event.category ? ` · ${event.category.replaceAll("_", " ")}` : "",
    event.verbatim_term ? `: “${event.verbatim_term}”` : "",
    " · ",
    time(event.occurred_at),
    event.alert_rules.length ? ` · alerts: ${event.alert_rules.join(", ")}` : "",
  ));
}

function row(form) {
  const li = rowTemplate.content.firstElementChild.cloneNode(true);
  const content = form.content;
  li.dataset.formId = form.id;
  li.dataset.status = form.status;
  li.id = `form-${form.id}`;
  const patient = slot(li, "patient");
  patient.href = `/patients/${encodeURIComponent(content.patient_ref)}`;
  patient.textContent = content.patient_ref;
  patient.title = "The patient's history";
  const status = slot(li, "status");
  status.textContent = form.status === "overdue" ? "Overdue" : "Due";
  status.className = `status-chip status-${form.status === "overdue" ? "open" : "acknowledged"}`;
  slot(li, "clinic").textContent = `Clinic ${form.clinic}`;
  slot(li, "session").textContent = form.session_id;
  slot(li, "dose").replaceChildren(
    content.dose_mg !== null ? `${content.dose_mg} mg ${drugLabel(content.drug)}, ` : `${drugLabel(content.drug)}, `,
    ...(content.dosed_at ? ["dosed ", time(content.dosed_at)] : ["opened ", time(content.session_opened_at)]),
  );
  slot(li, "due").replaceChildren(time(form.due_at));
  slot(li, "due-utc").textContent = `(${utcText(form.due_at)})`;
  const late = lateness(form);
  const left = slot(li, "left");
  left.textContent = late.text;
  left.classList.toggle("overdue", late.overdue);
  if (late.overdue) {
    li.dataset.daysOverdue = String(late.days);
  }
  slot(li, "facts").replaceChildren(...facts(content));
  vitalTable(li, content);
  slot(li, "vitals-wrap").hidden = !content.vital_signs.length;
  slot(li, "events").replaceChildren(...events(content));

  const submit = li.querySelector("form.rems-submit");
  if (submit) {
    const input = slot(li, "confirmation");
    const id = `confirmation-${form.id}`;
    input.id = id;
    slot(li, "confirmation-label").setAttribute("for", id);
    const hint = slot(li, "confirmation-hint");
    hint.id = `${id}-hint`;
    const error = slot(li, "confirmation-error");
    error.id = `${id}-error`;
    input.setAttribute("aria-describedby", `${hint.id} ${error.id}`);
    submit.setAttribute("aria-label", `Record the submission of ${content.patient_ref}'s form`);
    submit.addEventListener("submit", (event) => {
      event.preventDefault();
      record(li, form);
    });
  }
  return li;
}

// --- recording a submission -----------------------------------------------------------

function fieldError(li, text) {
  const input = slot(li, "confirmation");
  const error = slot(li, "confirmation-error");
  error.textContent = text;
  error.hidden = !text;
  if (text) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  } else {
    input.removeAttribute("aria-invalid");
  }
}

function message(li, text) {
  const box = slot(li, "message");
  box.textContent = text;
  box.hidden = !text;
}

async function record(li, form) {
  const input = slot(li, "confirmation");
  const value = input.value.trim();
  message(li, "");
  if (!value) {
    fieldError(li, "Enter the confirmation number the REMS portal gave.");
    return;
  }
  if (value.length > CONFIRMATION_MAX || !CONFIRMATION.test(value)) {
    fieldError(li, `Letters, digits and dashes only, starting with a letter or digit, at most ${CONFIRMATION_MAX}.`);
    return;
  }
  fieldError(li, "");
  const button = li.querySelector("form.rems-submit button[type=submit]");
  button.disabled = true;
  let result;
  try {
    result = await api("POST", `/api/v1/rems/forms/${form.id}/submission`, { json: { confirmation_number: value } });
  } catch (error) {
    button.disabled = false;
    message(li, "No connection: the submission was not recorded. Try again when the network is back.");
    return;
  }
  button.disabled = false;
  if (result.ok) {
    leave(li, `Submission recorded for ${form.content.patient_ref} (session ${form.session_id.slice(0, 8)}): confirmation ${result.data.confirmation_number}.`);
  } else if (result.status === 409) {
    leave(li, `The submission of ${form.content.patient_ref}'s form had already been recorded.`);
  } else if (result.status === 422 && result.data?.errors) {
    const mine = result.data.errors.filter((e) => e.field === "confirmation_number");
    if (mine.length) {
      fieldError(li, mine.map((e) => e.message).join(" "));
    } else {
      message(li, result.data.errors.map((e) => e.message).join(" "));
    }
  } else {
    message(li, problemMessage(result));
  }
}

function leave(li, text) {
  const list = li.parentElement;
  const next = li.nextElementSibling || li.previousElementSibling;
  li.remove();
  counts();
  done.textContent = text;
  done.hidden = false;
  announce(text);
  (list.contains(next) ? next : done).focus();
}

if (root) {
  clinicFilter?.addEventListener("change", load);
  load();
}
