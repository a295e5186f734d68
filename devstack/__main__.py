"""scripts/dev: up [--autoscale] | status [--json] | down | scale tracking=N summary=M | rollout |
autoscale [--min N] [--max N] [--target SERVICE=VALUE]... | token USER | owners [--json] [--claim] |
backup [--full] | restore --to TIME | trails [--json]."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading

from devstack import host
from devstack.autoscale import DEFAULT_TARGETS, UNITS, Autoscaler, Policy
from devstack.stack import SERVICES, Stack, backup_test_spec, cluster_test_spec, dev_spec, metrics_port, test_spec


def add_autoscale_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min", type=int, default=1, help="fewest replicas of each service (default 1)")
    parser.add_argument("--max", type=int, default=8, help="most replicas of each service (default 8)")
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="SERVICE=VALUE",
        help=f"load per replica to aim at: tracking in open streams (default {DEFAULT_TARGETS['tracking']:g}),"
        f" summary in calls/s (default {DEFAULT_TARGETS['summary']:g})",
    )
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between rounds (default 5)")
    parser.add_argument(
        "--window", type=float, default=60.0, help="scale-down stabilisation window in seconds (default 60)"
    )


def autoscale_args(args: argparse.Namespace) -> list[str]:
    """The options again, for the background process `up --autoscale` starts."""
    out = [
        "--min",
        str(args.min),
        "--max",
        str(args.max),
        "--interval",
        str(args.interval),
        "--window",
        str(args.window),
    ]
    for target in args.target:
        out += ["--target", target]
    return out


def policies(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Policy]:
    targets = dict(DEFAULT_TARGETS)
    for item in args.target:
        svc, _, value = item.partition("=")
        try:
            targets[svc] = float(value)
        except ValueError:
            parser.error(f"--target {item!r}: expected SERVICE=VALUE with a number")
        if svc not in SERVICES or targets[svc] <= 0:
            parser.error(f"--target {item!r}: SERVICE is tracking or summary, VALUE > 0")
    if not 1 <= args.min <= args.max:
        parser.error("--min and --max: 1 <= min <= max")
    return {
        svc: Policy(target=targets[svc], min_replicas=args.min, max_replicas=args.max, scale_down_window_s=args.window)
        for svc in SERVICES
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev", description="Run RunTrack on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install what is missing, start everything, wait until healthy")
    up.add_argument("--autoscale", action="store_true", help="also start the autoscaler in the background")
    up.add_argument(
        "--cql-nodes", type=int, choices=(1, 3), help="local CQL nodes: 1, or 3 on 127.0.0.1-3 as one cluster (RF 3)"
    )
    up.add_argument(
        "--pg-nodes",
        type=int,
        choices=(1, 2),
        help="local PostgreSQL: 1, or 2 (a primary and a synchronous standby, failed over by Patroni)",
    )
    add_autoscale_options(up)
    status = sub.add_parser("status", help="what is running, and each replica's load")
    status.add_argument(
        "--json", action="store_true", help="every process, and which PostgreSQL node is the primary, as JSON"
    )
    autoscale = sub.add_parser("autoscale", help="set replica counts from the replicas' metrics (foreground)")
    add_autoscale_options(autoscale)
    sub.add_parser("down", help="stop everything scripts/dev started")
    scale = sub.add_parser("scale", help="add or remove replicas while traffic flows (Envoy keeps running)")
    scale.add_argument("counts", nargs="+", metavar="SERVICE=N", help="tracking=N and/or summary=M")
    sub.add_parser("rollout", help="restart every replica one at a time, health-checked")
    sub.add_parser("migrate", help="bring both stores' schemas up to this checkout's (up does it too)")
    token = sub.add_parser("token", help="print a token for USER, signed by the local stack's key")
    token.add_argument("user", metavar="USER")
    token.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (default 3600)")
    token.add_argument("--url", action="store_true", help="print the web page's sign-in URL instead")
    owners = sub.add_parser("owners", help="list runs whose two stores disagree on their owner")
    owners.add_argument("--json", action="store_true", help="one JSON document")
    owners.add_argument("--claim", action="store_true", help="claim unclaimed runs for their dashboard row's runner")
    backup = sub.add_parser("backup", help="back up both stores (a set: PostgreSQL and the CQL store) and print where")
    backup.add_argument("--full", action="store_true", help="a full set, not incremental on the last")
    backup.add_argument("--json", action="store_true", help="the set's manifest as JSON")
    restore = sub.add_parser(
        "restore", help="restore both stores: PostgreSQL to TIME, the CQL store to its last snapshot before"
    )
    restore.add_argument("--to", required=True, metavar="TIME", help="ISO 8601 (UTC unless it has an offset)")
    restore.add_argument("--json", action="store_true", help="what was done as JSON")
    trails = sub.add_parser("trails", help="list dashboard rows whose trail is missing or shorter than point_count")
    trails.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args(argv)
    # RUNTRACK_STACK=test: the stack scripts/test runs (its own ports and keys), e.g. for a look at it.
    specs = {"test": test_spec, "test-cluster": cluster_test_spec, "test-backup": backup_test_spec}
    spec = specs.get(os.environ.get("RUNTRACK_STACK", ""), dev_spec)()
    if args.command == "up" and args.cql_nodes:
        spec = dataclasses.replace(spec, cql_nodes=args.cql_nodes)
    if args.command == "up" and args.pg_nodes:
        spec = dataclasses.replace(spec, pg_nodes=args.pg_nodes)
    stack = Stack(spec)
    if args.command == "up":
        host.preflight("dev")
        stack.up()
        if args.autoscale:
            policies(args, parser)  # refuse bad options here, not in the background
            pid = stack.start_autoscaler(autoscale_args(args))
            print(f"  autoscaler:     pid {pid}, log {stack.spec.logs / 'autoscale.log'}")
        print(f"RunTrack is up.\n  gRPC and JSON:  {stack.envoy_address}  (Envoy, plaintext: this machine only)")
        print(f"  over TLS:       {stack.envoy_tls_address}  (trust the local CA: {stack.tls_ca})")
        print(f"  Envoy admin:    {stack.admin_url}")
        print(
            f"  CQL store:      {stack.scylla_hosts} port {stack.scylla_port}\n  PostgreSQL:     {stack.database_url}"
        )
        print(f"  logs:           {stack.spec.logs}")
        if stack.traces is not None:
            print(
                f"  traces:         {stack.traces.ui}  (Jaeger's API; send `x-client-trace-id` to have a call traced)"
            )
        print(
            "  dashboards:     .venv/bin/python -m devstack.monitoring up  (Prometheus and Alertmanager on this "
            "stack; prints each dashboard's queries as a Prometheus graph page)"
        )
    elif args.command == "status":
        if args.json:
            print(json.dumps({"processes": stack.processes(), "postgres": stack.postgres()}, indent=2))
        else:
            for name, where, state in stack.status():
                print(f"{name:18} {where:24} {state}")
            primary = stack.postgres()["primary"]
            if primary is None:
                print("PostgreSQL primary: none now (a failover under way, or PostgreSQL is down)")
            elif primary["pid"] is None and primary["address"] != "DATABASE_URL":
                print(f"PostgreSQL primary: none running ({primary['address']} is stopped)")
            else:
                print(f"PostgreSQL primary: {primary['address']} (pid {primary['pid'] or '-'})")
    elif args.command == "autoscale":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        chosen = policies(args, parser)
        for svc, policy in chosen.items():
            print(f"autoscale {svc}: target {policy.target:g} {UNITS[svc]}", file=sys.stderr)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        Autoscaler(
            chosen,
            replicas=stack.replica_ports,
            scale=stack.scale,
            metrics_port=metrics_port,
            interval_s=args.interval,
        ).run(stop)
    elif args.command == "scale":
        counts: dict[str, int] = {}
        for item in args.counts:
            svc, _, n = item.partition("=")
            if svc not in SERVICES or not n.isdigit() or int(n) < 1:
                parser.error(f"{item!r}: expected tracking=N or summary=N with N >= 1")
            counts[svc] = int(n)
        stack.scale(counts)
        print(", ".join(f"{svc}: {len(p)} replicas" for svc, p in stack.replica_ports().items()))
    elif args.command == "migrate":
        stack.migrate()
    elif args.command == "rollout":
        stack.migrate()  # the new replicas' schema first, as a deployment does
        stack.rollout()
        print("rollout done: " + ", ".join(f"{svc} on {p}" for svc, p in stack.replica_ports().items()))
    elif args.command == "token":
        stack.issuer.ensure_keys()
        jwt = stack.issuer.token(args.user, ttl_s=args.ttl)
        print(f"http://{stack.envoy_address}/#token={jwt}" if args.url else jwt)
    elif args.command == "owners":
        from devstack.owners import check

        checked, found = check(stack, claim=args.claim)
        if args.json:
            print(json.dumps({"runs_checked": checked, "disagreements": [d.as_dict() for d in found]}, indent=2))
        else:
            for d in found:
                print(
                    f"{d.run_id}  {d.kind:15} dashboard={d.dashboard_owner} owner_of_record={d.owner_of_record or '-'}"
                )
            print(f"{checked} runs checked, {len(found)} disagree")
        return 1 if found else 0
    elif args.command == "backup":
        from devstack.backup import backup as take_backup

        host.preflight("dev")
        m = take_backup(stack, full=args.full)
        if args.json:
            print(json.dumps(m, indent=2))
        else:
            pg, cql = m["postgres"], m["cql"]
            print(f"backup set {m['id']} ({cql['kind']}) in {m['seconds']:.1f}s, repository {m['repository']}")
            print(
                f"  PostgreSQL: Barman backup {pg['backup_id']} ({pg['kind']}, {pg['size_bytes'] / 2**20:.1f} MiB,"
                f" {pg['seconds']:.1f}s), WAL archived continuously: restorable to any time since"
            )
            print(
                f"  CQL store:  {m['repository']}/cql/{m['id']} ({cql['files']} files,"
                f" {cql['size_bytes'] / 2**20:.1f} MiB, {cql['seconds']:.1f}s), matches PostgreSQL at"
                f" {cql['postgres_lsn']} / {cql['taken_at']}"
            )
            print(f"  manifest:   {m['repository']}/sets/{m['id']}.json")
    elif args.command == "restore":
        from devstack.backup import parse_time
        from devstack.backup import restore as do_restore

        host.preflight("dev")
        done = do_restore(stack, parse_time(args.to))
        if args.json:
            print(json.dumps(done, indent=2))
        else:
            t = done["timings"]
            print(f"restored to {done['to']} in {t['total_s']:.1f}s")
            print(f"  PostgreSQL: from Barman backup {done['postgres_backup']} + WAL ({t['postgres_s']:.1f}s)")
            print(
                f"  CQL store:  set(s) {', '.join(done['cql_sets'])}, snapshot of {done['cql_snapshot_taken_at']}"
                f" ({t['cql_s']:.1f}s)"
            )
            for f in done["trail_findings"]:
                print(f"  {f['run_id']}  {f['kind']:14} point_count={f['point_count']} stored={f['points_stored']}")
            print(f"  {done['runs_checked']} runs checked, {len(done['trail_findings'])} with a trail missing or short")
        return 1 if done["trail_findings"] else 0
    elif args.command == "trails":
        from devstack.trails import check as check_trails

        checked, trail_findings = check_trails(stack)
        if args.json:
            print(json.dumps({"runs_checked": checked, "findings": [f.as_dict() for f in trail_findings]}, indent=2))
        else:
            for f in trail_findings:
                print(f"{f.run_id}  {f.kind:14} point_count={f.point_count} stored={f.points_stored}")
            print(f"{checked} runs checked, {len(trail_findings)} with a trail missing or short")
        return 1 if trail_findings else 0
    elif args.command == "down":
        stack.down()
        print("RunTrack is down.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
