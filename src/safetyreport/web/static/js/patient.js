// The patient page: the patient's timeline (GET /api/v1/patients/{ref}/timeline, which
// checks the clinic and audits the read) drawn as charts of blood pressure, pulse and
// MOAA/S by minutes after each session's dose, one line per session, and the doses over
// time; under each chart a table of the same numbers (screen readers, printing), then
// every entry of the timeline in time order. Chart.js (static/vendor/chartjs) is loaded
// before this module as a classic script: it is window.Chart.

import { COLOURS, SHAPES, printable, setDefaults } from "./charting.js";
import { NetworkError, api, formatLocal, h, problemMessage } from "./common.js";

const root = document.getElementById("patient");
const ref = root?.dataset.patientRef || "";
const alertLinks = root?.dataset.alertLinks === "yes";
const labels = JSON.parse(root?.dataset.labels || "{}");
const statusLine = document.getElementById("patient-status");
const errorBox = document.getElementById("patient-error");
const body = document.getElementById("patient-body");

// The charts show the latest sessions; the tables list every one.
const CHART_SESSIONS = 8;
const MINUTE = 60 * 1000;
const DAY = 24 * 60 * MINUTE;
const charts = [];

const drugLabel = (drug) => labels.drug?.[drug] || drug || "";
const kindLabel = (kind) => labels.kind?.[kind] || kind || "";

function time(value) {
  return h("time", { datetime: value, title: `${value} (UTC)` }, formatLocal(value));
}

function mg(value) {
  return value === null || value === undefined ? "" : Number(value).toLocaleString("en", { maximumFractionDigits: 3 });
}

function signedMinutes(minutes) {
  return minutes === null || minutes === undefined ? "" : minutes > 0 ? `+${minutes}` : String(minutes);
}

// --- the timeline as sessions and readings -----------------------------------------------

/** Sessions in the order given (their dose, or opening without one), numbered from 1,
 * each with its readings: observations and the discharge. */
function sessionsOf(timeline) {
  const sessions = new Map();
  for (const entry of timeline.entries) {
    if (entry.type === "session") {
      sessions.set(entry.session_id, { ...entry, opened: entry.at, dose: null, readings: [] });
    }
  }
  for (const entry of timeline.entries) {
    const session = sessions.get(entry.session_id);
    if (!session) {
      continue;
    }
    if (entry.type === "dose") {
      session.dose = entry;
    } else if (entry.type === "observation" || entry.type === "discharge") {
      session.readings.push(entry);
    }
  }
  const ordered = [...sessions.values()].sort(
    (a, b) => Date.parse(a.dose?.at || a.opened) - Date.parse(b.dose?.at || b.opened),
  );
  ordered.forEach((session, index) => {
    session.number = index + 1;
    session.colour = COLOURS[index % COLOURS.length];
    session.shape = SHAPES[index % SHAPES.length];
    session.start = Date.parse(session.dose?.at || session.opened);
    session.label = `Session ${session.number} · ${formatLocal(session.dose?.at || session.opened).slice(0, 10)}`;
    for (const reading of session.readings) {
      // The API's minutes after the dose; before the dose (or without one), counted here.
      reading.minutes = reading.minutes_after_dose ?? Math.floor((Date.parse(reading.at) - session.start) / MINUTE);
    }
  });
  return ordered;
}

function readingsWith(sessions, ...names) {
  const rows = [];
  for (const session of sessions) {
    for (const reading of session.readings) {
      if (names.some((name) => reading.vitals?.[name] !== undefined && reading.vitals?.[name] !== null)) {
        rows.push({ session, reading });
      }
    }
  }
  return rows;
}

// --- charts --------------------------------------------------------------------------

/** A session's legend entry hides or shows all its lines (pressure has two). */
function toggleSession(event, item, legend) {
  const chart = legend.chart;
  const session = chart.data.datasets[item.datasetIndex].session;
  const visible = !chart.isDatasetVisible(item.datasetIndex);
  chart.data.datasets.forEach((dataset, index) => {
    if (dataset.session === session) {
      chart.setDatasetVisibility(index, visible);
    }
  });
  chart.update();
}

