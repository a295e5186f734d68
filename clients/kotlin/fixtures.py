"""Regenerates the test fixtures in src/test/resources/ (overview figures from the server's own
analysis, TLS certificates): `.venv/bin/python clients/kotlin/fixtures.py` from the repository root."""

from __future__ import annotations

import csv
import math
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from summary_service.activity_files.common import FilePoint  # noqa: E402
from summary_service.analysis import analyse, cumulative_distances  # noqa: E402
from summary_service.overview import overview_of, samples_of  # noqa: E402

RESOURCES = HERE / "src" / "test" / "resources"
OUT = RESOURCES / "overview"
START_US = 1_790_000_000_000_000  # 2026-09-21, any fixed instant
EARTH_M_PER_DEG = 111_320.0


@dataclass
class Walker:
    """A runner moving over the ground, whose fixes carry GPS noise."""

    rng: random.Random
    latitude: float
    longitude: float
    t_us: int = START_US
    heading: float = 0.0
    altitude: float | None = None

    def move(self, metres: float, turn_sd: float = 0.05) -> None:
        self.heading += self.rng.gauss(0, turn_sd)
        north, east = metres * math.cos(self.heading), metres * math.sin(self.heading)
        self.latitude += north / EARTH_M_PER_DEG
        self.longitude += east / (EARTH_M_PER_DEG * math.cos(math.radians(self.latitude)))

    def fix(
        self, noise_m: float, *, hr: int | None = None, alt_noise_m: float = 0.0, after_pause: bool = False
    ) -> FilePoint:
        jitter_lat = self.rng.gauss(0, noise_m) / EARTH_M_PER_DEG
        jitter_lon = self.rng.gauss(0, noise_m) / (EARTH_M_PER_DEG * math.cos(math.radians(self.latitude)))
        altitude = None if self.altitude is None else self.altitude + self.rng.gauss(0, alt_noise_m)
        return FilePoint(
            time_us=self.t_us,
            latitude=self.latitude + jitter_lat,
            longitude=self.longitude + jitter_lon,
            altitude_m=altitude,
            heart_rate_bpm=hr,
            cadence_spm=None,
            speed_mps=None,
            where="generated",
            after_pause=after_pause,
        )


def city_loop() -> Iterator[FilePoint]:
    """40 minutes in Paris at about 3 m/s, a minute standing at a crossing, heart rate throughout."""
    w = Walker(random.Random(1), 48.8566, 2.3522)
    for i in range(2400):
        standing = 1200 <= i < 1260
        w.t_us += 1_000_000 + w.rng.randint(-20_000, 20_000)
        if not standing:
            w.move(3.0 + w.rng.uniform(-0.4, 0.4))
        yield w.fix(0.3 if standing else 2.0, hr=140 + int(20 * math.sin(i / 300)) + w.rng.randint(-3, 3))


def pauses() -> Iterator[FilePoint]:
    """Buenos Aires: two pauses of the recorder (the runner moved 300 m and 5 minutes while paused),
    a heart-rate sensor that drops out for a while, altitudes with a little noise."""
    w = Walker(random.Random(2), -34.6037, -58.3816, altitude=25.0)
    for i in range(1800):
        after_pause = i in (600, 1200)
        if after_pause:
            w.t_us += 300_000_000
            w.move(300.0, turn_sd=0.0)
        w.t_us += 1_000_000
        w.move(2.8 + w.rng.uniform(-0.3, 0.3))
        w.altitude = 25.0 + 5 * math.sin(i / 200)
        hr = None if 900 <= i < 1000 else 150 + w.rng.randint(-5, 5)
        yield w.fix(1.5, hr=hr, alt_noise_m=0.8, after_pause=after_pause)


