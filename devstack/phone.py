"""`scripts/phone record`: one run recorded through the Kotlin phone library (clients/kotlin), against
the local stack by default (CONTRACT §17).

    scripts/phone record --file F.gpx|F.tcx|F.fit | --minutes N [--rate HZ] [--endpoint HOST:PORT]
                         [--ca PEM | --plaintext] [--token T | --user U] [--queue PATH] [--time-zone ZONE]

This side turns the file (read by the server's own reader, summary_service.activity_files) or a
generated route (devstack.activity_files.synthetic_run, the same for the same N) into fixes, one line
each, and hands them on standard input to the library's command-line phone
(clients/kotlin/src/main/kotlin/dev/runtrack/client/phone/Phone.kt), which becomes this process: it
records them at --rate fixes a second with RunRecorder and SqlitePointQueue, prints the queue and the
server's cursor on standard error as it goes, sends STOP RUN and prints the run id on standard output.

The queue is a file (default `.dev/phone/queue.db`): a phone killed mid-run and started again with the
same input and queue takes its run up. The library is compiled (and Maven asked for its runtime
classpath) when its sources changed since the last time; the first build fetches from Maven Central.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from devstack.paths import PROTOS, ROOT, once_per_machine
from devstack.stack import Stack, StackSpec, backup_test_spec, cluster_test_spec, dev_spec, test_spec

KOTLIN = ROOT / "clients" / "kotlin"
POM = KOTLIN / "pom.xml"
CLASSES = KOTLIN / "target" / "classes"
# What `record` last built from: the classpath Maven resolved, and the digest of the sources it compiled.
BUILT = KOTLIN / "target" / "phone"
MAIN_CLASS = "dev.runtrack.client.phone.Phone"
# The generated route starts here before it is moved to the phone's clock: the same N, the same route.
ROUTE_START = dt.datetime(2026, 4, 18, 6, 30, tzinfo=dt.UTC)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class PhoneFix:
    """One fix as the phone's sensors give it; `after_pause`: the first after the runner paused."""

    time_us: int
    latitude: float
    longitude: float
    altitude_m: float | None = None
    heart_rate_bpm: int | None = None
    cadence_spm: int | None = None
    speed_mps: float | None = None
    after_pause: bool = False

    def line(self) -> str:
        """The tab-separated line Phone.kt reads (an empty field: not measured)."""
        fields = (
            self.time_us,
            self.latitude,
            self.longitude,
            self.altitude_m,
            self.heart_rate_bpm,
            self.cadence_spm,
            self.speed_mps,
        )
        return "\t".join("" if v is None else repr(v) for v in fields) + ("\t1" if self.after_pause else "\t0")