function vitalChart(canvas, sessions, series, yAxis) {
  const shown = sessions.slice(-CHART_SESSIONS);
  const datasets = [];
  for (const session of shown) {
    for (const { name, label, dashed } of series) {
      const points = session.readings
        .filter((r) => r.vitals?.[name] !== undefined && r.vitals?.[name] !== null)
        .map((r) => ({ x: r.minutes, y: r.vitals[name], at: r.at, kind: r.type }))
        .sort((a, b) => a.x - b.x);
      if (!points.length) {
        continue;
      }
      datasets.push({
        label: session.label,
        session: session.number,
        what: label,
        data: points,
        borderColor: session.colour,
        backgroundColor: dashed ? "#ffffff" : session.colour,
        pointStyle: session.shape,
        pointRadius: 5,
        pointHoverRadius: 7,
        pointBorderWidth: 2,
        borderWidth: 2,
        borderDash: dashed ? [6, 4] : [],
        // Only the first line of a session has a legend entry.
        legend: !dashed,
      });
    }
  }
  return new window.Chart(canvas, {
    type: "line",
    data: { datasets },
    options: {
      parsing: true,
      scales: {
        x: { type: "linear", title: { display: true, text: "Minutes after dose" }, ticks: { precision: 0 } },
        y: yAxis,
      },
      plugins: {
        legend: {
          labels: { filter: (item, data) => data.datasets[item.datasetIndex].legend },
          onClick: toggleSession,
        },
        tooltip: {
          callbacks: {
            title: (items) => items.length ? `${items[0].dataset.label}, ${signedMinutes(items[0].raw.x)} min (${formatLocal(items[0].raw.at).slice(11)})` : "",
            label: (item) => `${item.dataset.what}: ${item.raw.y}${item.raw.kind === "discharge" ? " (discharge)" : ""}`,
          },
        },
      },
    },
  });
}

/** Ticks at local midnights, a day or more apart, at most about 8 of them. */
function dayTicks(scale) {
  const span = scale.max - scale.min;
  const step = [1, 2, 7, 14, 28, 56, 91, 182, 364, 728].find((days) => span / (days * DAY) <= 8) || 1456;
  const first = new Date(scale.min);
  first.setHours(0, 0, 0, 0);
  const ticks = [];
  for (let day = new Date(first); day.getTime() <= scale.max; day.setDate(day.getDate() + step)) {
    if (day.getTime() >= scale.min) {
      ticks.push({ value: day.getTime() });
    }
  }
  scale.ticks = ticks;
}

function doseChart(canvas, sessions) {
  const dosed = sessions.filter((s) => s.dose);
  const times = dosed.map((s) => s.start);
  const first = Math.min(...times);
  const last = Math.max(...times);
  const pad = Math.max(DAY, (last - first) * 0.05);
  const withYear = last - first > 300 * DAY || new Date(first).getFullYear() !== new Date().getFullYear();
  return new window.Chart(canvas, {
    type: "bar",
    data: {
      datasets: [{
        label: "Dose (mg)",
        data: dosed.map((s) => ({ x: s.start, y: s.dose.dose_mg, session: s })),
        backgroundColor: dosed.map((s) => s.colour),
        barThickness: 16,
      }],
    },
    options: {
      scales: {
        x: {
          type: "linear",
          min: first - pad,
          max: last + pad,
          // Grid lines at the ticks (a bar chart's default puts them between).
          offset: false,
          grid: { offset: false },
          afterBuildTicks: dayTicks,
          ticks: {
            callback: (value) => new Date(value).toLocaleDateString("en-GB", {
              day: "numeric", month: "short", ...(withYear ? { year: "numeric" } : {}),
            }),
          },
        },
        y: { beginAtZero: true, title: { display: true, text: "Dose (mg)" } },
      },
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            title: (items) => items.length ? items[0].raw.session.label : "",
            label: (item) => `${mg(item.raw.y)} mg ${drugLabel(item.raw.session.drug)} (${formatLocal(item.raw.session.dose.at)})`,
          },
        },
      },
    },
  });
}

