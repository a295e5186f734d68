"""scripts/dev: up | status | down | scale tracking=N summary=M | rollout | token USER."""

from __future__ import annotations

import argparse
import os
import sys

from devstack.stack import SERVICES, Stack, dev_spec, test_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev", description="Run RunTrack on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="install what is missing, start everything, wait until healthy")
    sub.add_parser("status", help="what is running")
    sub.add_parser("down", help="stop everything scripts/dev started")
    scale = sub.add_parser("scale", help="add or remove replicas while traffic flows (Envoy keeps running)")
    scale.add_argument("counts", nargs="+", metavar="SERVICE=N", help="tracking=N and/or summary=M")
    sub.add_parser("rollout", help="restart every replica one at a time, health-checked")
    token = sub.add_parser("token", help="print a token for USER, signed by the local stack's key")
    token.add_argument("user", metavar="USER")
    token.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (default 3600)")
    token.add_argument("--url", action="store_true", help="print the web page's sign-in URL instead")
    args = parser.parse_args(argv)
    # RUNTRACK_STACK=test: the stack scripts/test runs (its own ports and keys), e.g. for a look at it.
    stack = Stack(test_spec() if os.environ.get("RUNTRACK_STACK") == "test" else dev_spec())
    if args.command == "up":
        stack.up()
        print(f"RunTrack is up.\n  gRPC and JSON:  {stack.envoy_address}  (Envoy)\n  Envoy admin:    {stack.admin_url}")
        print(
            f"  CQL store:      {stack.scylla_hosts} port {stack.scylla_port}\n  PostgreSQL:     {stack.database_url}"
        )
        print(f"  logs:           {stack.spec.logs}")
    elif args.command == "status":
        for name, where, state in stack.status():
            print(f"{name:18} {where:48} {state}")
    elif args.command == "scale":
        counts: dict[str, int] = {}
        for item in args.counts:
            svc, _, n = item.partition("=")
            if svc not in SERVICES or not n.isdigit() or int(n) < 1:
                parser.error(f"{item!r}: expected tracking=N or summary=N with N >= 1")
            counts[svc] = int(n)
        stack.scale(counts)
        print(", ".join(f"{svc}: {len(p)} replicas" for svc, p in stack.replica_ports().items()))
    elif args.command == "rollout":
        stack.rollout()
        print("rollout done: " + ", ".join(f"{svc} on {p}" for svc, p in stack.replica_ports().items()))
    elif args.command == "token":
        stack.issuer.ensure_keys()
        jwt = stack.issuer.token(args.user, ttl_s=args.ttl)
        print(f"http://{stack.envoy_address}/#token={jwt}" if args.url else jwt)
    elif args.command == "down":
        stack.down()
        print("RunTrack is down.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
