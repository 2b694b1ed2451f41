// The safety-signals dashboard: what is unusual (every event type's points above their
// upper 3-sigma limit in the latest periods, signals first), the p-chart of the chosen
// event type, the funnel plot of one period and the rates, from the analytics API
// (GET /api/v1/analytics/rates, /control-chart, /funnel: each checks the clinic and
// audits the read). The filters are a plain GET form: its query parameters (also those
// of a signal alert's link) are the page's filters. Under each chart a table of the same
// numbers (screen readers, printing). Chart.js (static/vendor/chartjs) is loaded before
// this module as a classic script: it is window.Chart.

import { COLOURS, SHAPES, printable, setDefaults } from "./charting.js";
import { NetworkError, api, h, problemMessage } from "./common.js";

const form = document.getElementById("analytics-filters");
const statusLine = document.getElementById("analytics-status");
const errorBox = document.getElementById("analytics-error");
const body = document.getElementById("analytics-body");

// The latest periods the unusual list looks at, and how many event types it asks about.
const RECENT_PERIODS = 3;
const MAX_EVENT_TYPES = 20;
// A point above its limit: a large cross in a circle, in red, whatever the clinic.
const ABOVE_COLOUR = "#c00000";
const NETWORK_COLOUR = "#6b7785";
const charts = [];

const params = new URLSearchParams(window.location.search);
const FILTERS = ["clinic", "drug", "route", "dose_band", "grain", "start", "end"];

function filterValues() {
  const values = {};
  for (const name of FILTERS) {
    const value = (params.get(name) || "").trim();
    if (value) {
      values[name] = value;
    }
  }
  if (values.grain !== "week") {
    values.grain = "month";
  }
  return values;
}

/** The form shows the filters the page was opened with. */
function fillForm(values) {
  for (const [name, value] of Object.entries(values)) {
    const field = form.elements.namedItem(name);
    if (field && [...(field.options || [{ value }])].some((o) => o.value === value)) {
      field.value = value;
    }
  }
}

function query(values) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(values)) {
    if (value !== undefined && value !== null && value !== "") {
      search.append(name, value);
    }
  }
  return search.toString();
}

const number = (value, digits = 2) => value === null || value === undefined
  ? "" : Number(value).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });

function periodLabel(start, grain) {
  if (grain === "week") {
    return `Week of ${start}`;
  }
  const [year, month] = start.split("-").map(Number);
  return new Date(Date.UTC(year, month - 1, 1)).toLocaleDateString("en-GB", { month: "short", year: "numeric", timeZone: "UTC" });
}

function eventLabel(type) {
  const [prefix, rest] = type.split(/:(.*)/s);
  const word = { kind: "Report", category: "Adverse event", rule: "Alert rule" }[prefix];
  return word ? `${word}: ${rest}` : type;
}

/** The event type for a table: its kind in words, then its id kept on one line. */
function eventText(type) {
  const [prefix, rest] = type.split(/:(.*)/s);
  const word = { kind: "Report", category: "Adverse event", rule: "Alert rule" }[prefix];
  return word ? [`${word}: `, h("span", { class: "event-id" }, rest)] : [type];
}

function status(point, minSessions) {
  if (point.signal) {
    return "Signal: above";
  }
  if (point.above) {
    return `Above (under ${minSessions} sessions)`;
  }
  return "Inside";
}

const POSITIONS = {
  inside: "Inside",
  above_95: "Above 95%",
  above_998: "Above 99.8%",
  below_95: "Below 95%",
  below_998: "Below 99.8%",
};

// --- loading --------------------------------------------------------------------------

class Failed extends Error {}

async function get(url) {
  let result;
  try {
    result = await api("GET", url, { cache: "no-store" });
  } catch (error) {
    if (error instanceof NetworkError) {
      throw new Failed("No connection: the numbers could not be loaded. Try again when the network is back.");
    }
    throw error;
  }
  if (!result.ok) {
    throw new Failed(problemMessage(result));
  }
  return result.data;
}

const chartUrl = (values, eventType) => `/api/v1/analytics/control-chart?${query({ ...values, event_type: eventType })}`;

