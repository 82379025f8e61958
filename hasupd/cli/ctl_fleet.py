"""``hasupctl fleet status|move NAME HOST|drain [HOST]``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from hasupd.control.client import ControlError, call, socket_path
from hasupd.control.protocol import Exit


def add_fleet_commands(sub: Any) -> None:
    fleet = sub.add_parser("fleet", help="the fleet: hosts, owners, tokens; planned moves")
    verbs = fleet.add_subparsers(dest="fleet_command", required=True, metavar="VERB")
    status = verbs.add_parser("status", help="hosts (alive, lease age) and each placed service's owner")
    move = verbs.add_parser("move", help="stop NAME on its owner, then let HOST take it")
    move.add_argument("name", metavar="NAME")
    move.add_argument("host", metavar="HOST")
    drain = verbs.add_parser("drain", help="move every placed service away from HOST (default: this host)")
    drain.add_argument("host", nargs="?", metavar="HOST")
    for p in (status, move, drain):
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _since(when: float | None) -> str:
    if when is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def run_fleet_command(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {}
    if args.fleet_command == "move":
        request = {"name": args.name, "host": args.host}
    elif args.fleet_command == "drain" and args.host:
        request = {"host": args.host}
    try:
        data = call(socket_path(args.socket), f"fleet-{args.fleet_command}", request)
    except ControlError as error:
        print(f"hasupctl: {error}", file=sys.stderr)
        return error.code
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.fleet_command == "status":
        state = "joined" if data["joined"] else f"NOT JOINED ({data['refused'] or 'etcd unreachable'})"
        print(f"fleet {data['cluster']}, this host {data['host']}: {state}")
        for h in data["hosts"]:
            age = "-" if h["lease_age_sec"] is None else f"{h['lease_age_sec']}s"
            alive = "alive" if h["alive"] else "gone"
            print(f"  host {h['host']:<16} {alive:<6} lease age {age}{'  drained' if h['drained'] else ''}")
        for s in data["services"]:
            owner = s["owner"] or "NO OWNER"
            print(f"  {s['slot']:<24} {owner:<16} token {s['token'] or '-':<8} since {_since(s['since'])}")
    elif args.fleet_command == "move":
        print(f"{data['service']}: {data['before']} -> {data['after']} in {data['seconds']}s")
    else:
        for moved in data["moved"]:
            print(f"{moved['service']}: {moved['before']} -> {moved['after']} in {moved['seconds']}s")
        if not data["moved"]:
            print(f"{data['host']}: drained (it owned no placed service)")
    return Exit.OK
