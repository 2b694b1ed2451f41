// What the pages that draw charts share (the patient page, the safety-signals dashboard):
// the series' colours and point shapes, Chart.js's defaults, and charts that print at a
// size fitting the paper. Chart.js (static/vendor/chartjs) is loaded before the page's
// module as a classic script: it is window.Chart.

// Series told apart by colour (dark enough for 3:1 on white; app.css gives the tables'
// keys the same, by index), by the point's shape and, in the tables, by name or number.
// The crosses come last: the dashboard marks a point above its limit with one.
export const COLOURS = ["#0072b2", "#c44e00", "#00775a", "#9c3d87", "#7a5500", "#2f2f2f", "#5b4bb7", "#b0204a"];
export const SHAPES = ["circle", "triangle", "rect", "rectRot", "star", "rectRounded", "crossRot", "cross"];

/** The look every chart of the service shares: the page's font, no animation. */
export function setDefaults(Chart) {
  const style = getComputedStyle(document.body);
  Chart.defaults.font.family = style.fontFamily;
  Chart.defaults.font.size = 14;
  Chart.defaults.color = "#1b1f24";
  Chart.defaults.borderColor = "#d5dbe1";
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.plugins.legend.position = "bottom";
  Chart.defaults.plugins.legend.labels.usePointStyle = true;
  Chart.defaults.plugins.legend.labels.padding = 14;
}

// Printed, a chart is drawn at a size that fits A4 and Letter paper within the print
// style sheet's margins (its text then prints at its own size); after, at the page's.
const PRINT_SIZE = [680, 280];

/** Keep ``charts`` (the page's list, filled as it draws) printable. */
export function printable(charts) {
  window.addEventListener("beforeprint", () => {
    for (const chart of charts) {
      chart.resize(...PRINT_SIZE);
    }
  });
  window.addEventListener("afterprint", () => {
    for (const chart of charts) {
      chart.resize();
    }
  });
}
