// The RunTrack dashboard: sign-in by token, the caller's runs and personal records, importing a
// run's file, a run's overview, trail (followed while it is being recorded), analysis and files,
// renaming, weekly stats, sharing, live links, privacy zones and deletion; and the spectator's view
// of a run followed through one of its live links.
//
// The URL fragment carries state: `#token=<jwt>` signs in once (the token moves to sessionStorage
// and leaves the URL), `#run=<run_id>` opens a run; both may come together. `#live=<token>` is a
// live link: it opens the spectator's view, signed in or not, and never touches the stored token.
import {
  ApiError,
  call,
  file,
  type ListLiveLinksResponse,
  type ListRecordsResponse,
  type ListRunsResponse,
  type LiveLink,
  type PrivacyZone,
  type PersonalRecord,
  type PrivacyZones,
  type Run,
  type RunAnalysis,
  runPath,
  send,
  signIn,
  signOut,
  type Track,
  type TrackCursor,
  type TrackPoint,
  token,
  type UserStats,
} from "./api";
import { drawRunChart, effortItems, effortName, type SplitUnit, splitRows } from "./analysis";
import { $ } from "./dom";
import { clock, km, pace, seconds, timeZone, when } from "./format";
import { LiveView } from "./live";
import { drawStats } from "./stats";
import { TrailMap } from "./trail";
import { HeldPoints, RunWatch } from "./watch";
import "./style.css";

const LIVE_POLL_MS = 2000;
const TRACK_PAGE = 10000;
// A stopped run's analysis is computed after StopRun answered: the run is read again this often,
// this many times, until it carries one.
const ANALYSIS_RETRY_MS = 3000;
const ANALYSIS_TRIES = 40;
// The file types ImportRun takes, by the file's extension.
const IMPORT_TYPES: Record<string, string> = {
  gpx: "application/gpx+xml",
  tcx: "application/vnd.garmin.tcx+xml",
  fit: "application/vnd.ant.fit",
};

let me = "";
let nextRunsPage = "";
let trail: TrailMap | null = null;
// What keeps the open view current: a stopped run's cursor check, the watch on a run being
// recorded, or the spectator's view. At most one at a time; stopLive() ends it, and counts a new
// view, so that a run still loading for a view left meanwhile is not shown over the next one.
let livePoll: number | undefined;
let runWatch: RunWatch | null = null;
let spectator: LiveView | null = null;
let view = 0;
// The open run's analysis (to redraw its splits in another unit) and the next read of a run still
// without one.
let analysis: RunAnalysis | null = null;
let analysisRead: number | undefined;

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

function show(view: "sign-in" | "runs-view" | "run-view" | "live-view"): void {
  for (const id of ["sign-in", "runs-view", "run-view", "live-view"]) $(id).hidden = id !== view;
}

function showError(message: string): void {
  const banner = $("error");
  banner.textContent = message;
  banner.hidden = !message;
}

