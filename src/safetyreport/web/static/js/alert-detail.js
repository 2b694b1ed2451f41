// One alert: acknowledge, assign, resolve or reopen with a reason, add a note. Each form
// posts to the API with the revision shown, so acting on a stale page answers 409
// instead of overwriting someone else's change; success reloads the page.

import { api, countdownText, forgetUnseenAlert, problemMessage } from "./common.js";
import { clearErrors, showErrors } from "./forms.js";

const root = document.getElementById("alert");
const errorBox = document.getElementById("action-error");

// Opened, however she got here: no longer new in the queue.
forgetUnseenAlert(root.dataset.alertId);

const BODIES = {
  acknowledge: () => ({}),
  assign: (form) => ({ user: form.elements.user.value.trim() }),
  resolve: (form) => ({ reason: form.elements.reason.value.trim(), ...deaResolution(form) }),
  reopen: (form) => ({ reason: form.elements.reason.value.trim() }),
  notes: (form) => ({ text: form.elements.text.value.trim() }),
};
// A theft or loss alert's DEA details, those filled in (the server says which it needs).
function deaResolution(form) {
  const names = ["dea_notified_on", "dea_form106_number", "dea_not_reportable_reason"];
  return Object.fromEntries(
    names.filter((name) => form.elements[name]?.value.trim()).map((name) => [name, form.elements[name].value.trim()]),
  );
}

// Notes do not change the alert's state, so they carry no revision.
const WITH_REVISION = new Set(["acknowledge", "assign", "resolve", "reopen"]);

function missing(body) {
  return Object.entries(body)
    .filter(([, value]) => value === "")
    .map(([field]) => ({ field, message: "This is required." }));
}

async function submit(form) {
  const action = form.dataset.action;
  const body = BODIES[action](form);
  clearErrors(form);
  errorBox.hidden = true;
  const empty = missing(body);
  if (empty.length) {
    showErrors(form, empty);
    form.querySelector("[aria-invalid]")?.focus();
    return;
  }
  if (WITH_REVISION.has(action)) {
    body.revision = Number(root.dataset.revision);
  }
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const result = await api("POST", `/api/v1/alerts/${root.dataset.alertId}/${action}`, { json: body });
    if (result.ok) {
      window.location.reload();
      return;
    }
    if (result.status === 422 && result.data?.errors) {
      // Said beside the fields, in the form's words.
      showErrors(form, result.data.errors);
      errorBox.textContent = "Nothing was changed: please check the marked fields.";
    } else {
      errorBox.textContent = problemMessage(result) + (result.status === 409 ? " Reload the page to see the latest state." : "");
    }
    errorBox.hidden = false;
  } catch (error) {
    errorBox.textContent = "No connection: nothing was changed. Try again when the network is back.";
    errorBox.hidden = false;
  } finally {
    button.disabled = false;
  }
}

function tick() {
  for (const el of document.querySelectorAll(".countdown[data-deadline]")) {
    const { overdue, text } = countdownText(el.dataset.deadline);
    el.textContent = `(${text})`;
    el.classList.toggle("overdue", overdue);
  }
}

for (const form of document.querySelectorAll("form.action-form")) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit(form);
  });
}
tick();
setInterval(tick, 1000);