// --- colours and shapes per clinic ------------------------------------------------------

function clinicKeys(codes) {
  const keys = new Map();
  [...new Set(codes)].sort().forEach((code, index) => {
    keys.set(code, { colour: COLOURS[index % COLOURS.length], shape: SHAPES[index % SHAPES.length], index });
  });
  return keys;
}

function clinicCell(code, keys) {
  const key = keys.get(code);
  return h("td", {}, key ? h("span", { class: "session-key", "data-shape": key.shape, "data-colour": key.index % COLOURS.length, "aria-hidden": "true" }) : "", ` ${code}`);
}

// --- charts ------------------------------------------------------------------------------

function pChart(canvas, chart, keys, focus) {
  const periods = chart.centre.map((c) => c.period_start);
  const labels = periods.map((p) => periodLabel(p, chart.grain));
  const index = new Map(periods.map((p, i) => [p, i]));
  const datasets = [{
    label: "Network",
    data: chart.centre.map((c) => c.centre_per_100),
    borderColor: NETWORK_COLOUR,
    backgroundColor: NETWORK_COLOUR,
    borderWidth: 4,
    // A bar across each period too, so a single period shows its centre.
    pointStyle: "line",
    pointRadius: 16,
    pointBorderWidth: 4,
    pointHoverRadius: 16,
    order: 3,
  }];
  const byClinic = new Map();
  for (const point of chart.points) {
    if (!byClinic.has(point.clinic)) {
      byClinic.set(point.clinic, new Array(periods.length).fill(null));
    }
    byClinic.get(point.clinic)[index.get(point.period_start)] = point;
  }
  for (const [clinic, points] of [...byClinic].sort()) {
    const key = keys.get(clinic);
    datasets.push({
      label: clinic,
      data: points.map((p) => (p ? p.rate_per_100 : null)),
      points,
      borderColor: key.colour,
      backgroundColor: key.colour,
      pointBackgroundColor: points.map((p) => (p?.above ? "#ffffff" : key.colour)),
      pointBorderColor: points.map((p) => (p?.above ? ABOVE_COLOUR : key.colour)),
      pointStyle: points.map((p) => (p?.above ? "crossRot" : key.shape)),
      pointRadius: points.map((p) => (p?.above ? 11 : 5)),
      pointBorderWidth: points.map((p) => (p?.above ? 4 : 2)),
      pointHoverRadius: 9,
      borderWidth: 2,
      spanGaps: false,
      order: 1,
    });
  }
  // The upper limit of the chosen clinic, or of each clinic when they are few.
  const limited = focus ? [focus] : [...byClinic.keys()].sort().slice(0, 3);
  for (const clinic of limited) {
    const points = byClinic.get(clinic);
    if (!points) {
      continue;
    }
    datasets.push({
      label: `${clinic} upper limit`,
      data: points.map((p) => (p ? p.ucl_per_100 : null)),
      borderColor: keys.get(clinic).colour,
      borderDash: [6, 4],
      borderWidth: 1.5,
      pointStyle: "line",
      pointRadius: 16,
      pointBorderWidth: 2,
      pointHoverRadius: 16,
      stepped: "middle",
      order: 2,
    });
  }
  return new window.Chart(canvas, {
    type: "line",
    data: { labels, datasets },
    options: {
      scales: {
        x: { offset: true, title: { display: true, text: chart.grain === "week" ? "ISO week (UTC)" : "Month (UTC)" } },
        y: { beginAtZero: true, title: { display: true, text: "Per 100 sessions" } },
      },
      plugins: {
        tooltip: {
          callbacks: {
            label: (item) => {
              const point = item.dataset.points?.[item.dataIndex];
              if (!point) {
                return `${item.dataset.label}: ${number(item.raw)}`;
              }
              return `${point.clinic}: ${number(point.rate_per_100)} (${point.events}/${point.sessions}), limit ${number(point.ucl_per_100)}${point.above ? ", ABOVE" : ""}`;
            },
          },
        },
      },
    },
  });
}

