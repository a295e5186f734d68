"""`scripts/bench imports`: the memory an import takes, as a multiple of the file's size, for GPX, TCX
and FIT in the same run, and whether four imports at once fit the summary pod's memory limit.

Each figure comes from a fresh process that loads the summary replica's modules (grpc, psycopg, the
generated code), reads the file's bytes as a request body holds them, and runs `activity_files.prepare` as
ImportRun does (on threads): parse, geodesics, analysis, overview. Its peak resident memory (VmHWM)
less its resident memory just before the body was read is the import's cost; the multiple is that
over the file's size (the body included). The files are at the size limit (16 MiB) as each format's
writer makes them with a watch's fields (heart rate, cadence, altitude), and GPX also at its densest:
the most points a file may hold (100,000), bare, padded to 16 MiB. A FIT file of 100,000 records is
only ~1.9 MB: its cost is bounded by the point limit, so its multiple of its (small) size is large.

Then four imports of each 16 MiB file at once in one process under a memory cap equal to the chart's
summary pod limit (a cgroup: devstack/memcap.py): it must end without being killed.

No stack is needed. Figures go to .dev/bench/imports-<time>.json.

`python -m bench.imports worker FILE [--at-once N]` is the measured process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devstack.activity_files import START, Fix, fit_file, gpx_file, synthetic_run, tcx_file
from devstack.memcap import pod_memory_limit, run_capped

MIB = 2**20
AT_ONCE_UNDER_CAP = 4  # one import and room for three more


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def worker(path: Path, at_once: int) -> dict[str, Any]:
    """Runs `at_once` imports of the file at once in this process; what they cost."""
    import summary_service.servicer  # noqa: F401 (the replica's modules, loaded as a replica has them)
    from summary_service import activity_files as imports

    gc.collect()
    before_kib = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    bodies = [path.read_bytes() for _ in range(at_once)]  # each request holds its own body
    now_us = time.time_ns() // 1000
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="import") as pool:
        prepared = list(pool.map(lambda body: imports.prepare(body, now_us=now_us), bodies))
    seconds = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM")
    return {
        "file_bytes": len(bodies[0]),
        "at_once": at_once,
        "points": [len(p.file.points) for p in prepared],
        "rss_before_mib": round(before_kib / 1024, 1),
        "rss_peak_mib": round(peak_kib / 1024, 1),
        "increase_mib": round((peak_kib - before_kib) / 1024, 1),
        "seconds": round(seconds, 2),
    }


def at_size(kind: str, limit: int) -> bytes:
    """A file of `kind` as its writer makes it, as close under `limit` bytes as whole fixes allow."""
    writer: Callable[[list[Fix]], bytes] = gpx_file if kind == "gpx" else tcx_file
    per_fix = len(writer(synthetic_run(1000))) / 1000
    n = int(limit / per_fix)
    while True:
        data = writer(synthetic_run(n))
        if len(data) <= limit:
            return data
        n = int(n * limit / len(data)) - 10


def gpx_densest(points: int, limit: int) -> bytes:
    """A GPX of `points` bare track points (a position and a time), padded to `limit` bytes."""
    head = b'<?xml version="1.0" encoding="UTF-8"?>\n<gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
    head += b"<trk><trkseg>\n"
    t0 = int(START.timestamp())
    rows = [
        f'<trkpt lat="{48.85 + i * 2e-5:.7f}" lon="2.2900000"><time>'
        f"{dt.datetime.fromtimestamp(t0 + i, dt.UTC):%Y-%m-%dT%H:%M:%SZ}</time></trkpt>\n".encode()
        for i in range(points)
    ]
    tail = b"</trkseg></trk></gpx>\n"
    body = head + b"".join(rows) + tail
    pad = limit - len(body) - len(b"<!---->")
    return body + (b"<!--" + b" " * pad + b"-->" if pad > 0 else b"")


def files(out_dir: Path) -> dict[str, Path]:
    """The files measured, written once under `out_dir`."""
    from summary_service.activity_files import MAX_FILE_BYTES, MAX_POINTS

    out_dir.mkdir(parents=True, exist_ok=True)
    makers = {
        "gpx": lambda: at_size("gpx", MAX_FILE_BYTES),
        "tcx": lambda: at_size("tcx", MAX_FILE_BYTES),
        "gpx densest": lambda: gpx_densest(MAX_POINTS, MAX_FILE_BYTES),
        "fit": lambda: fit_file(synthetic_run(MAX_POINTS)),
    }
    paths: dict[str, Path] = {}
    for name, make in makers.items():  # each a () -> bytes
        path = out_dir / f"import-{name.replace(' ', '-')}.{name.split()[0]}"
        if not path.exists():
            path.write_bytes(make())  # type: ignore[no-untyped-call]
        paths[name] = path
    return paths


def measure(path: Path, at_once: int = 1, limit_bytes: int | None = None) -> dict[str, Any]:
    """The worker's figures for one file in a fresh process (under a memory cap when given)."""
    argv = [sys.executable, "-m", "bench.imports", "worker", str(path), "--at-once", str(at_once)]
    if limit_bytes is None:
        import subprocess

        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"worker failed ({done.returncode}): {done.stderr[-2000:]}")
        return dict(json.loads(done.stdout))
    capped = run_capped(argv, limit_bytes, timeout_s=900)
    doc: dict[str, Any] = json.loads(capped.stdout) if capped.returncode == 0 else {}
    return doc | {
        "returncode": capped.returncode,
        "oom_kills": capped.oom_kills,
        "killed": capped.killed,
        "cgroup": capped.cgroup,
        "cgroup_peak_mib": round(capped.peak_bytes / MIB, 1),
        "limit_mib": round(limit_bytes / MIB),
        "stderr": capped.stderr[-500:] if capped.returncode else "",
    }


