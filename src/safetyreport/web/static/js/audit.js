// The auditor's page: search the audit trail, download signed exports, verify an export
// file (or the download just made) and the live chains.

import { api, formatLocal, h, isoWithOffset, parseLocalInput, problemMessage } from "./common.js";
import { clearErrors, showErrors } from "./forms.js";

const PAGE_LIMIT = 50;
const FILTERS = ["from", "until", "clinic", "actor", "action", "object"];

const searchForm = document.getElementById("search-form");
const results = document.getElementById("results");
const loadMore = document.getElementById("load-more");
let nextCursor = null;
let lastDownload = null; // {blob, name}

/** The search filters as API query parameters; times get this device's UTC offset. */
function filterParams() {
  const params = new URLSearchParams();
  const errors = [];
  for (const name of FILTERS) {
    const value = searchForm.elements[name].value.trim();
    if (!value) {
      continue;
    }
    if (name === "from" || name === "until") {
      const date = parseLocalInput(value);
      if (!date) {
        errors.push({ field: name, message: "Enter a date and time." });
        continue;
      }
      params.set(name, isoWithOffset(date));
    } else {
      params.set(name, value);
    }
  }
  return { params, errors };
}

function showProblem(el, result) {
  el.textContent = problemMessage(result);
  el.hidden = false;
}

// --- search ----------------------------------------------------------------------

function entryRow(entry) {
  const details = JSON.stringify(entry.details ?? {}, null, 2);
  const object = [entry.object_type, entry.object_id].filter(Boolean).join(" ");
  return h(
    "tr",
    {},
    h(
      "td",
      {},
      h("time", { datetime: entry.recorded_at, title: entry.recorded_at }, formatLocal(entry.recorded_at)),
      h("span", { class: "sub mono" }, `${entry.chain} #${entry.seq}`),
    ),
    h("td", {}, entry.actor, entry.actor_role ? h("span", { class: "sub" }, entry.actor_role) : ""),
    h("td", {}, h("span", { class: "action mono" }, entry.action), h("span", { class: "sub mono object" }, object)),
    h("td", {}, details === "{}" ? "" : h("details", {}, h("summary", {}, "Show"), h("pre", {}, details))),
  );
}

async function search(append) {
  const errorEl = document.getElementById("search-error");
  errorEl.hidden = true;
  clearErrors(searchForm);
  const { params, errors } = filterParams();
  if (errors.length) {
    showErrors(searchForm, errors);
    return;
  }
  params.set("limit", String(PAGE_LIMIT));
  if (append && nextCursor) {
    params.set("cursor", nextCursor);
  }
  try {
    const result = await api("GET", `/api/v1/audit/entries?${params}`);
    if (!result.ok) {
      if (result.status === 422 && result.data?.errors) {
        showErrors(searchForm, result.data.errors);
      }
      showProblem(errorEl, result);
      return;
    }
    const rows = result.data.items.map(entryRow);
    if (append) {
      results.append(...rows);
    } else {
      results.replaceChildren(...rows);
    }
    nextCursor = result.data.next_cursor;
    loadMore.hidden = !nextCursor;
    document.getElementById("results-wrap").hidden = results.children.length === 0;
    document.getElementById("search-summary").textContent =
      `${results.children.length} entr${results.children.length === 1 ? "y" : "ies"} shown` +
      (nextCursor ? "; more match." : ".");
  } catch (error) {
    errorEl.textContent = "No connection to the server.";
    errorEl.hidden = false;
  }
}

// --- export ----------------------------------------------------------------------

function exportName(format) {
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  return `safetyreport-audit-${stamp}.${format === "csv" ? "zip" : "ndjson"}`;
}

/** What the manifest (the last line of an NDJSON export) says, for people. */
async function manifestSummary(blob, format) {
  if (format !== "ndjson") {
    return "The zip holds the CSV file and its signed manifest.json.";
  }
  const lines = (await blob.text()).trimEnd().split("\n");
  try {
    const last = JSON.parse(lines[lines.length - 1]);
    const manifest = last.manifest || {};
    const signed = last.signature ? `signed with key ${manifest.key_id}` : "not signed";
    return `${manifest.entries} entries; the last line is the manifest, ${signed}.`;
  } catch (error) {
    return `${lines.length} lines.`;
  }
}