function stopLive(): void {
  view++;
  if (livePoll !== undefined) window.clearInterval(livePoll);
  livePoll = undefined;
  runWatch?.stop();
  runWatch = null;
  spectator?.stop();
  spectator = null;
  if (analysisRead !== undefined) window.clearTimeout(analysisRead);
  analysisRead = undefined;
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
  link.dataset.testid = "run-name";
  link.textContent = run.name || when(o.startTime);
  const facts = document.createElement("span");
  const started = run.name ? `${when(o.startTime)} · ` : "";
  facts.textContent = ` ${started}${km(o.distanceM)} · ${clock(seconds(o.movingTime))} · ${pace(run.avgPaceSPerKm)}`;
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

/** The runner's records: each distance's best time, when it was run, and a link to that run. */
async function loadRecords(): Promise<void> {
  const records = (await call<ListRecordsResponse>("GET", "/v1/users/me/records")).records ?? [];
  $("records-body").replaceChildren(...records.map(recordRow));
  $("records").hidden = records.length === 0;
  $("no-records").hidden = records.length > 0;
}

function recordRow(record: PersonalRecord): HTMLTableRowElement {
  const best = record.best;
  const time = seconds(best?.elapsedTime);
  const row = document.createElement("tr");
  row.dataset.testid = "record";
  row.dataset.name = record.name;
  row.dataset.runId = best?.runId ?? "";
  row.dataset.elapsedS = String(time);
  const cells = [
    effortName(record.name),
    clock(time),
    record.distanceM ? pace((time / record.distanceM) * 1000) : "-",
    best?.achievedTime ? new Date(best.achievedTime).toLocaleDateString(undefined, { dateStyle: "medium" }) : "-",
  ].map((text) => {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  });
  const link = document.createElement("a");
  link.href = `#run=${encodeURIComponent(best?.runId ?? "")}`;
  link.textContent = "Open the run";
  link.dataset.testid = "record-run";
  const last = document.createElement("td");
  last.append(link);
  row.append(...cells, last);
  return row;
}

/** Sends the chosen file to ImportRun as it is, then opens the run it made (or says what is wrong). */
async function importRun(input: HTMLInputElement): Promise<void> {
  const chosen = input.files?.[0];
  input.value = "";
  if (!chosen) return;
  const extension = chosen.name.split(".").pop()?.toLowerCase() ?? "";
  const type = IMPORT_TYPES[extension];
  const status = $("import-status");
  if (!type) {
    status.textContent = "";
    showError(`${chosen.name} was not imported: choose a .gpx, .tcx or .fit file.`);
    return;
  }
  status.textContent = `Importing ${chosen.name}…`;
  let run: Run;
  try {
    run = await send<Run>("/v1/runs:import", chosen, type, { "x-runtrack-time-zone": timeZone() });
  } catch (err) {
    status.textContent = "";
    if (err instanceof ApiError && err.httpStatus !== 401) {
      throw new ApiError(err.httpStatus, `${chosen.name} was not imported: ${err.message}`, err.reason);
    }
    throw err;
  }
  status.textContent = `Imported ${chosen.name}.`;
  location.hash = `run=${encodeURIComponent(run.runId)}`;
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

/** `afterStop`: opened again because its watch said STOPPED (so a 404 means "not summed up yet"). */
async function showRun(runId: string, afterStop = false): Promise<void> {
  stopLive();
  const mine = view;
  show("run-view");
  $("run-title").textContent = `Run ${runId}`;
  $("run-view").dataset.runId = runId;
  $("live-links").hidden = true;
  $("rename-run").hidden = true;
  $("rename-form").hidden = true;
  $("downloads").hidden = true;
  $("run-analysis").hidden = true;
  analysis = null;
  let run: Run | null = null;
  try {
    run = await call<Run>("GET", runPath(runId));
  } catch (err) {
    // Not stopped yet: no overview, but the owner's trail may be arriving.
    if (!(err instanceof ApiError && err.httpStatus === 404)) throw err;
  }
  if (mine !== view) return;
  const owner = run ? run.userId === me : true;
  const recording = !run && !afterStop;
  $("run-state").textContent = run
    ? `Stopped ${when(run.stoppedAt)} · by ${run.userId}`
    : recording
      ? "Being recorded…"
      : "Stopped; its overview is not ready yet.";
  $("run-overview").replaceChildren();
  if (run) showOverview(run);
  if (run?.name) $("run-title").textContent = run.name;
  $("rename-run").hidden = !(run && owner);
  $("downloads").hidden = !run;
  $<HTMLDetailsElement>("downloads").open = false;
  $("download-status").textContent = "";
  $("run-owner-actions").hidden = !(run && owner);
  $<HTMLInputElement>("public-switch").checked = run?.visibility === "PUBLIC";

  trail?.remove();
  trail = new TrailMap($("map"));
  const points = await wholeTrack(runId);
  if (mine !== view) return;
  trail.draw(points);
  if (run) {
    $("run-analysis").hidden = false;
    drawRunChart($<HTMLCanvasElement>("run-chart"), points);
    await showAnalysis(run, owner, mine, 0);
  }
  if (owner && recording) followRecording(runId, points);
  else if (owner) pollStopped(runId, points);
  if (owner) await showLiveLinks(runId, mine);
}

/** A run being recorded, followed from its last point read: the watch stream brings each point once
 * it is durable, and the run's end, when the run is opened again with its overview. */
function followRecording(runId: string, points: TrackPoint[]): void {
  const held = new HeldPoints();
  held.add(points);
  let stalled = "";
  const showCount = () => {
    $("run-state").textContent = `Being recorded… ${held.list.length} points so far${stalled}`;
  };
  runWatch = new RunWatch(
    runId,
    token() ?? "",
    {
      points: (fresh) => {
        if (!held.add(fresh).added.length) return;
        trail?.follow(held.list);
        showCount();
      },
      state: (change) => {
        // (The watch is stopped whenever the view changes: these are about the run on screen.)
        if (change.state === "STOPPED" || change.state === "DELETED") {
          stopLive();
          if (change.state === "STOPPED") showRun(runId, true).catch(failed);
          else $("run-state").textContent = "This run was deleted.";
          return;
        }
        stalled = change.state === "STALLED" ? ` · not moving (${change.reason ?? "stalled"})` : "";
        showCount();
      },
      refused: failed,
    },
    held.last?.seq ?? 0,
  );
}

/** A stopped run: points may still arrive (the trail finishing its sync after STOP RUN). The cursor
 * is cheap; the trail is read again only when it grew. */
function pollStopped(runId: string, points: TrackPoint[]): void {
  let count = points.length;
  livePoll = window.setInterval(async () => {
    if ($("run-view").dataset.runId !== runId) return stopLive();
    try {
      const cursor = await call<TrackCursor>("GET", `${runPath(runId)}/cursor`);
      if ((cursor.pointCount ?? 0) !== count) {
        const fresh = await wholeTrack(runId);
        count = fresh.length;
        trail?.draw(fresh);
        drawRunChart($<HTMLCanvasElement>("run-chart"), fresh);
      }
    } catch (err) {
      stopLive();
      failed(err);
    }
  }, LIVE_POLL_MS);
}

// ---- a stopped run's analysis ----------------------------------------------------------------

/** The splits, best efforts (with a PR mark from the owner's records) and climb; while the run has no
 * analysis yet, says so and reads the run again a few seconds later (`tries` reads so far). */
async function showAnalysis(run: Run, owner: boolean, mine: number, tries: number): Promise<void> {
  const status = $("analysis-status");
  const found = run.analysis;
  $("analysis-details").hidden = !found;
  if (!found) {
    const tooShort = (run.overview?.pointCount ?? 0) < 2;
    const gaveUp = tries >= ANALYSIS_TRIES;
    status.dataset.state = tooShort || gaveUp ? "none" : "pending";
    status.textContent = tooShort
      ? "This run has too few points to analyse."
      : gaveUp
        ? "The analysis is not ready; reload the page later to see it."
        : "The analysis (splits, best efforts) is being computed; it appears here in a few seconds.";
    if (!tooShort && !gaveUp) {
      analysisRead = window.setTimeout(() => {
        call<Run>("GET", runPath(run.runId))
          .then((fresh) => (mine === view ? showAnalysis(fresh, owner, mine, tries + 1) : undefined))
          .catch((err) => {
            if (mine === view) failed(err);
          });
      }, ANALYSIS_RETRY_MS);
    }
    return;
  }
  const records = owner ? ((await call<ListRecordsResponse>("GET", "/v1/users/me/records")).records ?? []) : [];
  if (mine !== view) return;
  analysis = found;
  status.dataset.state = "ready";
  status.textContent = `Analysed from ${found.pointCount ?? 0} points.`;
  const facts: [string, string][] = [["Distance along the trail", km(found.distanceM)]];
  if (found.elevationGainM !== undefined) facts.push(["Climb", `${Math.round(found.elevationGainM)} m`]);
  if (found.elevationLossM !== undefined) facts.push(["Descent", `${Math.round(found.elevationLossM)} m`]);
  const zones = (found.heartRateZones ?? []).map(seconds);
  if (zones.some((z) => z > 0)) {
    facts.push(["Time in heart-rate zones 1-5", zones.map((z) => clock(z)).join(" · ")]);
  }
  $("analysis-facts").replaceChildren(
    ...facts.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
  showSplits();
  const efforts = found.bestEfforts ?? [];
  $("best-efforts").replaceChildren(...effortItems(run.runId, efforts, records));
  $("no-best-efforts").hidden = efforts.length > 0;
}

function splitUnit(): SplitUnit {
  return $<HTMLInputElement>("split-unit").querySelector<HTMLInputElement>("input:checked")?.value === "mile"
    ? "mile"
    : "km";
}

function showSplits(): void {
  const unit = splitUnit();
  const splits = (unit === "km" ? analysis?.splitsKm : analysis?.splitsMile) ?? [];
  $("splits").dataset.unit = unit;
  $("splits-body").replaceChildren(...splitRows(splits, unit));
}

// ---- renaming, files ------------------------------------------------------------------------

function startRename(): void {
  const input = $<HTMLInputElement>("rename-input");
  input.value = $("run-title").textContent ?? "";
  $("rename-error").hidden = true;
  $("rename-form").hidden = false;
  $("rename-run").hidden = true;
  input.focus();
  input.select();
}

function endRename(): void {
  $("rename-form").hidden = true;
  $("rename-run").hidden = false;
}

/** UpdateRun with `name` in the mask; a refusal is said beside the field, the form stays open. */
async function rename(runId: string): Promise<void> {
  const error = $("rename-error");
  error.hidden = true;
  let run: Run;
  try {
    run = await call<Run>("PATCH", `${runPath(runId)}?updateMask=name`, {
      name: $<HTMLInputElement>("rename-input").value,
    });
  } catch (err) {
    if (!(err instanceof ApiError) || err.httpStatus === 401) throw err;
    error.textContent = `Not renamed: ${err.message}`;
    error.hidden = false;
    return;
  }
  if ($("run-view").dataset.runId !== runId) return;
  $("run-title").textContent = run.name || `Run ${runId}`;
  endRename();
}

/** The run's trail as a file (GPX or TCX), saved under the name the server gives it. */
async function download(runId: string, format: string): Promise<void> {
  const status = $("download-status");
  status.textContent = `Preparing the ${format.toUpperCase()} file…`;
  let got: { blob: Blob; filename: string };
  try {
    got = await file(`${runPath(runId)}/track.${format}`);
  } catch (err) {
    status.textContent = "";
    throw err;
  }
  const url = URL.createObjectURL(got.blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = got.filename || `runtrack-${runId}.${format}`;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
  status.textContent = `Saved ${link.download}.`;
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

// ---- live links -----------------------------------------------------------------------------

const liveLinksPath = (runId: string): string => `${runPath(runId)}/liveLinks`;

function linkItem(runId: string, link: LiveLink): HTMLLIElement {
  const li = document.createElement("li");
  li.dataset.linkId = link.linkId;
  const expiry = link.expireTime ? `expires ${when(link.expireTime)}` : "expires an hour after the run stops";
  const webhook = link.webhookUrl ? `webhook ${link.webhookUrl}` : "no webhook";
  li.textContent = `${link.linkId} · created ${when(link.createTime)} · ${expiry} · ${webhook}`;
  const revoke = document.createElement("button");
  revoke.type = "button";
  revoke.className = "revoke-link";
  revoke.textContent = "Revoke";
  revoke.addEventListener("click", guarded(() => revokeLiveLink(runId, link.linkId)));
  li.append(revoke);
  return li;
}

async function loadLiveLinks(runId: string): Promise<void> {
  const links = (await call<ListLiveLinksResponse>("GET", liveLinksPath(runId))).links ?? [];
  $("live-link-list").replaceChildren(...links.map((link) => linkItem(runId, link)));
  $("no-live-links").hidden = links.length > 0;
}

async function showLiveLinks(runId: string, mine: number): Promise<void> {
  $("live-link-created").hidden = true;
  try {
    await loadLiveLinks(runId);
  } catch (err) {
    // Someone else's run in progress (its owner is not known before it stops): nothing to manage.
    if (err instanceof ApiError && (err.httpStatus === 403 || err.httpStatus === 404)) return;
    throw err;
  }
  if (mine === view) $("live-links").hidden = false;
}

async function createLiveLink(runId: string): Promise<void> {
  const webhookUrl = $<HTMLInputElement>("live-link-webhook").value.trim();
  const expiry = $<HTMLInputElement>("live-link-expiry").value;
  const body: { webhookUrl?: string; expireTime?: string } = {};
  if (webhookUrl) body.webhookUrl = webhookUrl;
  // datetime-local is a wall-clock time in the browser's zone; the API takes an instant.
  if (expiry) body.expireTime = new Date(expiry).toISOString();
  const link = await call<LiveLink>("POST", liveLinksPath(runId), body);
  // The token (in the URL) and the webhook's secret are answered this once: shown now or never.
  const url = $<HTMLAnchorElement>("live-link-url");
  url.href = link.url ?? "";
  url.textContent = link.url ?? "";
  $("live-link-secret").textContent = link.webhookSecret ?? "";
  $("live-link-secret-row").hidden = !link.webhookSecret;
  $("live-link-copied").textContent = "";
  const created = $("live-link-created");
  created.dataset.linkId = link.linkId;
  created.hidden = false;
  $<HTMLFormElement>("live-link-form").reset();
  await loadLiveLinks(runId);
}

async function revokeLiveLink(runId: string, linkId: string): Promise<void> {
  await call<unknown>("DELETE", `${liveLinksPath(runId)}/${encodeURIComponent(linkId)}`);
  const created = $("live-link-created");
  if (created.dataset.linkId === linkId) created.hidden = true;
  await loadLiveLinks(runId);
}

async function copyLiveLink(): Promise<void> {
  const url = $("live-link-url");
  try {
    await navigator.clipboard.writeText(url.textContent ?? "");
    $("live-link-copied").textContent = "Copied.";
  } catch {
    // No clipboard here (it needs https, or localhost): the link is selected for a Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents(url);
    getSelection()?.removeAllRanges();
    getSelection()?.addRange(range);
    $("live-link-copied").textContent = "Selected: copy it with Ctrl+C.";
  }
}

// ---- routing --------------------------------------------------------------------------------

/** The spectator's view: the live link's token alone, whoever is signed in in this browser. */
function showLive(linkToken: string): void {
  stopLive();
  show("live-view");
  spectator = new LiveView(linkToken);
}

async function route(): Promise<void> {
  showError("");
  const live = fragment().get("live");
  if (live) return showLive(live);
  takeTokenFromUrl();
  if (!token()) return showSignIn();
  try {
    const zones = me ? null : await whoAmI();
    if (zones) showZones(zones.zones ?? []);
    const runId = fragment().get("run");
    if (runId) return await showRun(runId);
    stopLive();
    show("runs-view");
    $("import-status").textContent = "";
    await loadRuns("");
    await loadRecords();
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
  $("live-link-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(() => createLiveLink($("run-view").dataset.runId ?? ""))();
  });
  $("copy-live-link").addEventListener("click", guarded(copyLiveLink));
  const openRunId = () => $("run-view").dataset.runId ?? "";
  $("rename-run").addEventListener("click", startRename);
  $("rename-cancel").addEventListener("click", endRename);
  $("rename-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(() => rename(openRunId()))();
  });
  for (const button of document.querySelectorAll<HTMLButtonElement>("#downloads button.download")) {
    button.addEventListener("click", guarded(() => download(openRunId(), button.dataset.format ?? "gpx")));
  }
  $("split-unit").addEventListener("change", showSplits);
  $("import-button").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", guarded(() => importRun($<HTMLInputElement>("import-file"))));
  window.addEventListener("hashchange", () => void route());
  void route();
}

start();
