// Amending a report: only the fields that changed are sent, with the reason.

import { announce, api, newKey, problemMessage } from "./common.js";
import {
  clearErrors, fieldNames, formStatus, readForm, showErrors, showIsoTimes, watchConditions,
} from "./forms.js";

const form = document.getElementById("amend-form");
const current = JSON.parse(form.dataset.current);
// One key per visit of the page: a double tap or a retry amends once.
const key = newKey();

// Missing, null and an empty list all mean "not given".
const norm = (v) => (v === undefined || v === null || (Array.isArray(v) && v.length === 0) ? null : v);

function same(name, before, after) {
  if (name === "occurred_at" || name === "discovered_at") {
    // The input holds minutes in local time; the stored value is UTC, maybe with seconds.
    const minute = (v) => (v ? Math.floor(new Date(v).getTime() / 60000) : null);
    return minute(before) === minute(after);
  }
  return JSON.stringify(norm(before)) === JSON.stringify(norm(after));
}

function changes(values) {
  const changed = {};
  for (const name of fieldNames(form)) {
    if (name === "reason") {
      continue;
    }
    if (!same(name, current[name], values[name])) {
      changed[name] = values[name] ?? null;
    }
  }
  return changed;
}

async function submit() {
  clearErrors(form);
  const { values, errors } = readForm(form);
  if (errors.length) {
    showErrors(form, errors);
    return;
  }
  const changed = changes(values);
  if (Object.keys(changed).length === 0) {
    showErrors(form, [{ field: "$", message: "Nothing has changed: change at least one field." }]);
    return;
  }
  if (!navigator.onLine) {
    formStatus(form, "Amending needs a network connection. Your changes are still in the form.", "warn");
    return;
  }
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  formStatus(form, "Saving…");
  try {
    const result = await api("POST", `/api/v1/reports/${form.dataset.reportId}/amendments`, {
      json: { reason: values.reason, ...changed },
      headers: { "Idempotency-Key": key },
    });
    if (result.ok) {
      formStatus(form, `Saved as version ${result.data.version}.`, "ok");
      announce("Amendment saved.");
      window.location.reload();
    } else if (result.status === 422 && result.data?.errors) {
      showErrors(form, result.data.errors);
      formStatus(form, "The server refused the amendment: see the marked fields.", "error");
    } else {
      formStatus(form, problemMessage(result), "error");
    }
  } catch (error) {
    formStatus(form, "No connection. Your changes are still in the form; try again.", "warn");
  } finally {
    button.disabled = false;
  }
}

showIsoTimes(form);
watchConditions(form);
form.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});