def fixes_of_file(path: Path) -> list[PhoneFix]:
    """The trail a GPX, TCX or FIT file holds, read as the server reads an imported file (its pauses kept)."""
    from runtrack_common.errors import InvalidArgument
    from summary_service.activity_files import read_file

    try:
        file = read_file(path.read_bytes(), now_us=time.time_ns() // 1000)
    except InvalidArgument as err:
        raise SystemExit(f"{path}: {err}") from None
    return [
        PhoneFix(
            p.time_us,
            p.latitude,
            p.longitude,
            p.altitude_m,
            p.heart_rate_bpm,
            p.cadence_spm,
            p.speed_mps,
            p.after_pause,
        )
        for p in file.points
    ]


def fixes_of_route(minutes: float) -> list[PhoneFix]:
    """A run of `minutes` at one fix a second (pace about 5 min/km, hills, heart rate): the same each time."""
    from devstack.activity_files import synthetic_run

    n = max(2, round(minutes * 60))
    return [
        PhoneFix(
            int(f.time.timestamp() * 1_000_000),
            f.latitude,
            f.longitude,
            f.altitude_m,
            f.heart_rate_bpm,
            f.cadence_spm,
        )
        for f in synthetic_run(n, start=ROUTE_START)
    ]


def write_fixes(fixes: Iterable[PhoneFix], out: IO[str]) -> None:
    for fix in fixes:
        out.write(fix.line() + "\n")


def _sources() -> Iterator[Path]:
    yield POM
    yield from sorted(p for p in (KOTLIN / "src" / "main").rglob("*") if p.is_file())
    yield from sorted(PROTOS.rglob("*.proto"))


def sources_digest() -> str:
    """What the build reads: the pom, the library's main sources and the protos it generates from."""
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def classpath() -> str:
    """The phone's classpath: target/classes and the runtime jars, built first when the sources changed
    since the last build (compile, and Maven's runtime classpath written to target/phone/)."""
    stamp, jars = BUILT / "sources.sha256", BUILT / "classpath.txt"
    with once_per_machine(f"phone-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"):
        want = sources_digest()
        fresh = stamp.exists() and stamp.read_text() == want and jars.exists()
        if not fresh or not (CLASSES / "dev" / "runtrack" / "client" / "phone" / "Phone.class").exists():
            _build(jars)
            stamp.write_text(want)
    return f"{CLASSES}{os.pathsep}{jars.read_text().strip()}"


def _build(jars: Path) -> None:
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise SystemExit(f"the phone is built with Maven and runs on Java 17: put `{tool}` on PATH")
    say("setup: compiling the Kotlin phone library (clients/kotlin, mvn compile)")
    BUILT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    build = [
        "nice",
        "-n",
        "19",
        "mvn",
        "-q",
        "-B",
        "-f",
        str(POM),
        "compile",
        "dependency:build-classpath",
        f"-Dmdep.outputFile={jars}",
        "-DincludeScope=runtime",
    ]
    # Quiet, its output shown only on a failure (Debian's Maven 3.8 writes colour codes even when quiet).
    done = subprocess.run(build, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout)
        raise SystemExit(f"building the phone failed (mvn exited {done.returncode})")
    say(f"setup: compiled in {time.monotonic() - started:.0f} s")


def stack_spec() -> StackSpec:
    """The stack `scripts/dev` runs, or the one RUNTRACK_STACK names (as scripts/dev reads it)."""
    specs = {"test": test_spec, "test-cluster": cluster_test_spec, "test-backup": backup_test_spec}
    return specs.get(os.environ.get("RUNTRACK_STACK", ""), dev_spec)()


def record(args: argparse.Namespace) -> None:
    """Becomes the Kotlin phone, its standard input the fixes."""
    fixes = fixes_of_file(args.file) if args.file else fixes_of_route(args.minutes)
    stack = Stack(stack_spec())
    endpoint = args.endpoint or stack.envoy_tls_address
    if args.endpoint is None and stack.envoy_pid() is None:
        say(f"warning: the stack's Envoy ({endpoint}) is not running (`scripts/dev up`): the points wait in the queue")
    argv = [
        "--endpoint",
        endpoint,
        "--rate",
        repr(args.rate),
        "--queue",
        str(args.queue or stack.spec.state / "phone" / "queue.db"),
    ]
    if args.plaintext:
        argv.append("--plaintext")
    else:
        ca = args.ca or stack.tls_ca
        if not ca.is_file():
            raise SystemExit(f"{ca}: no such CA file (the local stack's is made by `scripts/dev up`)")
        argv += ["--ca", str(ca)]
    if args.time_zone:
        argv += ["--time-zone", args.time_zone]
    token = args.token
    if token is None:
        stack.issuer.ensure_keys()
        # Long enough for the whole run and its sync: the library sends the same token on every call.
        token = stack.issuer.token(args.user, ttl_s=max(3600, int(2 * len(fixes) / args.rate) + 600))
    java = ["java", "-XX:+UseSerialGC", "-cp", classpath(), MAIN_CLASS, *argv]
    # The fixes on standard input, from a file gone from the directory as soon as it is open; then
    # this process becomes the phone (its pid is the phone's: a signal to it reaches the recorder).
    with tempfile.TemporaryFile("w+", encoding="utf-8") as lines:
        write_fixes(fixes, lines)
        lines.flush()
        lines.seek(0)
        os.dup2(lines.fileno(), sys.stdin.fileno())
    sys.stdout.flush()
    os.execvpe("java", java, dict(os.environ, RUNTRACK_TOKEN=token))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/phone", description="A phone recording runs through clients/kotlin.")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record one run, STOP RUN, print its id")
    source = rec.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, metavar="F", help="a GPX, TCX or FIT file to record, pauses and all")
    source.add_argument("--minutes", type=float, metavar="N", help="a generated run of N minutes (one fix a second)")
    rec.add_argument("--rate", type=float, default=1.0, metavar="HZ", help="fixes recorded a second (default 1)")
    rec.add_argument("--endpoint", metavar="HOST:PORT", help="default: the local stack's Envoy over TLS")
    tls = rec.add_mutually_exclusive_group()
    tls.add_argument(
        "--ca", type=Path, metavar="PEM", help="CAs to trust (default: the local stack's, .dev/tls/ca.pem)"
    )
    tls.add_argument(
        "--plaintext", action="store_true", help="HTTP/2 without TLS (Envoy's port 8080, this machine only)"
    )
    who = rec.add_mutually_exclusive_group()
    who.add_argument(
        "--token", metavar="T", help="the bearer token (default: one for --user, signed by the stack's key)"
    )
    who.add_argument("--user", default="ada", metavar="U", help="the runner a token is signed for (default ada)")
    rec.add_argument("--queue", type=Path, metavar="PATH", help="the phone's queue file (default .dev/phone/queue.db)")
    rec.add_argument(
        "--time-zone", metavar="ZONE", help="the runner's IANA zone, for weekly stats (default the system's)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 1000:
        parser.error("--rate: a number of fixes a second in (0, 1000]")
    if args.minutes is not None and not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes: in (0, 1440]")
    record(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
