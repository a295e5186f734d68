// The spectator's page, `#live=<token>`: one run followed as it happens by whoever holds one of its
// live links, without signing in. The link's token is kept in memory (and stays in the URL, so that
// a reload follows the run again); the signed-in runner's token, if this browser holds one, is
// neither sent nor replaced. Nothing is polled: the watch stream brings every point and state.
import L from "leaflet";
import type { ApiError, LiveState, RunStateChange, TrackPoint } from "./api";
import { $ } from "./dom";
import { clock, km } from "./format";
import { TrailMap } from "./trail";
import { HeldPoints, RunWatch } from "./watch";

const STATE_WORDS: Record<LiveState, string> = {
  LIVE_STATE_UNSPECIFIED: "Connecting…",
  LIVE: "Running",
  STALLED: "Stalled",
  RESUMED: "Running again",
  STOPPED: "Finished",
  DELETED: "Deleted",
};

/** A JWT's claims (its middle part, base64url JSON), unverified: only to learn which run it names;
 * the server verifies the token on every call. */
export function claimsOf(token: string): Record<string, unknown> | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? (claims as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function located(p: TrackPoint | undefined): L.LatLng | null {
  return p && p.latitude !== undefined && p.longitude !== undefined ? L.latLng(p.latitude, p.longitude) : null;
}

function timeOfDay(iso: string | undefined): string {
  return iso ? new Date(iso).toLocaleTimeString() : "-";
}

/** Why a link was refused, in words. */
function refusal(err: ApiError): string {
  if (err.httpStatus === 401) {
    if (err.reason === "LINK_REVOKED") return "This live link was revoked.";
    if (err.reason === "LINK_EXPIRED") return "This live link has expired.";
    return "This live link was revoked or has expired.";
  }
  if (err.httpStatus === 403) return "This live link does not open this run.";
  if (err.httpStatus === 404) return "This run does not exist (any more).";
  return err.message;
}

export class LiveView {
  private readonly held = new HeldPoints();
  private trail: TrailMap | null = null;
  private watch: RunWatch | null = null;
  private ticker: number | undefined;
  private distanceM = 0;
  // The last located point counted in the distance: the next segment starts there.
  private lastLocated: L.LatLng | null = null;
  private state: LiveState = "LIVE_STATE_UNSPECIFIED";
  private over = false;

  /** Follows the run `token` (a live link's) names; #live-view must be shown already (the map
   * measures its element). */
  constructor(readonly token: string) {
    this.reset();
    const runId = claimsOf(token)?.run_id;
    if (typeof runId !== "string" || !runId) {
      this.fail("This live link is not valid: it names no run.", "", 0);
      return;
    }
    $("live-view").dataset.runId = runId;
    this.trail = new TrailMap($("live-map"));
    this.watch = new RunWatch(runId, token, {
      points: (points) => this.onPoints(points),
      state: (change) => this.onState(change),
      refused: (err) => this.fail(refusal(err), err.reason, err.httpStatus),
      interrupted: (delayMs) => {
        const connection = $("live-connection");
        connection.textContent = `Connection lost; trying again in ${Math.round(delayMs / 1000)} s…`;
        connection.hidden = false;
      },
    });
    // Elapsed time runs on while the run does (a clock on the page, not a call).
    this.ticker = window.setInterval(() => this.showElapsed(), 1000);
  }

  stop(): void {
    this.watch?.stop();
    window.clearInterval(this.ticker);
    this.trail?.remove();
    this.trail = null;
  }

  private reset(): void {
    for (const id of ["live-banner", "live-end", "live-error", "live-connection"]) $(id).hidden = true;
    delete $("live-view").dataset.runId;
    this.showState({ state: "LIVE_STATE_UNSPECIFIED" });
    this.showFacts();
  }

  private onPoints(points: TrackPoint[]): void {
    $("live-connection").hidden = true;
    const { added, inOrder } = this.held.add(points);
    if (!added.length) return;
    if (inOrder) {
      for (const p of added) this.extend(located(p));
    } else {
      // A point older than the last held: the distance is summed again in seq order.
      this.distanceM = 0;
      this.lastLocated = null;
      for (const p of this.held.list) this.extend(located(p));
    }
    this.trail?.follow(this.held.list);
    this.showFacts();
  }

  /** Adds the segment from the last located point to `next` (geodesic distance by Leaflet). */
  private extend(next: L.LatLng | null): void {
    if (!next) return;
    if (this.lastLocated) this.distanceM += this.lastLocated.distanceTo(next);
    this.lastLocated = next;
  }

  private onState(change: RunStateChange): void {
    $("live-connection").hidden = true;
    this.showState(change);
    if (this.state === "STOPPED" || this.state === "DELETED") {
      this.over = true;
      window.clearInterval(this.ticker);
      const end = $("live-end");
      end.textContent =
        this.state === "STOPPED"
          ? `Run finished${change.time ? ` at ${timeOfDay(change.time)}` : ""}.`
          : "This run was deleted.";
      end.dataset.state = this.state;
      end.hidden = false;
      this.showElapsed();
    }
  }

  private showState(change: RunStateChange): void {
    this.state = change.state ?? "LIVE_STATE_UNSPECIFIED";
    const state = $("live-state");
    state.dataset.state = this.state;
    state.textContent = STATE_WORDS[this.state] ?? this.state;
    const banner = $("live-banner");
    // STALLED until RESUMED (or LIVE, the state a reconnect may find), or the run's end.
    banner.hidden = this.state !== "STALLED";
    if (this.state === "STALLED") {
      const since = change.time ? ` since ${timeOfDay(change.time)}` : "";
      banner.textContent = `The runner has stalled${since}` + (change.reason ? `: ${change.reason}.` : ".");
      banner.dataset.reason = change.reason ?? "";
    }
  }

  private fail(message: string, reason: string, httpStatus: number): void {
    this.over = true;
    window.clearInterval(this.ticker);
    this.showElapsed();
    $("live-connection").hidden = true;
    $("live-banner").hidden = true;
    const error = $("live-error");
    error.textContent = message;
    error.dataset.reason = reason;
    error.dataset.status = String(httpStatus);
    error.hidden = false;
  }

  private showFacts(): void {
    const count = this.held.list.length;
    const last = this.held.last;
    const points = $("live-points");
    points.dataset.count = String(count);
    points.textContent = String(count);
    const lastSeq = $("live-last-seq");
    lastSeq.dataset.seq = String(last?.seq ?? 0);
    lastSeq.textContent = last ? `#${last.seq} at ${timeOfDay(last.time)}` : "-";
    const distance = $("live-distance");
    distance.dataset.m = this.distanceM.toFixed(1);
    distance.textContent = km(this.distanceM);
    const position = $("live-marker-pos");
    position.dataset.lat = this.lastLocated ? String(this.lastLocated.lat) : "";
    position.dataset.lng = this.lastLocated ? String(this.lastLocated.lng) : "";
    position.textContent = this.lastLocated
      ? `${this.lastLocated.lat.toFixed(5)}, ${this.lastLocated.lng.toFixed(5)}`
      : "-";
    this.showElapsed();
  }

  /** From the first point's time to now while the run goes on, to the last point's once it is over. */
  private showElapsed(): void {
    const first = Date.parse(this.held.list[0]?.time ?? "");
    const until = this.over ? Date.parse(this.held.last?.time ?? "") : Date.now();
    const s = Number.isFinite(first) && Number.isFinite(until) ? Math.max(0, (until - first) / 1000) : 0;
    const elapsed = $("live-elapsed");
    elapsed.dataset.s = String(Math.floor(s));
    elapsed.textContent = clock(s);
  }
}
