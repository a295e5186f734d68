"""scripts/dev: up | status | down."""

from __future__ import annotations

import argparse
import sys

from devstack.stack import Stack, dev_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev", description="Run RunTrack on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="install what is missing, start everything, wait until healthy")
    sub.add_parser("status", help="what is running")
    sub.add_parser("down", help="stop everything scripts/dev started")
    args = parser.parse_args(argv)
    stack = Stack(dev_spec())
    if args.command == "up":
        stack.up()
        print(f"RunTrack is up.\n  gRPC and JSON:  {stack.envoy_address}  (Envoy)\n  Envoy admin:    {stack.admin_url}")
        print(f"  CQL store:      {stack.scylla_hosts} port {stack.scylla_port}\n  PostgreSQL:     {stack.database_url}")
        print(f"  logs:           {stack.spec.logs}")
    elif args.command == "status":
        for name, where, state in stack.status():
            print(f"{name:18} {where:48} {state}")
    elif args.command == "down":
        stack.down()
        print("RunTrack is down.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
