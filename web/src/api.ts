// The JSON API through Envoy (same origin), with the signed-in runner's token.

const TOKEN_KEY = "runtrack.token";

export interface RunOverview {
  startTime?: string;
  endTime?: string;
  distanceM?: number;
  movingTime?: string;
  elevationGainM?: number;
  pointCount?: number;
  avgHeartRateBpm?: number;
  polyline?: string;
}

export type Visibility = "VISIBILITY_UNSPECIFIED" | "PRIVATE" | "PUBLIC";

export interface Run {
  runId: string;
  userId: string;
  overview?: RunOverview;
  elapsedTime?: string;
  avgPaceSPerKm?: number;
  stoppedAt?: string;
  trackUrl?: string;
  visibility?: Visibility;
  analysis?: RunAnalysis;
  name?: string;
}

/** A kilometre or a mile of a run (the last one shorter). */
export interface Split {
  index: number;
  distanceM?: number;
  elapsedTime?: string;
  paceSPerKm?: number;
  elevationGainM?: number;
  avgHeartRateBpm?: number;
}

/** The fastest stretch of a standard distance ("400m", "1k", "1mile", "5k"...) within a run. */
export interface BestEffort {
  name: string;
  distanceM?: number;
  elapsedTime?: string;
  startM?: number;
  startSeq?: number;
  endSeq?: number;
}

/** What the server computed from a stopped run's whole trail (absent until the trail is complete). */
export interface RunAnalysis {
  distanceM?: number;
  splitsKm?: Split[];
  splitsMile?: Split[];
  bestEfforts?: BestEffort[];
  elevationGainM?: number;
  elevationLossM?: number;
  heartRateZones?: string[];
  pointCount?: number;
}

export interface RecordImprovement {
  runId: string;
  elapsedTime?: string;
  achievedTime?: string;
}

/** The runner's best effort over one standard distance, and every improvement before it. */
export interface PersonalRecord {
  name: string;
  distanceM?: number;
  best?: RecordImprovement;
  history?: RecordImprovement[];
}

export interface ListRecordsResponse {
  userId?: string;
  records?: PersonalRecord[];
}

export interface ListRunsResponse {
  runs?: Run[];
  nextPageToken?: string;
}

export interface TrackPoint {
  seq: number;
  time?: string;
  latitude?: number;
  longitude?: number;
  altitudeM?: number;
  horizontalAccuracyM?: number;
  speedMps?: number;
  heartRateBpm?: number;
  cadenceSpm?: number;
}

export interface Track {
  runId: string;
  points?: TrackPoint[];
  nextPageToken?: string;
}

export interface TrackCursor {
  contiguousSeq?: number;
  maxSeq?: number;
  pointCount?: number;
}

export interface WeekStats {
  weekStart: string;
  runCount?: number;
  distanceM?: number;
}

export interface UserStats {
  userId: string;
  weeks?: WeekStats[];
  totalRuns?: number;
  totalDistanceM?: number;
}

export type LiveState = "LIVE_STATE_UNSPECIFIED" | "LIVE" | "STALLED" | "RESUMED" | "STOPPED" | "DELETED";

export interface RunStateChange {
  state?: LiveState;
  time?: string;
  reason?: string;
}

/** One object of a WatchRun stream: new points, or the run's live state. */
export interface RunEvent {
  runId?: string;
  points?: { points?: TrackPoint[] };
  state?: RunStateChange;
}

/** A link to follow a run; `url`, `token` and `webhookSecret` only in CreateLiveLink's answer. */
export interface LiveLink {
  linkId: string;
  runId: string;
  url?: string;
  expireTime?: string;
  webhookUrl?: string;
  webhookSecret?: string;
  createTime?: string;
  token?: string;
}

export interface ListLiveLinksResponse {
  links?: LiveLink[];
}

export interface PrivacyZone {
  latitude: number;
  longitude: number;
  radiusM: number;
}

export interface PrivacyZones {
  userId: string;
  zones?: PrivacyZone[];
}