def hill_climb() -> Iterator[FilePoint]:
    """In the Alps: 300 m up over about 5 km and back down, GPS altitude noise of 3 m (some fixes
    without altitude), heart rate rising on the climb."""
    w = Walker(random.Random(3), 46.5197, 6.6323, altitude=400.0)
    for i in range(3600):
        w.t_us += 1_000_000
        climbing = i < 1800
        w.move(2.5 if climbing else 3.5, turn_sd=0.03)
        w.altitude = 400.0 + 300.0 * (i / 1800 if climbing else (3600 - i) / 1800)
        point = w.fix(2.0, hr=130 + (40 * i // 1800 if climbing else 20), alt_noise_m=3.0)
        yield _without_altitude(point) if i % 97 == 0 else point


def _without_altitude(p: FilePoint) -> FilePoint:
    return FilePoint(
        p.time_us, p.latitude, p.longitude, None, p.heart_rate_bpm, p.cadence_spm, p.speed_mps, p.where, p.after_pause
    )


def arctic_long() -> Iterator[FilePoint]:
    """Tromsø, 10,400 fixes (the polyline keeps every second one): uneven intervals, some fixes at the
    same instant, no heart rate."""
    w = Walker(random.Random(4), 69.6492, 18.9553, altitude=10.0)
    for i in range(10_400):
        w.t_us += 0 if i % 250 == 7 else w.rng.choice((1_000_000, 1_000_000, 2_000_000, 5_000_000))
        w.move(3.2 + w.rng.uniform(-0.5, 0.5), turn_sd=0.08)
        w.altitude = 10.0 + 30 * math.sin(i / 900)
        yield w.fix(2.5, alt_noise_m=1.5)


def standing() -> Iterator[FilePoint]:
    """Two minutes waiting at the start: fixes wander within a metre, nearly nothing counts as moving."""
    w = Walker(random.Random(5), 51.5007, -0.1246, altitude=12.0)
    for _ in range(120):
        w.t_us += 1_000_000
        yield w.fix(0.2, hr=90, alt_noise_m=0.5)


TRAILS = {
    "city_loop": city_loop,
    "pauses": pauses,
    "hill_climb": hill_climb,
    "arctic_long": arctic_long,
    "standing": standing,
}
POINT_COLUMNS = ["seq", "time_us", "latitude", "longitude", "altitude_m", "heart_rate_bpm", "after_pause"]
EXPECTED_COLUMNS = [
    "trail",
    "start_us",
    "end_us",
    "distance_m",
    "moving_time_us",
    "elevation_gain_m",
    "point_count",
    "avg_heart_rate_bpm",
    "polyline",
]


def blank(value: object) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def tls() -> None:
    """A CA, a server certificate it signed for localhost, and a stranger's self-signed one (valid for a
    century: the tests check trust, not expiry). The keys are thrown away: the tests need none."""
    out = RESOURCES / "tls"
    out.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "36500"]
    with tempfile.TemporaryDirectory() as tmp:

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

        openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=RunTrack test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        )
        openssl("req", *ec[:-2], "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
        Path(tmp, "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        openssl(
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "36500",
            "-extfile",
            "ext.cnf",
        )
        openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            "stranger.key",
            "-out",
            "stranger.pem",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        )
        for name in ("ca.pem", "server.pem", "stranger.pem"):
            shutil.copy(Path(tmp, name), out / name)


def main() -> None:
    tls()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, make in TRAILS.items():
        points = list(make())
        with (OUT / f"{name}.csv").open("w", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(POINT_COLUMNS)
            for seq, p in enumerate(points, 1):
                out.writerow(
                    [
                        seq,
                        p.time_us,
                        repr(p.latitude),
                        repr(p.longitude),
                        blank(p.altitude_m),
                        blank(p.heart_rate_bpm),
                        "1" if p.after_pause else "",
                    ]
                )
        samples = samples_of(points)
        cum = cumulative_distances(samples)
        o = overview_of(points, cum, analyse(samples, cum=cum))
        rows.append(
            [
                name,
                o.start_us,
                o.end_us,
                repr(o.distance_m),
                o.moving_time_us,
                repr(o.elevation_gain_m),
                o.point_count,
                blank(o.avg_heart_rate_bpm),
                o.polyline,
            ]
        )
    with (OUT / "expected.csv").open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar=None)
        out.writerow(EXPECTED_COLUMNS)
        out.writerows(rows)


if __name__ == "__main__":
    main()
