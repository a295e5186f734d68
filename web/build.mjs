// Bundles the page into dist/: index.html, app.js and app.css (Leaflet's CSS and ours).
// RUNTRACK_TILE_URL (e.g. https://tile.example.org/{z}/{x}/{y}.png) sets the map's background tiles;
// unset, the trail is drawn on a plain background.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";

const tileUrl = process.env.RUNTRACK_TILE_URL ?? "";
await mkdir("dist", { recursive: true });
await build({
  entryPoints: { app: "src/main.ts" },
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "esm",
  target: ["es2022"],
  outdir: "dist/assets",
  define: { RUNTRACK_TILE_URL: JSON.stringify(tileUrl) },
  loader: { ".png": "dataurl" },
  logLevel: "warning",
});
await copyFile("index.html", "dist/index.html");
console.error(`web: built dist/ (tiles: ${tileUrl || "none, plain background"})`);