function funnelChart(canvas, funnel, keys) {
  const curve = funnel.curve;
  const line = (label, field, dash, width) => ({
    type: "line",
    label,
    data: curve.map((c) => ({ x: Math.max(c.sessions, 1), y: c[field] })),
    borderColor: NETWORK_COLOUR,
    borderDash: dash,
    borderWidth: width,
    pointStyle: "line",
    pointRadius: 0,
    showLine: true,
    order: 2,
  });
  const last = curve.length ? Math.max(...curve.map((c) => c.sessions), 1) : 1;
  const datasets = [
    { ...line("Network", "lower95_per_100", [], 3), data: [{ x: 1, y: funnel.centre_per_100 }, { x: last, y: funnel.centre_per_100 }] },
    line("95% limits", "upper95_per_100", [6, 4], 1.5),
    { ...line("95% lower", "lower95_per_100", [6, 4], 1.5), legend: false },
    line("99.8% limits", "upper998_per_100", [], 1.5),
    { ...line("99.8% lower", "lower998_per_100", [], 1.5), legend: false },
  ];
  for (const clinic of funnel.clinics) {
    const key = keys.get(clinic.clinic);
    const above = clinic.position.startsWith("above");
    datasets.push({
      type: "scatter",
      label: clinic.clinic,
      data: [{ x: clinic.sessions, y: clinic.rate_per_100, clinic }],
      borderColor: above ? ABOVE_COLOUR : key.colour,
      backgroundColor: above ? "#ffffff" : key.colour,
      pointStyle: above ? "crossRot" : key.shape,
      pointRadius: above ? 11 : 7,
      pointBorderWidth: above ? 4 : 2,
      order: 1,
    });
  }
  return new window.Chart(canvas, {
    type: "scatter",
    data: { datasets },
    options: {
      scales: {
        x: {
          type: "logarithmic",
          min: 1,
          max: Math.ceil(last * 1.25),
          title: { display: true, text: "Sessions in the period (log scale)" },
          // Ticks at 1, 2, 5, 10, 20, 50...: the others crowd.
          ticks: { callback: (value) => ([1, 2, 5].includes(Number(String(value)[0])) && /^\d0*$/.test(String(value)) ? value : "") },
        },
        y: { beginAtZero: true, title: { display: true, text: "Per 100 sessions" } },
      },
      plugins: {
        legend: { labels: { filter: (item, data) => data.datasets[item.datasetIndex].legend !== false } },
        tooltip: {
          callbacks: {
            label: (item) => {
              const clinic = item.raw.clinic;
              return clinic
                ? `${clinic.clinic}: ${number(clinic.rate_per_100)} (${clinic.events}/${clinic.sessions}), ${POSITIONS[clinic.position] || clinic.position}`
                : `${item.dataset.label}: ${number(item.raw.y)} at ${item.raw.x} sessions`;
            },
          },
        },
      },
    },
  });
}

// --- tables ----------------------------------------------------------------------------

function fill(tableId, rows, empty = "None.") {
  const tbody = document.querySelector(`#${tableId} tbody`);
  const columns = document.querySelectorAll(`#${tableId} thead th`).length;
  tbody.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: columns, class: "empty" }, empty))]));
}

const num = (value, digits) => h("td", { class: "number" }, digits === undefined ? String(value) : number(value, digits));

function statusCell(point, minSessions) {
  return h("td", { class: point.above ? "above" : "" }, point.above ? h("strong", {}, status(point, minSessions)) : status(point, minSessions));
}

function unusualRows(unusual, values, keys) {
  return unusual.map(({ point, chart }) => {
    const link = `/analytics?${query({ ...values, clinic: point.clinic, event_type: chart.event_type })}#p-chart`;
    return h(
      "tr",
      { "data-clinic": point.clinic, "data-signal": point.signal ? "yes" : "no" },
      h("td", {}, periodLabel(point.period_start, chart.grain)),
      clinicCell(point.clinic, keys),
      h("td", {}, h("a", { href: link }, ...eventText(chart.event_type))),
      num(point.sessions),
      num(point.events),
      num(point.rate_per_100, 2),
      num(point.ucl_per_100, 2),
      statusCell(point, chart.min_sessions),
    );
  });
}