// --- tables ----------------------------------------------------------------------------

function sessionCell(session) {
  return h("td", {}, h("span", { class: "session-key", "data-shape": session.shape, "data-colour": (session.number - 1) % COLOURS.length }), ` ${session.number}`);
}

function fill(tableId, rows) {
  const tbody = document.querySelector(`#${tableId} tbody`);
  const columns = document.querySelectorAll(`#${tableId} thead th`).length;
  tbody.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: columns, class: "empty" }, "None recorded."))]));
}

function readingRows(rows, ...names) {
  return rows.map(({ session, reading }) => h(
    "tr",
    { "data-session": session.number },
    sessionCell(session),
    h("td", {}, time(reading.at), reading.type === "discharge" ? " (discharge)" : ""),
    h("td", {}, signedMinutes(reading.minutes)),
    ...names.map((name) => h("td", { class: "number" }, reading.vitals?.[name] ?? "")),
  ));
}

function summaryRows(timeline) {
  return timeline.summary.map((w) => h(
    "tr",
    { "data-days": w.days },
    h("th", { scope: "row" }, `Last ${w.days} days`),
    h("td", { class: "number" }, w.sessions),
    h("td", { class: "number" }, mg(w.dose_mg)),
  ));
}

function doseRows(sessions) {
  return sessions.filter((s) => s.dose).map((s) => h(
    "tr",
    { "data-session": s.number },
    sessionCell(s),
    h("td", {}, time(s.dose.at)),
    h("td", {}, s.clinic),
    h("td", {}, drugLabel(s.drug)),
    h("td", { class: "number" }, mg(s.dose.dose_mg)),
    h("td", { class: "number" }, s.dose.dose_mg_per_kg ?? ""),
    h("td", {}, s.dose.lot || ""),
  ));
}

const VITAL_WORDS = [
  ["systolic", (v) => v.diastolic !== undefined ? `BP ${v.systolic}/${v.diastolic}` : `systolic ${v.systolic}`],
  ["pulse", (v) => `pulse ${v.pulse}`],
  ["moaa_s", (v) => `MOAA/S ${v.moaa_s}`],
  ["spo2", (v) => `SpO2 ${v.spo2}%`],
  ["respiratory_rate", (v) => `respiratory rate ${v.respiratory_rate}`],
  ["cadss_total", (v) => `CADSS ${v.cadss_total}`],
  ["escort", (v) => `escort ${v.escort ? "yes" : "no"}`],
];

function vitalWords(vitals = {}) {
  return VITAL_WORDS.filter(([name]) => vitals[name] !== undefined && vitals[name] !== null).map(([, say]) => say(vitals)).join(", ");
}

function timelineRow(entry, byId) {
  const session = byId.get(entry.session_id);
  const of = session ? ` (session ${session.number})` : "";
  let what = entry.type;
  let details = "";
  switch (entry.type) {
    case "session":
      what = `Session ${session?.number ?? ""} opened`;
      details = [drugLabel(entry.drug), entry.patient_ref !== ref ? `as ${entry.patient_ref}` : "",
        entry.weight_kg ? `${entry.weight_kg} kg` : "", entry.network_ref ? `network ${entry.network_ref}` : ""]
        .filter(Boolean).join(", ");
      break;
    case "dose":
      what = `Dose${of}`;
      details = `${mg(entry.dose_mg)} mg ${drugLabel(entry.drug)}${entry.dose_mg_per_kg ? ` (${entry.dose_mg_per_kg} mg/kg)` : ""}${entry.lot ? `, lot ${entry.lot}` : ""}`;
      break;
    case "observation":
      what = `Observation${of}`;
      details = `${entry.minutes_after_dose !== undefined ? `${signedMinutes(entry.minutes_after_dose)} min: ` : ""}${vitalWords(entry.vitals)}`;
      break;
    case "discharge":
      what = `Discharge${of}`;
      details = vitalWords(entry.vitals);
      break;
    case "report":
      what = `Report${of}`;
      details = h("a", { href: `/reports/${entry.id}` }, `${kindLabel(entry.kind)} report`);
      break;
    case "alert": {
      what = "Alert";
      const text = `${entry.severity} · ${entry.rule} (${entry.status})`;
      details = alertLinks ? h("a", { href: `/alerts/${entry.id}` }, text) : text;
      break;
    }
    default:
      break;
  }
  return h("tr", { "data-type": entry.type }, h("td", {}, time(entry.at)), h("td", {}, entry.clinic), h("td", {}, what), h("td", {}, details));
}

