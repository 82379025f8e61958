"""``hasupctl backup run|list|status``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hasupd.control.client import ControlError, call, socket_path
from hasupd.control.protocol import Exit

KINDS = ("backup", "long_term", "check", "prune", "drill")


def add_backup_commands(sub: Any) -> None:
    backup = sub.add_parser("backup", help="run a backup job now, list snapshots, show job status")
    verbs = backup.add_subparsers(dest="backup_command", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="run a job now and wait for it")
    run.add_argument("job", metavar="JOB")
    run.add_argument("--kind", choices=KINDS, default="backup", help="which work (default: backup)")
    lst = verbs.add_parser("list", help="list the snapshots of one job or all")
    lst.add_argument("job", nargs="?", metavar="JOB")
    status = verbs.add_parser("status", help="last results, age of the newest good snapshot, next runs")
    status.add_argument("job", nargs="?", metavar="JOB")
    for p in (run, lst, status):
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run_backup_command(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"job": args.job} if args.job else {}
    if args.backup_command == "run":
        request["kind"] = args.kind
    try:
        data = call(socket_path(args.socket), f"backup-{args.backup_command}", request)
    except ControlError as error:
        print(f"hasupctl: {error}", file=sys.stderr)
        return error.code
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.backup_command == "list":
        for s in data:
            what = f"database {s['database']}" if s.get("database") else " ".join(s["paths"])
            print(f"{s['job']:<16} {s['id']:<10} {s['time']:<33} {what}")
    else:
        for job in data if isinstance(data, list) else [data]:
            age = "never" if job["age_sec"] is None else f"{job['age_sec']}s ago"
            print(f"{job['job']}: {job['state']} ({job['result']}), last good backup {age}")
            if job.get("restorable_as_of"):
                print(f"  restorable as of {job['restorable_as_of']} (the snapshot that last booted)")
            for kind, last in sorted(job["last"].items()):
                print(
                    f"  last {kind}: {'ok' if last['ok'] else 'FAILED'} at {last['time']}: {last['detail']}"
                )
            for kind, when in sorted(job["next"].items()):
                print(f"  next {kind}: {when}")
            if job.get("note"):
                print(f"  {job['note']}")
    return Exit.OK