/** The file name the server suggests (Content-Disposition), or one of ours. */
function fileName(response, format) {
  const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : exportName(format);
}

function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function downloadExport(event) {
  event.preventDefault();
  const errorEl = document.getElementById("export-error");
  const resultEl = document.getElementById("export-result");
  errorEl.hidden = true;
  resultEl.hidden = true;
  clearErrors(searchForm);
  const { params, errors } = filterParams();
  if (errors.length) {
    showErrors(searchForm, errors);
    return;
  }
  const format = event.target.elements.format.value;
  params.set("format", format);
  const button = event.target.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const response = await fetch(`/api/v1/audit/export?${params}`, { credentials: "same-origin" });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      showProblem(errorEl, { status: response.status, data });
      return;
    }
    const blob = await response.blob();
    const name = fileName(response, format);
    lastDownload = { blob, name };
    save(blob, name);
    resultEl.textContent = `Downloaded ${name} (${blob.size} bytes). ${await manifestSummary(blob, format)}`;
    resultEl.className = "result";
    resultEl.hidden = false;
    document.getElementById("verify-download").hidden = false;
  } catch (error) {
    errorEl.textContent = "No connection to the server.";
    errorEl.hidden = false;
  } finally {
    button.disabled = false;
  }
}

// --- verification ----------------------------------------------------------------

function showVerdict(el, verdict, what) {
  const problems = verdict.problems || [];
  el.className = `result ${verdict.ok ? "ok" : "bad"}`;
  el.replaceChildren(
    h("p", {}, h("strong", {}, verdict.ok ? `Verified: ${what} is intact.` : `Not verified: ${what} has problems.`)),
    h("p", {}, `${verdict.entries} entries checked.`),
    problems.length ? h("ul", {}, problems.map((p) => h("li", {}, p))) : "",
  );
  el.dataset.ok = String(verdict.ok);
  el.hidden = false;
}

async function verifyBytes(blob, name, el) {
  el.hidden = true;
  try {
    const result = await api("POST", "/api/v1/audit/export/verify", {
      body: blob,
      headers: { "Content-Type": name.endsWith(".zip") ? "application/zip" : "application/x-ndjson" },
    });
    if (result.ok) {
      showVerdict(el, result.data, name);
    } else {
      el.className = "result bad";
      el.textContent = problemMessage(result);
      el.hidden = false;
    }
  } catch (error) {
    el.className = "result bad";
    el.textContent = "No connection to the server.";
    el.hidden = false;
  }
}

async function verifyFile(event) {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const file = form.elements.file.files[0];
  if (!file) {
    showErrors(form, [{ field: "file", message: "Choose an export file." }]);
    return;
  }
  await verifyBytes(file, file.name, document.getElementById("verify-file-result"));
}

async function verifyLive() {
  const el = document.getElementById("verify-live-result");
  el.hidden = true;
  try {
    const result = await api("GET", "/api/v1/audit/verify");
    if (!result.ok) {
      el.className = "result bad";
      el.textContent = problemMessage(result);
    } else {
      const broken = result.data.chains.filter((c) => !c.ok);
      showVerdict(el, {
        ok: result.data.ok,
        entries: result.data.entries,
        problems: broken.map((c) => `${c.chain}: entry ${c.broken_seq}: ${c.problem}`),
      }, `the live audit trail (${result.data.chains.length} chains)`);
    }
  } catch (error) {
    el.className = "result bad";
    el.textContent = "No connection to the server.";
  }
  el.hidden = false;
}

searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  search(false);
});
searchForm.addEventListener("reset", () => setTimeout(() => search(false), 0));
loadMore.addEventListener("click", () => search(true));
document.getElementById("export-form").addEventListener("submit", downloadExport);
document.getElementById("verify-download").addEventListener("click", () => {
  if (lastDownload) {
    verifyBytes(lastDownload.blob, lastDownload.name, document.getElementById("verify-file-result"));
  }
});
document.getElementById("verify-file-form").addEventListener("submit", verifyFile);
document.getElementById("verify-live").addEventListener("click", verifyLive);
search(false);