function pChartRows(chart, keys) {
  return [...chart.points]
    .sort((a, b) => a.period_start.localeCompare(b.period_start) || a.clinic.localeCompare(b.clinic))
    .map((p) => h(
      "tr",
      { "data-clinic": p.clinic, "data-period": p.period_start, "data-above": p.above ? "yes" : "no" },
      h("td", {}, periodLabel(p.period_start, chart.grain)),
      clinicCell(p.clinic, keys),
      num(p.sessions),
      num(p.events),
      num(p.rate_per_100, 2),
      num(p.centre_per_100, 2),
      num(p.lcl_per_100, 2),
      num(p.ucl_per_100, 2),
      statusCell(p, chart.min_sessions),
    ));
}

function funnelRows(funnel, keys) {
  return funnel.clinics.map((c) => h(
    "tr",
    { "data-clinic": c.clinic, "data-position": c.position },
    clinicCell(c.clinic, keys),
    num(c.sessions),
    num(c.events),
    num(c.rate_per_100, 2),
    h("td", { class: "number" }, `${number(c.lower95_per_100)} to ${number(c.upper95_per_100)}`),
    h("td", { class: "number" }, `${number(c.lower998_per_100)} to ${number(c.upper998_per_100)}`),
    h("td", {}, c.position.startsWith("above") ? h("strong", {}, POSITIONS[c.position]) : POSITIONS[c.position] || c.position),
  ));
}

function rateRows(rows, grain, keys) {
  return rows.map((r) => h(
    "tr",
    { "data-clinic": r.clinic, "data-period": r.period_start },
    h("td", {}, periodLabel(r.period_start, grain)),
    clinicCell(r.clinic, keys),
    num(r.sessions),
    num(r.sessions_with_event),
    num(r.rate_per_100, 2),
    h("td", { class: "number" }, r.ci95_low_per_100 === null ? "" : `${number(r.ci95_low_per_100)} to ${number(r.ci95_high_per_100)}`),
    num(r.unlinked_reports),
  ));
}

// --- the page --------------------------------------------------------------------------

/** What the filters are, in words (the form is not printed). */
function shownText(values, chart) {
  const chosen = (name, every) => {
    const field = form.elements.namedItem(name);
    return values[name] ? field?.selectedOptions?.[0]?.textContent || values[name] : every;
  };
  const parts = [
    chosen("clinic", "all your clinics"),
    chosen("drug", "every drug"),
    chosen("route", "every route"),
    chosen("dose_band", "every dose"),
  ];
  const grain = values.grain === "week" ? "ISO weeks" : "months";
  return `Shown: ${parts.join(", ")}; ${grain} from ${chart.start} to before ${chart.end} (UTC).`;
}

/** The event types the rates name, the most frequent first. */
function eventTypes(rates) {
  const events = new Map();
  for (const row of rates.rows) {
    events.set(row.event_type, (events.get(row.event_type) || 0) + row.sessions_with_event);
  }
  return [...events].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([type]) => type);
}

function fillSelect(select, options, chosen) {
  const first = select.options[0];
  select.replaceChildren(first, ...options.map(([value, label]) => h("option", { value }, label)));
  select.value = options.some(([value]) => value === chosen) ? chosen : "";
}

/** Points above their limit in the latest periods, signals first, then the latest, then
 * the furthest above. */
function unusualPoints(chartsByType) {
  const found = [];
  for (const chart of chartsByType) {
    const recent = new Set(chart.centre.map((c) => c.period_start).slice(-RECENT_PERIODS));
    for (const point of chart.points) {
      if (point.above && recent.has(point.period_start)) {
        found.push({ point, chart });
      }
    }
  }
  return found.sort((a, b) => (b.point.signal - a.point.signal)
    || b.point.period_start.localeCompare(a.point.period_start)
    || (b.point.rate_per_100 - b.point.ucl_per_100) - (a.point.rate_per_100 - a.point.ucl_per_100));
}