interface FieldViolation {
  field?: string;
  description?: string;
}

interface StatusDetail {
  "@type"?: string;
  fieldViolations?: FieldViolation[];
  reason?: string;
}

/** A google.rpc.Status answered by the API, or a failure to reach it; `reason` is its ErrorInfo's. */
export class ApiError extends Error {
  constructor(
    readonly httpStatus: number,
    message: string,
    readonly reason = "",
  ) {
    super(message);
  }
}

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function signIn(value: string): void {
  sessionStorage.setItem(TOKEN_KEY, value.trim());
}

export function signOut(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The words of a google.rpc.Status body: its message, and each broken rule it lists. */
export function describe(body: unknown, fallback: string): string {
  if (!body || typeof body !== "object") return fallback;
  const status = body as { message?: string; details?: StatusDetail[] };
  const rules = (status.details ?? [])
    .flatMap((d) => d.fieldViolations ?? [])
    .map((v) => `${v.field}: ${v.description}`);
  const message = status.message || fallback;
  const extra = rules.filter((r) => r !== message);
  return extra.length ? `${message} (${extra.join("; ")})` : message;
}

/** The ErrorInfo reason of a google.rpc.Status body ("LINK_REVOKED"), or "". */
export function reasonOf(body: unknown): string {
  if (!body || typeof body !== "object") return "";
  const details = (body as { details?: StatusDetail[] }).details ?? [];
  return details.find((d) => d["@type"]?.endsWith("google.rpc.ErrorInfo"))?.reason ?? "";
}

function parseJson(text: string): unknown {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** The refusal a response that is not ok carries (its body is read). */
export async function errorOf(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => "");
  const parsed = parseJson(text);
  return new ApiError(response.status, describe(parsed, text || response.statusText), reasonOf(parsed));
}

const UNREACHABLE = "RunTrack cannot be reached; check your connection and try again.";

/** One request as `bearer`; the response when it is ok, its refusal (ApiError) when not. */
async function request(method: string, path: string, bearer: string, init: RequestInit = {}): Promise<Response> {
  const headers = { authorization: `Bearer ${bearer}`, ...(init.headers as Record<string, string> | undefined) };
  let response: Response;
  try {
    response = await fetch(path, { ...init, method, headers });
  } catch {
    throw new ApiError(0, UNREACHABLE);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** One JSON call, as the signed-in runner unless `bearer` names another token (a live link's). */
export async function call<T>(method: string, path: string, body?: unknown, bearer = token() ?? ""): Promise<T> {
  const init: RequestInit =
    body === undefined ? {} : { headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const response = await request(method, path, bearer, init);
  return parseJson(await response.text()) as T;
}

/** A file's bytes sent as they are, with their content type and extra headers; the JSON answer. */
export async function send<T>(path: string, data: Blob, contentType: string, headers: Record<string, string> = {}): Promise<T> {
  const init = { headers: { ...headers, "content-type": contentType }, body: data };
  const response = await request("POST", path, token() ?? "", init);
  return parseJson(await response.text()) as T;
}

/** The file name a Content-Disposition header gives (filename* first, then filename), or "". */
export function filenameOf(disposition: string | null): string {
  if (!disposition) return "";
  const extended = /filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)/.exec(disposition);
  if (extended) {
    try {
      return decodeURIComponent(extended[1].trim());
    } catch {
      // Not percent-encoded as it should be: the plain filename, if any.
    }
  }
  const plain = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]+))/.exec(disposition);
  if (!plain) return "";
  return (plain[1] ?? plain[2] ?? "").replace(/\\(.)/g, "$1").trim();
}

/** A file the API serves (a run's GPX), read as the signed-in runner: its bytes and its file name. */
export async function file(path: string): Promise<{ blob: Blob; filename: string }> {
  const response = await request("GET", path, token() ?? "");
  return { blob: await response.blob(), filename: filenameOf(response.headers.get("content-disposition")) };
}

export const runPath = (runId: string): string => `/v1/runs/${encodeURIComponent(runId)}`;
