// The trail on a Leaflet map: tiles only when RUNTRACK_TILE_URL was set at build time (this page
// must work where no tile server is reachable), otherwise a plain background with the trail.
import L from "leaflet";
import "leaflet/dist/leaflet.css";
import type { TrackPoint } from "./api";

declare const RUNTRACK_TILE_URL: string;

export class TrailMap {
  private readonly map: L.Map;
  private readonly line: L.Polyline;
  private readonly start = L.circleMarker([0, 0], { radius: 6, color: "#1a7f37", fillOpacity: 1 });
  private readonly end = L.circleMarker([0, 0], { radius: 6, color: "#cf222e", fillOpacity: 1 });

  constructor(element: HTMLElement) {
    this.map = L.map(element, { renderer: L.svg(), zoomSnap: 0.25 }).setView([48.8566, 2.3522], 13);
    if (RUNTRACK_TILE_URL) {
      L.tileLayer(RUNTRACK_TILE_URL, { maxZoom: 19, attribution: "map tiles" }).addTo(this.map);
    }
    this.line = L.polyline([], { color: "#0969da", weight: 4 }).addTo(this.map);
  }

  /** Draws every point given (oldest first) and fits the view; marks the drawn count on the SVG. */
  draw(points: TrackPoint[]): void {
    const latlngs = points
      .filter((p) => p.latitude !== undefined && p.longitude !== undefined)
      .map((p) => L.latLng(p.latitude ?? 0, p.longitude ?? 0));
    this.line.setLatLngs(latlngs);
    const path = this.line.getElement();
    path?.setAttribute("data-points", String(latlngs.length));
    path?.closest("svg")?.setAttribute("data-points", String(latlngs.length));
    if (latlngs.length) {
      this.start.setLatLng(latlngs[0]).addTo(this.map);
      this.end.setLatLng(latlngs[latlngs.length - 1]).addTo(this.map);
      this.map.fitBounds(this.line.getBounds(), { padding: [24, 24], maxZoom: 17 });
    }
  }

  remove(): void {
    this.map.remove();
  }
}
