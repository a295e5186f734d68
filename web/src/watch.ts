// Following a run as it happens: WatchRun over HTTP, read as it arrives, resumed after a break.
//
// Envoy transcodes the gRPC stream into JSON objects, one RunEvent each, newline-delimited; a
// response chunk may end inside an object. Objects are cut out by their braces rather than by
// lines, so the same reader also takes the transcoder's other framing (a JSON array).
import {
  ApiError,
  errorOf,
  type LiveState,
  type RunEvent,
  type RunStateChange,
  runPath,
  type TrackPoint,
} from "./api";

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 10_000;
// Answers a retry would not change: the token, the link or the run is not good for this watch.
const FINAL_HTTP = new Set([401, 403, 404]);
// The same, when the stream ends with a google.rpc.Status object instead: gRPC code to HTTP status.
const FINAL_GRPC: Record<number, number> = { 16: 401, 7: 403, 5: 404 };
const ENDED: ReadonlySet<LiveState> = new Set(["STOPPED", "DELETED"]);

/** Cuts complete top-level JSON objects out of text arriving in pieces. */
export class JsonObjects {
  private buffer = "";
  private scanned = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;

  push(text: string): unknown[] {
    this.buffer += text;
    const objects: unknown[] = [];
    let start = 0;
    for (let i = this.scanned; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === "\\") this.escaped = true;
        else if (c === '"') this.inString = false;
      } else if (c === '"') {
        this.inString = true;
      } else if (c === "{") {
        if (this.depth++ === 0) start = i;
      } else if (c === "}" && this.depth > 0 && --this.depth === 0) {
        try {
          objects.push(JSON.parse(this.buffer.slice(start, i + 1)));
        } catch {
          // Not JSON after all: skipped, the stream goes on.
        }
        start = i + 1;
      }
    }
    // Keep only the object still open (what lies between objects is separators).
    this.buffer = this.depth > 0 ? this.buffer.slice(start) : "";
    this.scanned = this.buffer.length;
    return objects;
  }
}

/** The points of a followed run held by the page, each seq once and in seq order: a point may come
 * again (a reconnect) or after a later one (a phone re-sending what a broken stream lost). */
export class HeldPoints {
  readonly list: TrackPoint[] = [];
  private readonly seqs = new Set<number>();

  /** Takes the points not held yet; `inOrder` is false when one went before the last held. */
  add(points: TrackPoint[]): { added: TrackPoint[]; inOrder: boolean } {
    const added: TrackPoint[] = [];
    let inOrder = true;
    for (const p of points) {
      if (this.seqs.has(p.seq)) continue;
      this.seqs.add(p.seq);
      added.push(p);
      if (this.list.length && p.seq < this.list[this.list.length - 1].seq) inOrder = false;
      this.list.push(p);
    }
    if (!inOrder) this.list.sort((a, b) => a.seq - b.seq);
    return { added, inOrder };
  }

  get last(): TrackPoint | undefined {
    return this.list[this.list.length - 1];
  }
}

export interface WatchHandlers {
  /** Points newly arrived (possibly some already held, after a reconnect). */
  points(points: TrackPoint[]): void;
  /** The run's live state: the current one first on every connection, then each change. */
  state(change: RunStateChange): void;
  /** Refused for good (401: the token or link is no longer valid; 403; 404): the watch is over. */
  refused(err: ApiError): void;
  /** The stream broke or could not be opened: it is opened again after `delayMs`. */
  interrupted?(delayMs: number): void;
}

/** One run followed with `bearer` (the runner's token or a live link's) from `afterSeq` on, until
 * the run stops or is deleted, the watch is refused, or `stop()`. */
export class RunWatch {
  private readonly abort = new AbortController();
  private afterSeq: number;
  private retryMs = FIRST_RETRY_MS;
  private timer: number | undefined;

  constructor(
    private readonly runId: string,
    private readonly bearer: string,
    private readonly on: WatchHandlers,
    afterSeq = 0,
  ) {
    this.afterSeq = afterSeq;
    void this.connect();
  }

  stop(): void {
    this.abort.abort();
    window.clearTimeout(this.timer);
  }

  get stopped(): boolean {
    return this.abort.signal.aborted;
  }

  private async connect(): Promise<void> {
    let heard = false;
    let ended = false;
    try {
      const query = new URLSearchParams({ afterSeq: String(this.afterSeq) });
      const response = await fetch(`${runPath(this.runId)}:watch?${query}`, {
        headers: { authorization: `Bearer ${this.bearer}` },
        cache: "no-store",
        signal: this.abort.signal,
      });
      if (!response.ok) {
        const err = await errorOf(response);
        if (FINAL_HTTP.has(response.status)) return this.refuse(err);
        throw err;
      }
      if (!response.body) throw new Error("the watch answered without a body");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const objects = new JsonObjects();
      for (;;) {
        const { done, value } = await reader.read();
        const text = done ? decoder.decode() : decoder.decode(value, { stream: true });
        for (const object of objects.push(text)) {
          if (this.stopped) return;
          const status = object as { code?: unknown; message?: unknown };
          if (typeof status.code === "number" && !("runId" in status)) {
            // The stream ended on an error the transcoder wrote into the body.
            const httpStatus = FINAL_GRPC[status.code];
            if (httpStatus) return this.refuse(new ApiError(httpStatus, String(status.message ?? "")));
            continue;
          }
          heard = true;
          ended = this.handle(object as RunEvent) || ended;
        }
        if (done) break;
      }
    } catch {
      // A broken stream, or one that could not be opened: resumed below, unless stopped on purpose.
    }
    if (this.stopped || ended) return;
    // A connection that delivered something starts the backoff over: the next break is a new one.
    const delay = heard ? FIRST_RETRY_MS : this.retryMs;
    this.retryMs = Math.min(delay * 2, MAX_RETRY_MS);
    this.on.interrupted?.(delay);
    this.timer = window.setTimeout(() => void this.connect(), delay);
  }

  /** Hands one event on; true when it says the run is over (its stream ends after it). */
  private handle(event: RunEvent): boolean {
    const points = event.points?.points;
    if (points?.length) {
      for (const p of points) this.afterSeq = Math.max(this.afterSeq, p.seq);
      this.on.points(points);
    }
    if (event.state) {
      this.on.state(event.state);
      return ENDED.has(event.state.state ?? "LIVE_STATE_UNSPECIFIED");
    }
    return false;
  }

  private refuse(err: ApiError): void {
    this.stop();
    this.on.refused(err);
  }
}