def run(out_dir: Path) -> dict[str, Any]:
    paths = files(out_dir / "files")
    print("one import per process: peak resident memory over the process before the body was read")
    print(f"  {'file':12} {'MiB':>6} {'points':>7} {'+RSS MiB':>9} {'multiple':>8} {'s':>6}")
    single: dict[str, Any] = {}
    for name, path in paths.items():
        doc = measure(path)
        size_mib = doc["file_bytes"] / MIB
        doc["multiple"] = round(doc["increase_mib"] / size_mib, 2)
        doc["bytes_per_point"] = round(doc["increase_mib"] * MIB / doc["points"][0])
        single[name] = doc
        print(
            f"  {name:12} {size_mib:>6.2f} {doc['points'][0]:>7,} {doc['increase_mib']:>9.1f} "
            f"{doc['multiple']:>7.2f}x {doc['seconds']:>6.2f}"
        )
    limit = pod_memory_limit("summary")
    print(f"{AT_ONCE_UNDER_CAP} imports at once, capped at the summary pod's limit ({limit // MIB} MiB):")
    capped: dict[str, Any] = {}
    for name in ("gpx", "tcx", "gpx densest"):
        doc = capped[name] = measure(paths[name], AT_ONCE_UNDER_CAP, limit)
        verdict = "KILLED" if doc["killed"] else ("ok" if doc["returncode"] == 0 else f"failed {doc['returncode']}")
        print(
            f"  {name:12} {verdict:6} RSS before {doc.get('rss_before_mib', 0):>6.1f} MiB, "
            f"peak {doc.get('rss_peak_mib', 0):>6.1f} MiB (cgroup {doc['cgroup']} peak {doc['cgroup_peak_mib']} MiB) "
            f"in {doc.get('seconds', 0):.1f} s"
        )
    out = out_dir / f"imports-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"one_at_a_time": single, "under_the_pod_cap": capped}, indent=2) + "\n")
    print(f"figures: {out}")
    return {"one_at_a_time": single, "under_the_pod_cap": capped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.imports")
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("worker", help="imports of one file at once in this process; JSON figures on stdout")
    w.add_argument("file", type=Path)
    w.add_argument("--at-once", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(worker(args.file, args.at_once)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
