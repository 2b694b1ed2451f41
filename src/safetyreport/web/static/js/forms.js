// Report forms: reading typed values, checking them as the server would, and showing
// errors (the browser's or the server's 422) next to the fields they concern.
// The rules come from the data-* attributes the server derives from the report types.

import { h, isoWithOffset, localInputValue, parseLocalInput } from "./common.js";

const INTEGER = /^\d+$/;
const DECIMAL = /^\d+(\.\d+)?$/;

function fieldsOf(form) {
  return [...form.querySelectorAll(".field[data-field]")];
}

function controls(field) {
  return [...field.querySelectorAll("input, select, textarea")];
}

/** The questions of a "questions" field, each with its chosen radio (or none). */
function questions(field) {
  return [...field.querySelectorAll("[data-question]")].map((q) => ({
    name: q.dataset.question,
    chosen: q.querySelector("input:checked"),
  }));
}

/** The raw value of a field: string, array (checkboxes) or "" when empty. */
function rawValue(field) {
  const widget = field.dataset.widget;
  const inputs = controls(field);
  if (widget === "questions") {
    // The questions answered, as {name: "true" | "false"}; "" when none is.
    const answered = questions(field).filter((q) => q.chosen);
    return answered.length ? Object.fromEntries(answered.map((q) => [q.name, q.chosen.value])) : "";
  }
  if (widget === "checkboxes") {
    return inputs.filter((i) => i.checked).map((i) => i.value);
  }
  if (widget === "radios" || widget === "yesno") {
    return inputs.find((i) => i.checked)?.value ?? "";
  }
  return (inputs[0]?.value ?? "").trim();
}

function numberMessage(field) {
  const { min, max } = field.dataset;
  const above = "minExclusive" in field.dataset ? `above ${min}` : `from ${min}`;
  return `Enter a number ${above} to ${max}.`;
}

/** [value, error]: the typed value of one field (undefined when empty), or why not. */
function readField(field) {
  const widget = field.dataset.widget;
  const raw = rawValue(field);
  const empty = raw === "" || (Array.isArray(raw) && raw.length === 0);
  if (empty) {
    return [undefined, "required" in field.dataset ? "This is required." : null];
  }
  switch (widget) {
    case "integer":
    case "decimal": {
      const text = raw.replace(",", ".");
      if (!(widget === "integer" ? INTEGER : DECIMAL).test(text)) {
        return [undefined, widget === "integer" ? "Enter a whole number." : "Enter a number."];
      }
      const value = Number(text);
      const min = Number(field.dataset.min);
      const max = Number(field.dataset.max);
      const exclusive = "minExclusive" in field.dataset;
      if ((exclusive ? value <= min : value < min) || value > max) {
        return [undefined, numberMessage(field)];
      }
      return [value, null];
    }
    case "yesno":
      return [raw === "true", null];
    case "radios":
      return ["numeric" in field.dataset ? Number(raw) : raw, null];
    case "datetime": {
      const date = parseLocalInput(raw);
      return date ? [isoWithOffset(date), null] : [undefined, "Enter a date and time."];
    }
    case "checkboxes":
      return [raw, null];
    case "questions": {
      // An object of every answer: the server takes all of them or none.
      const all = questions(field);
      if (Object.keys(raw).length < all.length) {
        return [undefined, `Answer all ${all.length} questions, or none.`];
      }
      return [Object.fromEntries(all.map((q) => [q.name, raw[q.name] === "true"])), null];
    }
    default: {
      const maxLength = Number(field.dataset.maxLength || 0);
      if (maxLength && raw.length > maxLength) {
        return [undefined, `At most ${maxLength} characters.`];
      }
      if (field.dataset.pattern && !new RegExp(field.dataset.pattern).test(raw)) {
        return [undefined, "Use letters, digits, '-' or '_' only."];
      }
      return [raw, null];
    }
  }
}

/** {values, errors}: every filled field typed, and [{field, message}] for the rest.
 * Fields hidden because they do not apply (see applyConditions) are left out. */
export function readForm(form) {
  const values = {};
  const errors = [];
  for (const field of fieldsOf(form)) {
    if (field.hidden) {
      continue;
    }
    const [value, error] = readField(field);
    if (error) {
      errors.push({ field: field.dataset.field, message: error });
    } else if (value !== undefined) {
      values[field.dataset.field] = value;
    }
  }
  return { values, errors };
}

/** The names of the form's fields. */
export function fieldNames(form) {
  return fieldsOf(form).map((f) => f.dataset.field);
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll(".error")) {
    el.hidden = true;
    el.textContent = "";
  }
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
  }
  const summary = form.querySelector(".error-summary");
  if (summary) {
    summary.hidden = true;
    summary.querySelector("ul").replaceChildren();
  }
}

function labelOf(field) {
  const label = field.querySelector("legend, label");
  return label ? label.firstChild.textContent.trim() : field.dataset.field;
}

/** The words of the page for the API's names: each field's label, and the label of each
 * choice whose value is a name_with_underscores (a drug, a kind, a category...). */
function pageWords(form) {
  const words = new Map();
  for (const input of document.querySelectorAll("input[name='kind-picker']")) {
    words.set(input.value, input.closest("label")?.textContent.trim() || input.value);
  }
  for (const field of fieldsOf(form)) {
    words.set(field.dataset.field, labelOf(field));
    for (const choice of field.querySelectorAll("option[value], input[value]")) {
      const text = choice.tagName === "OPTION" ? choice.textContent : choice.closest("label")?.textContent;
      if (choice.value.includes("_") && text?.trim()) {
        words.set(choice.value, text.trim());
      }
    }
  }
  return words;
}

