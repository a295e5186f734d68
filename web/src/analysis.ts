// A stopped run's analysis: pace, elevation and heart rate over distance (Chart.js, from the trail's
// points), the splits per kilometre or per mile, and the best efforts with the runner's records.
import {
  Chart,
  Decimation,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from "chart.js";
import L from "leaflet";
import type { BestEffort, PersonalRecord, Split, TrackPoint } from "./api";
import { clock, seconds } from "./format";

Chart.register(LineController, LineElement, PointElement, LinearScale, Tooltip, Legend, Decimation);

const MILE_M = 1609.344;
// Pace is the time over the last stretch of at least this many metres (one fix to the next is noise).
const PACE_WINDOW_M = 100;
// Slower than this (a walk, a stop at a crossing) is left out of the pace line rather than squashing it.
const SLOWEST_PACE_S_PER_KM = 20 * 60;

const EFFORT_NAMES: Record<string, string> = {
  "400m": "400 m",
  "1k": "1 km",
  "1mile": "1 mile",
  "5k": "5 km",
  "10k": "10 km",
  half_marathon: "Half marathon",
  marathon: "Marathon",
};

/** "1k" as a person reads it: "1 km". */
export function effortName(name: string): string {
  return EFFORT_NAMES[name] ?? name;
}

/** Distance between two fixes, metres: Leaflet's, as the map and the live page measure it. */
function metresBetween(lat1: number, lon1: number, lat2: number, lon2: number): number {
  return L.latLng(lat1, lon1).distanceTo(L.latLng(lat2, lon2));
}

export interface Series {
  /** Metres from the start, one per point with a position. */
  distanceM: number[];
  /** Seconds per kilometre over the last PACE_WINDOW_M, or null where not known. */
  paceSPerKm: (number | null)[];
  elevationM: (number | null)[];
  heartRateBpm: (number | null)[];
}

/** The trail's points (oldest first) as series over distance; points without a position are left out. */
export function seriesOf(points: TrackPoint[]): Series {
  const located = points.filter((p) => p.latitude !== undefined && p.longitude !== undefined);
  const distanceM: number[] = [];
  const times = located.map((p) => (p.time ? Date.parse(p.time) / 1000 : Number.NaN));
  located.forEach((p, i) => {
    const before = located[i - 1];
    const step = before
      ? metresBetween(before.latitude ?? 0, before.longitude ?? 0, p.latitude ?? 0, p.longitude ?? 0)
      : 0;
    distanceM.push((distanceM[i - 1] ?? 0) + step);
  });
  const paceSPerKm: (number | null)[] = [];
  let from = 0;
  for (let i = 0; i < located.length; i++) {
    while (from + 1 < i && distanceM[i] - distanceM[from + 1] >= PACE_WINDOW_M) from++;
    const metres = distanceM[i] - distanceM[from];
    const secs = times[i] - times[from];
    const pace = metres >= PACE_WINDOW_M / 2 && secs > 0 ? (secs / metres) * 1000 : Number.NaN;
    paceSPerKm.push(Number.isFinite(pace) && pace <= SLOWEST_PACE_S_PER_KM ? Math.round(pace * 10) / 10 : null);
  }
  return {
    distanceM,
    paceSPerKm,
    elevationM: located.map((p) => p.altitudeM ?? null),
    heartRateBpm: located.map((p) => p.heartRateBpm ?? null),
  };
}

let chart: Chart<"line", { x: number; y: number | null }[]> | null = null;

/** Pace, elevation and heart rate (each when recorded) over distance in km, one point per fix. */
export function drawRunChart(canvas: HTMLCanvasElement, points: TrackPoint[]): void {
  const s = seriesOf(points);
  const km = s.distanceM.map((m) => Math.round(m) / 1000);
  const line = (values: (number | null)[]) => values.map((y, i) => ({ x: km[i], y }));
  const candidates = [
    { key: "pace", label: "Pace (per km)", values: s.paceSPerKm, axis: "pace", color: "#0969da" },
    { key: "elevation", label: "Elevation (m)", values: s.elevationM, axis: "elevation", color: "#1a7f37" },
    { key: "heart-rate", label: "Heart rate (bpm)", values: s.heartRateBpm, axis: "heartRate", color: "#cf222e" },
  ].filter((c) => c.values.some((v) => v !== null));
  const shown = new Set(candidates.map((c) => c.axis));
  chart?.destroy();
  chart = new Chart(canvas, {
    type: "line",
    data: {
      datasets: candidates.map((c) => ({
        label: c.label,
        data: line(c.values),
        yAxisID: c.axis,
        borderColor: c.color,
        backgroundColor: c.color,
        borderWidth: 1.5,
        pointRadius: 0,
        spanGaps: false,
      })),
    },
    options: {
      animation: false,
      parsing: false,
      normalized: true,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      plugins: {
        decimation: { enabled: true, algorithm: "lttb", samples: 800 },
        tooltip: {
          callbacks: {
            label: (item) =>
              item.dataset.yAxisID === "pace"
                ? `Pace ${clock(item.parsed.y ?? 0)} /km`
                : `${item.dataset.label}: ${Math.round(item.parsed.y ?? 0)}`,
          },
        },
      },
      scales: {
        x: { type: "linear", title: { display: true, text: "km" } },
        pace: {
          display: shown.has("pace"),
          position: "left",
          reverse: true,
          title: { display: true, text: "pace /km" },
          ticks: { callback: (value) => clock(Number(value)) },
        },
        elevation: {
          display: shown.has("elevation"),
          position: "right",
          title: { display: true, text: "m" },
          grid: { drawOnChartArea: false },
        },
        heartRate: {
          display: shown.has("heartRate"),
          position: "right",
          title: { display: true, text: "bpm" },
          grid: { drawOnChartArea: false },
        },
      },
    },
  });
  // What is drawn, for a reader of the page's DOM (and its tests).
  canvas.setAttribute("data-points", String(km.length));
  canvas.setAttribute("data-datasets", candidates.map((c) => c.key).join(","));
  canvas.setAttribute("data-distance-km", km.length ? km[km.length - 1].toFixed(3) : "0");
  canvas.setAttribute(
    "data-values",
    JSON.stringify(Object.fromEntries(candidates.map((c) => [c.key, c.values.filter((v) => v !== null).length]))),
  );
}

export type SplitUnit = "km" | "mile";

function cell(text: string): HTMLTableCellElement {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

/** The splits as table rows: each a kilometre or a mile (the last one shorter), pace in that unit. */
export function splitRows(splits: Split[], unit: SplitUnit): HTMLTableRowElement[] {
  const unitM = unit === "km" ? 1000 : MILE_M;
  return splits.map((split) => {
    const row = document.createElement("tr");
    row.dataset.testid = "split";
    row.dataset.index = String(split.index);
    row.dataset.distanceM = String(split.distanceM ?? 0);
    row.dataset.elapsedS = String(seconds(split.elapsedTime));
    row.dataset.paceSPerKm = String(split.paceSPerKm ?? 0);
    const perUnit = ((split.paceSPerKm ?? 0) * unitM) / 1000;
    const hr = split.avgHeartRateBpm;
    row.append(
      cell(String(split.index)),
      cell(`${((split.distanceM ?? 0) / unitM).toFixed(2)} ${unit === "km" ? "km" : "mi"}`),
      cell(clock(seconds(split.elapsedTime))),
      cell(perUnit ? `${clock(perUnit)} /${unit === "km" ? "km" : "mi"}` : "-"),
      cell(`${Math.round(split.elevationGainM ?? 0)} m`),
      cell(hr === undefined ? "-" : `${Math.round(hr)} bpm`),
    );
    return row;
  });
}

/** The best efforts, a "PR" mark on each that is the runner's current record (set in this run). */
export function effortItems(runId: string, efforts: BestEffort[], records: PersonalRecord[]): HTMLLIElement[] {
  const current = new Set(records.filter((r) => r.best?.runId === runId).map((r) => r.name));
  return efforts.map((effort) => {
    const li = document.createElement("li");
    li.dataset.testid = "best-effort";
    li.dataset.name = effort.name;
    li.dataset.elapsedS = String(seconds(effort.elapsedTime));
    const time = seconds(effort.elapsedTime);
    const distance = effort.distanceM ?? 0;
    const perKm = distance ? (time / distance) * 1000 : 0;
    const name = document.createElement("strong");
    name.textContent = effortName(effort.name);
    const facts = document.createElement("span");
    facts.textContent = ` ${clock(time)}${perKm ? ` (${clock(perKm)} /km)` : ""}, from ${((effort.startM ?? 0) / 1000).toFixed(2)} km`;
    li.append(name, facts);
    if (current.has(effort.name)) {
      const mark = document.createElement("span");
      mark.className = "pr";
      mark.dataset.testid = "pr-mark";
      mark.title = "Your personal record";
      mark.textContent = "PR";
      li.append(" ", mark);
    }
    return li;
  });
}
