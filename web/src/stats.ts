// Weekly distance as a bar chart (Chart.js, only the parts a bar chart needs).
import { BarController, BarElement, CategoryScale, Chart, LinearScale, Tooltip } from "chart.js";
import type { UserStats } from "./api";

Chart.register(BarController, BarElement, CategoryScale, LinearScale, Tooltip);

let chart: Chart<"bar"> | null = null;

export function drawStats(canvas: HTMLCanvasElement, stats: UserStats): void {
  const weeks = stats.weeks ?? [];
  const labels = weeks.map((w) => w.weekStart);
  const km = weeks.map((w) => Math.round((w.distanceM ?? 0) / 10) / 100);
  chart?.destroy();
  chart = new Chart(canvas, {
    type: "bar",
    data: { labels, datasets: [{ label: "km", data: km, backgroundColor: "#0969da" }] },
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: { y: { beginAtZero: true, title: { display: true, text: "km" } } },
    },
  });
  // What is drawn, for a reader of the page's DOM (and its tests).
  canvas.setAttribute("data-weeks", String(weeks.length));
  canvas.setAttribute("data-week-starts", labels.join(","));
  canvas.setAttribute("data-km", km.join(","));
}
