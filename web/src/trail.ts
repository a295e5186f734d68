// The trail on a Leaflet map: tiles only when RUNTRACK_TILE_URL was set at build time (this page
// must work where no tile server is reachable), otherwise a plain background with the trail.
import L from "leaflet";
import "leaflet/dist/leaflet.css";
import type { TrackPoint } from "./api";

declare const RUNTRACK_TILE_URL: string;

export class TrailMap {
  private readonly map: L.Map;
  private readonly line: L.Polyline;
  private readonly start = L.circleMarker([0, 0], {
    radius: 6,
    color: "#1a7f37",
    fillOpacity: 1,
    className: "trail-start",
  });
  private readonly end = L.circleMarker([0, 0], {
    radius: 6,
    color: "#cf222e",
    fillOpacity: 1,
    className: "trail-end",
  });

  constructor(element: HTMLElement) {
    this.map = L.map(element, { renderer: L.svg(), zoomSnap: 0.25 }).setView([48.8566, 2.3522], 13);
    if (RUNTRACK_TILE_URL) {
      L.tileLayer(RUNTRACK_TILE_URL, { maxZoom: 19, attribution: "map tiles" }).addTo(this.map);
    }
    this.line = L.polyline([], { color: "#0969da", weight: 4 }).addTo(this.map);
  }

  /** Draws every point given (oldest first) and fits the view; marks the drawn count on the SVG. */
  draw(points: TrackPoint[]): void {
    if (this.set(points)) this.fit();
  }

  /** Draws a trail that grows (a run followed as it happens): the view is fitted to the first
   * points, then only moved when the last point leaves it, so that a zoom or pan of one's own holds.
   * The last point drawn, or null. */
  follow(points: TrackPoint[]): L.LatLng | null {
    const before = this.line.getLatLngs().length;
    const last = this.set(points);
    if (!last) return null;
    if (!before) this.fit();
    else if (!this.map.getBounds().contains(last)) this.map.panTo(last);
    return last;
  }

  remove(): void {
    this.map.remove();
  }

  /** Puts the points on the line and the start and end markers on its ends; the last point, if any. */
  private set(points: TrackPoint[]): L.LatLng | null {
    const latlngs = points
      .filter((p) => p.latitude !== undefined && p.longitude !== undefined)
      .map((p) => L.latLng(p.latitude ?? 0, p.longitude ?? 0));
    this.line.setLatLngs(latlngs);
    const path = this.line.getElement();
    path?.setAttribute("data-points", String(latlngs.length));
    path?.closest("svg")?.setAttribute("data-points", String(latlngs.length));
    if (!latlngs.length) return null;
    const last = latlngs[latlngs.length - 1];
    this.start.setLatLng(latlngs[0]).addTo(this.map);
    this.end.setLatLng(last).addTo(this.map);
    // Where the end marker stands, for a reader of the page's DOM (and its tests).
    this.end.getElement()?.setAttribute("data-lat", String(last.lat));
    this.end.getElement()?.setAttribute("data-lng", String(last.lng));
    return last;
  }

  private fit(): void {
    this.map.fitBounds(this.line.getBounds(), { padding: [24, 24], maxZoom: 17 });
  }
}
