"""``hasupctl restore``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hasupd.control.client import ControlError, call, socket_path
from hasupd.control.protocol import Exit


def add_restore_command(sub: Any) -> None:
    p = sub.add_parser("restore", help="restore a backup job's data (admin)")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--snapshot", default="latest", help="snapshot id (default: latest)")
    p.add_argument("--path", help="only this path of the snapshot")
    p.add_argument("--database", metavar="NAME", help="restore this database of the job (see backup list)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="restore into this folder; nothing live is touched")
    where.add_argument(
        "--target-db",
        metavar="NEW",
        help="with --database: load into this new database; nothing live is touched",
    )
    where.add_argument(
        "--in-place",
        action="store_true",
        help="stage, verify, stop the job's quiesce services, swap (old data kept), start, check health",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and do nothing")


def run_restore_command(args: argparse.Namespace) -> int:
    request = {
        "job": args.job,
        "snapshot": args.snapshot,
        "path": args.path,
        "target": args.target,
        "in_place": args.in_place,
        "dry_run": args.dry_run,
    }
    if args.database is not None:
        request.update(database=args.database, target_db=args.target_db)
    elif args.target_db is not None:
        print("hasupctl: --target-db goes with --database", file=sys.stderr)
        return Exit.USAGE
    try:
        data = call(socket_path(args.socket), "restore", request, timeout=None)
    except ControlError as error:
        print(f"hasupctl: {error}", file=sys.stderr)
        return error.code
    if args.json:
        print(json.dumps(data, indent=2))
        return Exit.OK
    print("\n".join(data["plan"]))
    if data.get("dry_run"):
        print("(dry run: nothing was done)")
    elif data.get("kept_as"):
        print(f"restored; the previous database is kept as {data['kept_as']} (drop it when done)")
    elif data.get("moved_aside"):
        print("restored; the previous data is kept at: " + ", ".join(data["moved_aside"]))
    elif data.get("restored_to"):
        print(f"restored into {data['restored_to']}")
    return Exit.OK
