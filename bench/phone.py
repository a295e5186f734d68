"""`scripts/bench phone`: what the Kotlin phone library (clients/kotlin, through `scripts/phone`) costs.

- CPU per point: the phone records a generated route of --minutes at --rate fixes a second through
  Envoy over TLS, and a route of --baseline-minutes the same way in the same run; the difference in
  the phone's CPU (user + system, its JVM included) over the difference in points is the cost of a
  point, the JVM's start, the first stream and STOP RUN taken away.
- Bytes on the wire per point: the phone's connection runs through a Toxiproxy, whose metrics count
  the bytes each way (TLS, HTTP/2 and gRPC framing, the token, the acknowledgements and STOP RUN all
  included), over the same difference in points. Beside them, no transport: one point as a protobuf
  message in its gRPC frame, and the same point as the JSON the web API speaks.
- The library's jar and its runtime dependencies, in bytes.
Figures go to .dev/bench/phone-<time>.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from devstack import phone as phone_cli
from devstack import procs
from devstack.paths import ROOT
from devstack.stack import Stack
from devstack.toxiproxy import Toxiproxy
from runtrack.v1 import tracking_pb2

KOTLIN = ROOT / "clients" / "kotlin"


def record(stack: Stack, toxiproxy: Toxiproxy, minutes: float, rate: float, work: Path) -> dict[str, float]:
    """One run of `scripts/phone record` through a fresh proxy: its points, CPU seconds, wall seconds and
    the bytes each way."""
    name = f"bench-phone-{time.monotonic_ns()}"
    proxy = toxiproxy.create_proxy(name, procs.free_port(), stack.envoy_tls_address)
    argv = [str(ROOT / "scripts" / "phone"), "record", "--minutes", repr(minutes), "--rate", repr(rate)]
    argv += ["--endpoint", proxy.listen, "--ca", str(stack.tls_ca), "--queue", str(work / f"{name}.db")]
    argv += ["--user", f"bench-phone-{os.getpid()}"]
    started = time.monotonic()
    with (work / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=dict(os.environ, RUNTRACK_STACK=""))
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"the phone failed ({status}): {(work / f'{name}.log').read_text()[-2000:]}")
    carried = toxiproxy.bytes_carried(name)
    return {
        "points": round(minutes * 60),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": wall,
        "up_bytes": carried.get("upstream", 0.0),
        "down_bytes": carried.get("downstream", 0.0),
    }


def encodings() -> dict[str, int]:
    """One point of a phone (a fix with altitude, heart rate, cadence and speed) as bytes, no transport."""
    point = tracking_pb2.TrackPoint(
        seq=1234,
        latitude=48.856613,
        longitude=2.352222,
        altitude_m=35.2,
        horizontal_accuracy_m=4.5,
        speed_mps=3.25,
        heart_rate_bpm=142,
        cadence_spm=172,
    )
    point.time.FromMicroseconds(1_776_493_800_123_456)
    message = tracking_pb2.RecordTrackRequest(points=[point]).SerializeToString()
    as_json = json.dumps(json_format.MessageToDict(point), separators=(",", ":"))
    return {"protobuf_message": len(message), "grpc_frame": 5 + len(message), "json": len(as_json.encode())}


def jar_sizes() -> dict[str, int]:
    jars = sorted(KOTLIN.glob("target/runtrack-client-*.jar"))
    runtime = [Path(p) for p in (phone_cli.BUILT / "classpath.txt").read_text().strip().split(os.pathsep) if p]
    library = jars[-1].stat().st_size if jars else 0
    return {"library_jar": library, "with_runtime_dependencies": library + sum(p.stat().st_size for p in runtime)}


def run(stack: Stack, minutes: float, baseline_minutes: float, rate: float, out_dir: Path) -> dict[str, Any]:
    phone_cli.classpath()  # compiled before anything is timed
    # The jar measured below; Maven's output shown only on a failure.
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(KOTLIN / "pom.xml"), "package", "-DskipTests"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with tempfile.TemporaryDirectory(prefix="bench-phone-") as tmp:
        work = Path(tmp)
        toxiproxy = Toxiproxy(work, stack.spec.logs / "bench-toxiproxy.log", api_port=procs.free_port()).start()
        try:
            base = record(stack, toxiproxy, baseline_minutes, rate, work)
            full = record(stack, toxiproxy, minutes, rate, work)
        finally:
            toxiproxy.stop()
    points = full["points"] - base["points"]
    per_point = {
        "cpu_us": (full["cpu_s"] - base["cpu_s"]) / points * 1e6,
        "up_bytes": (full["up_bytes"] - base["up_bytes"]) / points,
        "down_bytes": (full["down_bytes"] - base["down_bytes"]) / points,
    }
    result: dict[str, Any] = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rate_hz": rate,
        "baseline": base,
        "run": full,
        "per_point": per_point,
        "encodings": encodings(),
        "sizes": jar_sizes(),
    }
    print(f"phone at {rate:g} fixes/s: {base['points']} and {full['points']} points recorded, TLS through Envoy")
    for label, r in (("baseline", base), ("run", full)):
        print(
            f"  {label:8} {r['points']:6d} points  CPU {r['cpu_s']:6.2f} s  wall {r['wall_s']:6.1f} s  "
            f"up {r['up_bytes'] / 1024:8.1f} KiB  down {r['down_bytes'] / 1024:8.1f} KiB"
        )
    print(
        f"  per point (the difference): CPU {per_point['cpu_us']:.0f} us, "
        f"up {per_point['up_bytes']:.1f} B, down {per_point['down_bytes']:.1f} B on the wire"
    )
    enc = result["encodings"]
    print(
        f"  one point, no transport: protobuf {enc['protobuf_message']} B ({enc['grpc_frame']} B in its gRPC frame), "
        f"JSON {enc['json']} B ({enc['json'] / enc['grpc_frame']:.1f}x)"
    )
    sizes = result["sizes"]
    print(
        f"  library jar {sizes['library_jar'] / 1024:.0f} KiB; "
        f"with its runtime dependencies {sizes['with_runtime_dependencies'] / 1024 / 1024:.1f} MiB"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"phone-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"figures: {path}")
    return result