// --- the page --------------------------------------------------------------------------

function render(timeline) {
  const sessions = sessionsOf(timeline);
  const byId = new Map(sessions.map((s) => [s.session_id, s]));
  const clinics = timeline.clinics.join(", ");
  document.getElementById("patient-meta").replaceChildren(
    `${sessions.length} treatment session(s) at ${clinics || "your clinics"}. Shown as of `, time(timeline.as_of),
    sessions.length > CHART_SESSIONS ? `. The charts show the latest ${CHART_SESSIONS} sessions; the tables list every one.` : ".",
  );
  document.getElementById("patient-incomplete").hidden = timeline.complete;
  document.getElementById("summary-as-of").replaceChildren("to ", time(timeline.as_of));

  fill("dose-summary", summaryRows(timeline));
  const bp = readingsWith(sessions, "systolic", "diastolic");
  const pulse = readingsWith(sessions, "pulse");
  const moaas = readingsWith(sessions, "moaa_s");
  fill("table-doses", doseRows(sessions));
  fill("table-bp", readingRows(bp, "systolic", "diastolic"));
  fill("table-pulse", readingRows(pulse, "pulse"));
  fill("table-moaas", readingRows(moaas, "moaa_s"));
  fill("timeline", timeline.entries.map((e) => timelineRow(e, byId)));

  body.hidden = false;
  const Chart = window.Chart;
  if (!Chart) {
    statusLine.textContent = "The charts could not be drawn; the tables list the numbers.";
    return;
  }
  setDefaults(Chart);
  const draw = (id, rows, make) => {
    const box = document.querySelector(`[data-chart="${id}"]`);
    box.hidden = !rows.length;
    if (rows.length) {
      charts.push(make(document.getElementById(`chart-${id}`)));
    }
  };
  draw("doses", sessions.filter((s) => s.dose), (canvas) => doseChart(canvas, sessions));
  draw("bp", bp, (canvas) => vitalChart(canvas, sessions, [
    { name: "systolic", label: "Systolic (mmHg)", dashed: false },
    { name: "diastolic", label: "Diastolic (mmHg)", dashed: true },
  ], { title: { display: true, text: "mmHg" }, suggestedMin: 60, suggestedMax: 160 }));
  draw("pulse", pulse, (canvas) => vitalChart(canvas, sessions, [
    { name: "pulse", label: "Pulse (/min)", dashed: false },
  ], { title: { display: true, text: "beats/min" }, suggestedMin: 50, suggestedMax: 110 }));
  draw("moaas", moaas, (canvas) => vitalChart(canvas, sessions, [
    { name: "moaa_s", label: "MOAA/S", dashed: false },
  ], { title: { display: true, text: "MOAA/S" }, min: 0, max: 5, ticks: { stepSize: 1 } }));
  statusLine.hidden = true;
  document.documentElement.dataset.chartsReady = "yes";
}

printable(charts);

async function load() {
  let result;
  try {
    result = await api("GET", `/api/v1/patients/${encodeURIComponent(ref)}/timeline`, { cache: "no-store" });
  } catch (error) {
    if (!(error instanceof NetworkError)) {
      throw error;
    }
    statusLine.hidden = true;
    errorBox.textContent = "No connection: the patient's history could not be loaded. Try again when the network is back.";
    errorBox.hidden = false;
    return;
  }
  if (!result.ok) {
    statusLine.hidden = true;
    errorBox.textContent = result.status === 404
      ? `No patient ${ref} at your clinics.`
      : problemMessage(result);
    errorBox.hidden = false;
    return;
  }
  render(result.data);
}

if (root) {
  load();
}
