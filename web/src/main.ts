// The RunTrack dashboard: sign-in by token, the caller's runs, a run's overview and trail (redrawn
// while it is being recorded), weekly stats, sharing, privacy zones and deletion.
//
// The URL fragment carries state: `#token=<jwt>` signs in once (the token moves to sessionStorage
// and leaves the URL), `#run=<run_id>` opens a run; both may come together.
import {
  ApiError,
  call,
  type ListRunsResponse,
  type PrivacyZone,
  type PrivacyZones,
  type Run,
  runPath,
  signIn,
  signOut,
  type Track,
  type TrackCursor,
  type TrackPoint,
  token,
  type UserStats,
} from "./api";
import { clock, km, pace, seconds, timeZone, when } from "./format";
import { drawStats } from "./stats";
import { TrailMap } from "./trail";
import "./style.css";

const LIVE_POLL_MS = 2000;
const TRACK_PAGE = 10000;

const $ = <T extends HTMLElement>(id: string): T => {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing from the page`);
  return element as T;
};

let me = "";
let nextRunsPage = "";
let trail: TrailMap | null = null;
let livePoll: number | undefined;

function fragment(): URLSearchParams {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

/** Takes `token` out of the fragment into sessionStorage, keeping the rest (`run`). */
function takeTokenFromUrl(): void {
  const params = fragment();
  const value = params.get("token");
  if (!value) return;
  signIn(value);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
}

function show(view: "sign-in" | "runs-view" | "run-view"): void {
  for (const id of ["sign-in", "runs-view", "run-view"]) $(id).hidden = id !== view;
}

function showError(message: string): void {
  const banner = $("error");
  banner.textContent = message;
  banner.hidden = !message;
}

function stopLive(): void {
  if (livePoll !== undefined) window.clearInterval(livePoll);
  livePoll = undefined;
}

function showSignIn(reason = ""): void {
  stopLive();
  me = "";
  $("who").textContent = "";
  $("sign-out").hidden = true;
  $("sign-in-reason").textContent = reason;
  show("sign-in");
}

/** Any failure: a 401 sends the runner back to sign-in; anything else is shown in words. */
function failed(err: unknown): void {
  if (err instanceof ApiError && err.httpStatus === 401) {
    signOut();
    showSignIn(`Please sign in again: ${err.message}`);
    return;
  }
  showError(err instanceof Error ? err.message : String(err));
}

async function whoAmI(): Promise<PrivacyZones> {
  const zones = await call<PrivacyZones>("GET", "/v1/users/me/privacyZones");
  me = zones.userId;
  $("who").textContent = `Signed in as ${me}`;
  $("sign-out").hidden = false;
  return zones;
}

// ---- the list -------------------------------------------------------------------------------

function runItem(run: Run): HTMLLIElement {
  const o = run.overview ?? {};
  const li = document.createElement("li");
  li.dataset.runId = run.runId;
  const link = document.createElement("a");
  link.href = `#run=${encodeURIComponent(run.runId)}`;
  link.textContent = when(o.startTime);
  const facts = document.createElement("span");
  facts.textContent = ` ${km(o.distanceM)} · ${clock(seconds(o.movingTime))} · ${pace(run.avgPaceSPerKm)}`;
  const badge = document.createElement("span");
  badge.className = `badge ${run.visibility === "PUBLIC" ? "public" : "private"}`;
  badge.textContent = run.visibility === "PUBLIC" ? "public" : "private";
  li.append(link, facts, " ", badge);
  return li;
}

async function loadRuns(pageToken: string): Promise<void> {
  const query = new URLSearchParams({ pageSize: "20" });
  if (pageToken) query.set("pageToken", pageToken);
  const page = await call<ListRunsResponse>("GET", `/v1/users/me/runs?${query}`);
  const list = $("runs");
  if (!pageToken) list.replaceChildren();
  for (const run of page.runs ?? []) list.append(runItem(run));
  nextRunsPage = page.nextPageToken ?? "";
  if (!pageToken) performance.mark("runtrack:first-list");
  $("more-runs").hidden = !nextRunsPage;
  $("no-runs").hidden = list.children.length > 0;
}

async function loadStats(): Promise<void> {
  const query = new URLSearchParams({ timeZone: timeZone(), weeks: "12" });
  const stats = await call<UserStats>("GET", `/v1/users/me/stats?${query}`);
  drawStats($<HTMLCanvasElement>("stats-chart"), stats);
  $("stats-total").textContent =
    `All time: ${stats.totalRuns ?? 0} runs, ${km(stats.totalDistanceM)} (weeks start on Monday, ${timeZone()})`;
}

// ---- privacy zones --------------------------------------------------------------------------

function zoneRow(zone: PrivacyZone): HTMLTableRowElement {
  const row = document.createElement("tr");
  row.className = "zone";
  const cells = (
    [
      ["latitude", zone.latitude, "0.0001"],
      ["longitude", zone.longitude, "0.0001"],
      ["radiusM", zone.radiusM, "10"],
    ] as const
  ).map(([name, value, step]) => {
    const input = document.createElement("input");
    input.type = "number";
    input.name = name;
    input.step = step;
    input.required = true;
    input.value = String(value);
    const cell = document.createElement("td");
    cell.append(input);
    return cell;
  });
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.addEventListener("click", () => row.remove());
  const last = document.createElement("td");
  last.append(remove);
  row.append(...cells, last);
  return row;
}

function showZones(zones: PrivacyZone[]): void {
  $("zones").replaceChildren(...zones.map(zoneRow));
}

