// How the page writes distances, durations and paces.

/** "1700s" or "1700.5s" (proto JSON Duration) to seconds. */
export function seconds(duration: string | undefined): number {
  return duration ? Number.parseFloat(duration) || 0 : 0;
}

export function km(metres: number | undefined): string {
  return `${((metres ?? 0) / 1000).toFixed(2)} km`;
}

export function clock(totalSeconds: number): string {
  const s = Math.round(totalSeconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

export function pace(secondsPerKm: number | undefined): string {
  return secondsPerKm ? `${clock(secondsPerKm)} /km` : "-";
}

export function when(iso: string | undefined): string {
  if (!iso) return "-";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** The browser's IANA time zone, in which the weekly stats start on Monday. */
export function timeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}
