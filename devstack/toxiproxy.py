"""A bad network between a phone and the stack: Toxiproxy (a TCP proxy whose faults are set through an
HTTP API), built once per machine from the Go module proxy (the module in devstack/gomod/toxiproxy pins
it), run on loopback.

    proxy = Toxiproxy(state, log, api_port=8474).start().create_proxy("phone", 18443, "127.0.0.1:8443")
    proxy.cut()                                   # every connection refused until restore()
    proxy.slow(kbit_s=50, latency_ms=800)         # a weak mobile link
    with proxy.resets_every(20.0): ...            # every connection reset, every 20 s
    proxy.restore()                               # no fault, the proxy enabled

Toxics apply to the connections already open as well as to new ones. `upstream` is the phone's way
out (requests), `downstream` the answers. Version 2.12.0 is the newest that builds on this machine's
Go 1.26 (2.13.0 asks for Go 1.27). 2.13.0's notes fix a toxic's removal that could hang the API
when its connection was gone, and the bandwidth toxic with a rate <= 0 (never sent from here).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import gobuild, procs
from devstack.paths import ROOT, cache_dir

TOXIPROXY_VERSION = "v2.12.0"
GOMOD = ROOT / "devstack" / "gomod" / "toxiproxy"
PACKAGE = "github.com/Shopify/toxiproxy/v2/cmd/server"
UPSTREAM, DOWNSTREAM = "upstream", "downstream"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def toxiproxy_bin() -> Path:
    """toxiproxy-server, built when missing (once per machine and version; about a CPU-minute cold)."""
    return gobuild.command(
        cache_dir() / "bin" / f"toxiproxy-server-{TOXIPROXY_VERSION}",
        f"Toxiproxy ({TOXIPROXY_VERSION})",
        GOMOD,
        [PACKAGE],
        ldflags=f"-s -w -X github.com/Shopify/toxiproxy/v2.Version={TOXIPROXY_VERSION}",
    )


class ToxiproxyError(RuntimeError):
    """The API refused a request (its status and message)."""


@dataclass(frozen=True)
class Toxiproxy:
    """One toxiproxy-server: its HTTP API on 127.0.0.1:`api_port`, pid file under `state`/run."""

    state: Path
    log: Path
    api_port: int = 8474

    @property
    def pid_file(self) -> Path:
        return self.state / "run" / f"toxiproxy-{self.api_port}.pid"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def pid(self) -> int | None:
        pid = procs.read_pid(self.pid_file)
        return pid if procs.alive(pid) else None

    def start(self) -> Toxiproxy:
        """Starts the server unless it runs; it starts with no proxy (they live in its memory only)."""
        if self.pid() is None:
            # -proxy-metrics: the bytes each proxy carried each way, at /metrics (bytes_carried).
            argv = [str(toxiproxy_bin()), "-host", "127.0.0.1", "-port", str(self.api_port), "-proxy-metrics"]
            # Its default logs every chunk it forwards (trace): a line per request and proxy change is enough.
            env = dict(os.environ, LOG_LEVEL="info")
            pid = procs.start(argv, log=self.log, pid_file=self.pid_file, cwd=ROOT, env=env)
            procs.wait_until("Toxiproxy", self.ready, 30, log=self.log, pid=pid)
        return self

    def stop(self) -> None:
        procs.stop(self.pid(), timeout=10)

    def ready(self) -> bool:
        try:
            self._call("GET", "/version")
            return True
        except (OSError, ToxiproxyError):
            return False

    def version(self) -> str:
        return str(self._call("GET", "/version").get("version", ""))

    def create_proxy(self, name: str, listen_port: int, upstream: str, *, listen_host: str = "127.0.0.1") -> Proxy:
        """A proxy from `listen_host`:`listen_port` to `upstream` (HOST:PORT), enabled, with no toxic;
        one of the same name is replaced."""
        with contextlib.suppress(ToxiproxyError):
            self._call("DELETE", f"/proxies/{name}")
        body = {"name": name, "listen": f"{listen_host}:{listen_port}", "upstream": upstream, "enabled": True}
        self._call("POST", "/proxies", body)
        return Proxy(self, name, listen_host, listen_port, upstream)

    def proxies(self) -> dict[str, Any]:
        """Every proxy with its toxics, as the API shows them."""
        return dict(self._call("GET", "/proxies"))

    def bytes_carried(self, name: str) -> dict[str, float]:
        """Bytes proxy `name` has passed on, by direction ("upstream": the client's, "downstream": the
        server's), from its Prometheus metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.api + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "toxiproxy_proxy_sent_bytes":
                continue
            for sample in family.samples:
                if sample.labels.get("proxy") == name and sample.name.endswith("_total"):
                    out[sample.labels["direction"]] = out.get(sample.labels["direction"], 0.0) + sample.value
        return out

    def reset(self) -> None:
        """Every proxy enabled and every toxic removed."""
        self._call("POST", "/reset")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise ToxiproxyError(f"{method} {path}: {err.code} {err.read().decode(errors='replace').strip()}") from None
        return json.loads(raw) if raw else None


@dataclass(frozen=True)
class Proxy:
    server: Toxiproxy
    name: str
    listen_host: str
    listen_port: int
    upstream: str

    @property
    def listen(self) -> str:
        """What a client dials instead of `upstream`."""
        return f"{self.listen_host}:{self.listen_port}"

    def add_toxic(
        self, kind: str, attributes: dict[str, int], *, stream: str = DOWNSTREAM, name: str | None = None
    ) -> str:
        """Adds a toxic (`latency`, `bandwidth`, `timeout`, `reset_peer`, ... with its attributes) on
        one direction; returns its name."""
        name = name or f"{kind}_{stream}"
        body = {"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes}
        self.server._call("POST", f"/proxies/{self.name}/toxics", body)
        return name

    def remove_toxic(self, name: str) -> None:
        self.server._call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def toxics(self) -> list[dict[str, Any]]:
        return list(self.server._call("GET", f"/proxies/{self.name}/toxics"))

    def set_enabled(self, enabled: bool) -> None:
        """Disabled: the listener is closed and every connection through it with it (a full cut:
        connecting is refused); enabled again: it listens as before."""
        self.server._call("POST", f"/proxies/{self.name}", {"enabled": enabled})

    def cut(self) -> None:
        """A full cut: open connections closed, new ones refused."""
        self.set_enabled(False)

    def blackhole(self) -> None:
        """A cut that says nothing: the connections stay open and every byte is dropped, both ways
        (a phone in a tunnel); new connections are accepted and hear nothing. Removing it (`restore`)
        closes the connections it held: what they lost is gone with them."""
        for stream in (UPSTREAM, DOWNSTREAM):
            self.add_toxic("timeout", {"timeout": 0}, stream=stream, name=f"blackhole_{stream}")

    def slow(self, *, kbit_s: float = 50, latency_ms: int = 800, jitter_ms: int = 0) -> None:
        """A weak mobile link: both directions at most `kbit_s` (Toxiproxy counts whole KB/s of 1000
        bytes: 50 kbit/s is 6 KB/s, 48 kbit/s), and every answer `latency_ms` late."""
        rate = max(1, int(kbit_s * 1000 / 8 / 1000))  # a rate <= 0 would mean no limit (or hang, before 2.13)
        for stream in (UPSTREAM, DOWNSTREAM):
            self.add_toxic("bandwidth", {"rate": rate}, stream=stream)
        self.add_toxic("latency", {"latency": latency_ms, "jitter": jitter_ms}, stream=DOWNSTREAM)

    def restore(self) -> None:
        """No toxic, enabled."""
        for toxic in self.toxics():
            self.remove_toxic(toxic["name"])
        self.set_enabled(True)

    @contextlib.contextmanager
    def resets_every(self, seconds: float = 20.0) -> Iterator[None]:
        """While in the block, every `seconds` each connection through the proxy is closed (disabled,
        then enabled again at once): a phone's link dropping every `seconds` and coming straight back.
        Disabling closes the connections whether or not bytes flow on them; a `reset_peer` toxic
        (`add_toxic("reset_peer", {"timeout": 0})`) resets only those that send while it is there."""
        stop = threading.Event()

        def flap() -> None:
            while not stop.wait(seconds):
                self.set_enabled(False)
                self.set_enabled(True)

        thread = threading.Thread(target=flap, name=f"toxiproxy-{self.name}-resets", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.set_enabled(True)