async function load() {
  const values = filterValues();
  fillForm(values);
  const rates = await get(`/api/v1/analytics/rates?${query({ ...values, group: "clinic" })}`);
  const types = eventTypes(rates);
  const asked = (params.get("event_type") || "").trim();
  if (asked && !types.includes(asked)) {
    types.push(asked);
  }
  const eventType = asked || types[0] || "";
  const eventSelect = form.elements.namedItem("event_type");
  fillSelect(eventSelect, types.map((t) => [t, eventLabel(t)]), eventType);
  document.getElementById("rates-csv").href = `/api/v1/analytics/rates?${query({ ...values, group: "clinic", event_type: eventType, format: "csv" })}`;
  if (!eventType) {
    statusLine.textContent = "No treatment sessions at your clinics in this range: nothing to chart.";
    return;
  }

  statusLine.textContent = "Loading the charts…";
  const unusualTypes = types.slice(0, MAX_EVENT_TYPES);
  if (!unusualTypes.includes(eventType)) {
    unusualTypes.push(eventType);
  }
  const chartsByType = await Promise.all(unusualTypes.map((type) => get(chartUrl(values, type))));
  const chart = chartsByType[unusualTypes.indexOf(eventType)];

  const periods = chart.centre.map((c) => c.period_start);
  const periodSelect = form.elements.namedItem("period_start");
  const askedPeriod = (params.get("period_start") || "").trim();
  fillSelect(periodSelect, [...periods].reverse().map((p) => [p, periodLabel(p, chart.grain)]), askedPeriod);
  const funnel = await get(`/api/v1/analytics/funnel?${query({
    event_type: eventType, grain: values.grain, clinic: values.clinic, period_start: periodSelect.value,
    drug: values.drug, route: values.route, dose_band: values.dose_band,
  })}`);

  const codes = [...chart.points.map((p) => p.clinic), ...funnel.clinics.map((c) => c.clinic), ...rates.rows.map((r) => r.clinic)];
  const keys = clinicKeys(codes.filter(Boolean));
  const unusual = unusualPoints(chartsByType);
  const signals = unusual.filter((u) => u.point.signal).length;
  fill("table-unusual", unusualRows(unusual, values, keys), `Nothing above its upper limit in the last ${RECENT_PERIODS} ${values.grain === "week" ? "weeks" : "months"}.`);
  document.getElementById("unusual-heading").textContent = unusual.length
    ? `What is unusual: ${unusual.length} above the limit, ${signals} signal(s)`
    : "What is unusual: nothing";
  document.getElementById("pchart-event").textContent = eventLabel(eventType);
  document.getElementById("funnel-period").textContent = `${eventLabel(eventType)}, ${periodLabel(funnel.period_start, funnel.grain)}`;
  document.getElementById("rates-event").textContent = eventLabel(eventType);
  document.getElementById("analytics-shown").textContent = shownText(values, chart);
  fill("table-pchart", pChartRows(chart, keys), "No sessions in this range.");
  fill("table-funnel", funnelRows(funnel, keys), "No sessions in this period.");
  fill("table-rates", rateRows(rates.rows.filter((r) => r.event_type === eventType), values.grain, keys), "No sessions in this range.");

  body.hidden = false;
  const Chart = window.Chart;
  if (!Chart) {
    statusLine.textContent = "The charts could not be drawn; the tables list the numbers.";
    return;
  }
  setDefaults(Chart);
  const draw = (id, shown, make) => {
    const box = document.querySelector(`[data-chart="${id}"]`);
    box.hidden = !shown;
    if (shown) {
      charts.push(make(document.getElementById(`chart-${id}`)));
    }
  };
  draw("pchart", chart.points.length > 0, (canvas) => pChart(canvas, chart, keys, values.clinic));
  draw("funnel", funnel.clinics.length > 0, (canvas) => funnelChart(canvas, funnel, keys));
  statusLine.hidden = true;
  document.documentElement.dataset.chartsReady = "yes";
  if (window.location.hash) {
    document.querySelector(window.location.hash)?.scrollIntoView();
  }
}

printable(charts);

if (form) {
  load().catch((error) => {
    if (!(error instanceof Failed)) {
      throw error;
    }
    statusLine.hidden = true;
    errorBox.textContent = error.message;
    errorBox.hidden = false;
  });
}
