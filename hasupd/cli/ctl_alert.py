"""``hasupctl alert silence TARGET DURATION [--reason R]`` and ``alert list``: parsing and printing only
(``alert test`` lives in ctl.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from hasupd.control.client import ControlError, call, socket_path


def add_alert_commands(verbs: Any) -> None:
    """Add ``silence`` and ``list`` to the ``alert`` command's verbs."""
    silence = verbs.add_parser(
        "silence",
        help="no alerts about TARGET (service, event or alert name, error group) for DURATION; 0s lifts it",
    )
    silence.add_argument("target", metavar="TARGET")
    silence.add_argument("duration", metavar="DURATION", help="30m, 2h, 1d ...")
    silence.add_argument("--reason", default="", help="why (kept with the silence and in the audit record)")
    listed = verbs.add_parser(
        "list", help="silences in force, alerts waiting for delivery, latest alert records"
    )
    for p in (silence, listed):
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def run_alert_command(args: argparse.Namespace) -> int:
    """Run ``alert silence`` or ``alert list``; return the exit code."""
    request: dict[str, Any] = {}
    if args.alert_command == "silence":
        request = {"target": args.target, "duration": args.duration, "reason": args.reason}
    try:
        data = call(socket_path(args.socket), f"alert-{args.alert_command}", request)
    except ControlError as error:
        print(f"hasupctl: {error}", file=sys.stderr)
        return error.code
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.alert_command == "silence":
        if data["lifted"]:
            print(f"silence of {data['target']} lifted")
        else:
            print(f"alerts about {data['target']} silenced until {_when(data['until'])}")
    else:
        _print_list(data)
    return 0


def _print_list(data: dict[str, Any]) -> None:
    print("silences:" if data["silences"] else "silences: none")
    for s in data["silences"]:
        reason = f": {s['reason']}" if s["reason"] else ""
        print(f"  {s['target']:<24} until {_when(s['until'])} (by {s['by']}){reason}")
    print(f"pending: {len(data['pending'])} message(s)" if data["pending"] else "pending: none")
    for p in data["pending"]:
        print(f"  {_when(p['created'])}  {p['channel']:<12} {p['attempts']} attempt(s)  {p['subject']}")
    print("recent:" if data["recent"] else "recent: none")
    for r in data["recent"]:
        print(f"  {_when(r['time'])}  {r['event']:<16} {r['message']}")
