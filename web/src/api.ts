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
}

/** A google.rpc.Status answered by the API, or a failure to reach it. */
export class ApiError extends Error {
  constructor(
    readonly httpStatus: number,
    message: string,
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

export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { authorization: `Bearer ${token() ?? ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  let response: Response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "RunTrack cannot be reached; check your connection and try again.");
  }
  const text = await response.text();
  let parsed: unknown = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, describe(parsed, text || response.statusText));
  }
  return parsed as T;
}

export const runPath = (runId: string): string => `/v1/runs/${encodeURIComponent(runId)}`;