async function saveZones(): Promise<void> {
  const zones = [...$("zones").querySelectorAll("tr")].map((row) => {
    const value = (name: string) => Number((row.querySelector(`input[name=${name}]`) as HTMLInputElement).value);
    return { latitude: value("latitude"), longitude: value("longitude"), radiusM: value("radiusM") };
  });
  const saved = await call<PrivacyZones>("PUT", "/v1/users/me/privacyZones", { zones });
  showZones(saved.zones ?? []);
  $("zones-status").textContent = `Saved ${saved.zones?.length ?? 0} zone(s).`;
}

// ---- one run --------------------------------------------------------------------------------

async function wholeTrack(runId: string): Promise<TrackPoint[]> {
  const points: TrackPoint[] = [];
  let pageToken = "";
  do {
    const query = new URLSearchParams({ pageSize: String(TRACK_PAGE) });
    if (pageToken) query.set("pageToken", pageToken);
    const page = await call<Track>("GET", `${runPath(runId)}/track?${query}`);
    points.push(...(page.points ?? []));
    pageToken = page.nextPageToken ?? "";
  } while (pageToken);
  return points;
}

function showOverview(run: Run): void {
  const o = run.overview ?? {};
  const facts: [string, string][] = [
    ["Started", when(o.startTime)],
    ["Distance", km(o.distanceM)],
    ["Moving time", clock(seconds(o.movingTime))],
    ["Elapsed time", clock(seconds(run.elapsedTime))],
    ["Pace", pace(run.avgPaceSPerKm)],
    ["Elevation gain", `${Math.round(o.elevationGainM ?? 0)} m`],
    ["Points recorded", String(o.pointCount ?? 0)],
  ];
  if (o.avgHeartRateBpm) facts.push(["Average heart rate", `${Math.round(o.avgHeartRateBpm)} bpm`]);
  $("run-overview").replaceChildren(
    ...facts.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
}

async function showRun(runId: string): Promise<void> {
  stopLive();
  show("run-view");
  $("run-title").textContent = `Run ${runId}`;
  $("run-view").dataset.runId = runId;
  let run: Run | null = null;
  try {
    run = await call<Run>("GET", runPath(runId));
  } catch (err) {
    // Not stopped yet: no overview, but the owner's trail may be arriving.
    if (!(err instanceof ApiError && err.httpStatus === 404)) throw err;
  }
  const owner = run ? run.userId === me : true;
  $("run-state").textContent = run ? `Stopped ${when(run.stoppedAt)} · by ${run.userId}` : "Being recorded…";
  $("run-overview").replaceChildren();
  if (run) showOverview(run);
  $("run-owner-actions").hidden = !(run && owner);
  $<HTMLInputElement>("public-switch").checked = run?.visibility === "PUBLIC";

  trail?.remove();
  trail = new TrailMap($("map"));
  let points = await wholeTrack(runId);
  trail.draw(points);
  if (owner) {
    // Points may still arrive (a live run, or the trail finishing its sync after STOP RUN):
    // the cursor is cheap; the trail is read again only when it grew.
    livePoll = window.setInterval(async () => {
      if ($("run-view").dataset.runId !== runId) return stopLive();
      try {
        const cursor = await call<TrackCursor>("GET", `${runPath(runId)}/cursor`);
        if ((cursor.pointCount ?? 0) !== points.length) {
          points = await wholeTrack(runId);
          trail?.draw(points);
          if (!run) $("run-state").textContent = `Being recorded… ${points.length} points so far`;
        }
      } catch (err) {
        stopLive();
        failed(err);
      }
    }, LIVE_POLL_MS);
  }
}

async function setVisibility(runId: string, isPublic: boolean): Promise<void> {
  const run = await call<Run>("PATCH", `${runPath(runId)}?updateMask=visibility`, {
    visibility: isPublic ? "PUBLIC" : "PRIVATE",
  });
  $<HTMLInputElement>("public-switch").checked = run.visibility === "PUBLIC";
}

async function deleteRun(runId: string): Promise<void> {
  if (!window.confirm("Delete this run and its whole trail for good? This cannot be undone.")) return;
  await call<unknown>("DELETE", runPath(runId));
  location.hash = "";
}

// ---- routing --------------------------------------------------------------------------------

async function route(): Promise<void> {
  showError("");
  takeTokenFromUrl();
  if (!token()) return showSignIn();
  try {
    const zones = me ? null : await whoAmI();
    if (zones) showZones(zones.zones ?? []);
    const runId = fragment().get("run");
    if (runId) return await showRun(runId);
    stopLive();
    show("runs-view");
    await loadRuns("");
    await loadStats();
  } catch (err) {
    failed(err);
  }
}

function guarded(action: () => Promise<void>): () => void {
  return () => {
    showError("");
    action().catch(failed);
  };
}

function start(): void {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($<HTMLTextAreaElement>("token-input").value);
    void route();
  });
  $("sign-out").addEventListener("click", () => {
    signOut();
    location.hash = "";
    showSignIn();
  });
  $("more-runs").addEventListener("click", guarded(() => loadRuns(nextRunsPage)));
  $("add-zone").addEventListener("click", () => {
    $("zones").append(zoneRow({ latitude: 0, longitude: 0, radiusM: 200 }));
  });
  $("zones-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(saveZones)();
  });
  $("public-switch").addEventListener(
    "change",
    guarded(() => setVisibility($("run-view").dataset.runId ?? "", $<HTMLInputElement>("public-switch").checked)),
  );
  $("delete-run").addEventListener("click", guarded(() => deleteRun($("run-view").dataset.runId ?? "")));
  window.addEventListener("hashchange", () => void route());
  void route();
}

start();