/** A server message in the form's words: "required when incident_type is theft" reads
 * "required when “Incident” is theft". Only names_with_underscores are replaced: plain
 * words ("systolic must exceed diastolic") read as English already. */
function inFormWords(words, message) {
  return message.replace(/[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+/g, (name) => {
    const word = words.get(name);
    return word ? `“${word}”` : name;
  });
}

/**
 * Show ``errors`` ([{field, message}], as the API's 422 lists them) beside their fields,
 * and all of them in the summary at the top, which takes the focus. The API's names in
 * the messages are shown as the form's labels.
 */
export function showErrors(form, errors) {
  clearErrors(form);
  const summary = form.querySelector(".error-summary");
  const items = [];
  const words = pageWords(form);
  for (const raw of errors) {
    const error = { field: raw.field, message: inFormWords(words, raw.message) };
    const field = form.querySelector(`.field[data-field="${CSS.escape(error.field)}"]`);
    if (field) {
      const slot = field.querySelector(".error");
      slot.textContent = slot.textContent ? `${slot.textContent} ${error.message}` : error.message;
      slot.hidden = false;
      for (const control of controls(field)) {
        control.setAttribute("aria-invalid", "true");
      }
      const target = controls(field)[0];
      const link = h("a", { href: `#${target?.id || ""}` }, `${labelOf(field)}: ${error.message}`);
      link.addEventListener("click", (event) => {
        event.preventDefault();
        target?.focus();
      });
      items.push(h("li", {}, link));
    } else {
      // Not a field of this form (the body as a whole, the idempotency key): say it anyway.
      const name = words.get(error.field) || error.field;
      items.push(h("li", {}, error.field === "$" ? error.message : `${name}: ${error.message}`));
    }
  }
  if (summary) {
    summary.querySelector("ul").replaceChildren(...items);
    summary.hidden = items.length === 0;
    if (items.length) {
      summary.focus();
    }
  }
}

/** Put ``values`` (a report body) into the form; fields not in it are emptied. */
export function fillForm(form, values) {
  for (const field of fieldsOf(form)) {
    setField(field, values[field.dataset.field]);
  }
  applyConditions(form);
}

function setField(field, value) {
  const widget = field.dataset.widget;
  const inputs = controls(field);
  if (widget === "questions") {
    // {q1: true, ...}: each question's radio of that answer checked, the others not.
    for (const input of inputs) {
      const answer = value && typeof value === "object" ? value[input.closest("[data-question]").dataset.question] : undefined;
      input.checked = answer !== undefined && answer !== null && input.value === String(answer);
    }
  } else if (widget === "checkboxes") {
    const chosen = new Set(Array.isArray(value) ? value : []);
    inputs.forEach((i) => { i.checked = chosen.has(i.value); });
  } else if (widget === "radios" || widget === "yesno") {
    inputs.forEach((i) => { i.checked = value !== undefined && value !== null && i.value === String(value); });
  } else if (widget === "datetime") {
    const date = value ? new Date(value) : null;
    inputs[0].value = date && !Number.isNaN(date.getTime()) ? localInputValue(date) : "";
  } else if (inputs[0].tagName === "SELECT" && (value === undefined || value === null)) {
    inputs[0].selectedIndex = 0;
  } else {
    inputs[0].value = value === undefined || value === null ? "" : String(value);
  }
}

/** Back to a new report: defaults, the time now; the clinic stays as chosen. */
export function resetForm(form) {
  clearErrors(form);
  for (const field of fieldsOf(form)) {
    const name = field.dataset.field;
    if (name === "clinic") {
      continue;
    }
    if (field.dataset.widget === "datetime") {
      setField(field, new Date().toISOString());
    } else {
      setField(field, field.dataset.default);
    }
  }
  applyConditions(form);
}

/** Whether the (shown) field ``name`` of ``form`` has one of ``values`` (space-separated). */
function holds(form, name, values) {
  const field = form.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
  return Boolean(field) && !field.hidden && values.split(" ").includes(String(rawValue(field)));
}

/**
 * Show only the fields that apply (data-shown-when: a category's own fields, the
 * infusion time of IV ketamine) and mark those required that the choices so far make
 * required (data-required-when), as the server's cross-field rules will.
 */
export function applyConditions(form) {
  for (const field of fieldsOf(form)) {
    const { shownWhen, shownValues, requiredWhen, requiredValues } = field.dataset;
    if (shownWhen) {
      field.hidden = !holds(form, shownWhen, shownValues);
    }
    if (requiredWhen) {
      const required = holds(form, requiredWhen, requiredValues);
      if (required) {
        field.dataset.required = "";
      } else {
        delete field.dataset.required;
      }
      const optional = field.querySelector("[data-optional]");
      if (optional) {
        optional.hidden = required;
      }
    }
  }
}

/** Keep the form's shown and required fields in step with the nurse's choices. */
export function watchConditions(form) {
  form.addEventListener("change", () => applyConditions(form));
  applyConditions(form);
}

/** Datetime inputs that carry a server value (data-iso) show it in local time. */
export function showIsoTimes(form) {
  for (const input of form.querySelectorAll("input[type=datetime-local][data-iso]")) {
    const date = new Date(input.dataset.iso);
    if (!Number.isNaN(date.getTime())) {
      input.value = localInputValue(date);
    }
  }
}

/** Set the status line under a form: kind is "ok", "warn", "error" or "", with
 * "lasting" for a message the nurse dismisses herself (its button is then shown). */
export function formStatus(form, message, kind = "") {
  const el = form.querySelector(".form-status");
  if (el) {
    el.textContent = message;
    el.className = `form-status ${kind}`.trim();
  }
  const dismiss = form.querySelector(".clear-status");
  if (dismiss) {
    dismiss.hidden = !(message && kind.split(" ").includes("lasting"));
  }
}
