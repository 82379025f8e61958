"""``hasupctl logs``, ``events``, ``errors``, ``incident``: arguments and printing (standard library only)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from hasupd.control.client import ControlError, call, socket_path, stream
from hasupd.control.protocol import Exit

RECORD_COMMANDS = ("logs", "events", "errors", "incident")


def add_record_commands(sub: Any) -> None:
    """Add the record commands to hasupctl's subparsers."""
    logs = sub.add_parser("logs", help="a service's output and hasupd's records about it, in time order")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-n", "--lines", type=int, default=10, help="how many lines (default: %(default)s)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    events = sub.add_parser("events", help="hasupd's tagged records")
    events.add_argument("--since", metavar="T", help="an age (30d, 2h, 15m) or an ISO time")
    events.add_argument("--service", metavar="NAME", help="only records about this service")
    events.add_argument("-n", "--lines", type=int, help="the newest N (default: 100 without --since)")
    errors = sub.add_parser(
        "errors",
        help="the most common errors, counted and grouped; `errors show GROUP`: one group",
        description="Error groups of the services' own output and hasupd's own error records, most "
        "common first. `hasupctl errors show GROUP` prints one group's samples and its incidents.",
    )
    errors.add_argument("show", nargs="?", choices=["show"], help="show one group")
    errors.add_argument("group", nargs="?", metavar="GROUP", help="the group's id (with show)")
    errors.add_argument(
        "--since", metavar="T", default="30d", help="an age or ISO time (default: %(default)s)"
    )
    errors.add_argument("--service", metavar="NAME", help="only this service's errors")
    errors.add_argument("-n", "--lines", type=int, help="at most N groups")
    incident = sub.add_parser("incident", help="the chain of events of one incident")
    incident.add_argument("id", metavar="ID")


def _request(args: argparse.Namespace) -> dict[str, Any]:
    match args.command:
        case "logs":
            return {"name": args.name, "lines": args.lines, "follow": args.follow}
        case "events":
            request: dict[str, Any] = {"since": args.since, "service": args.service, "lines": args.lines}
            return {k: v for k, v in request.items() if v is not None}
        case "errors" if args.show:
            return {"group": args.group, "since": args.since}
        case "errors":
            request = {"since": args.since, "service": args.service, "lines": args.lines}
            return {k: v for k, v in request.items() if v is not None}
        case _:
            return {"id": args.id}


def run_record_command(args: argparse.Namespace) -> int:
    """Run one record command; return hasupctl's exit code."""
    path = socket_path(args.socket)
    try:
        if args.command == "logs" and args.follow:
            for item in stream(path, "logs", _request(args)):
                if args.json:
                    print(json.dumps(item), flush=True)
                else:
                    print_log_item(item)
                    sys.stdout.flush()
            print("hasupctl: hasupd ended the stream", file=sys.stderr)
            return Exit.UNREACHABLE
        if args.command == "errors" and (args.show is None) != (args.group is None):
            print(
                "hasupctl: usage: hasupctl errors [show GROUP] [--since T] [--service NAME]", file=sys.stderr
            )
            return Exit.USAGE
        command = "errors-show" if args.command == "errors" and args.show else args.command
        data = call(path, command, _request(args))
    except ControlError as error:
        print(f"hasupctl: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return Exit.OK
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.command == "logs":
        for item in data:
            print_log_item(item)
    elif args.command == "events":
        for record in data:
            print(record_line(record))
    elif args.command == "errors" and args.show:
        print_error_group(data)
    elif args.command == "errors":
        print_errors(data)
    else:
        print_incident(data)
    return Exit.OK


def local_time(iso: str | None) -> str:
    """Return an ISO time as local "YYYY-MM-DD HH:MM:SS.mmm" ("-" for none)."""
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except ValueError:
        return iso


def record_body(record: dict[str, Any]) -> str:
    """Return a record without its time: level, event, service, message, incident."""
    service = f" {record['service']}" if record.get("service") else ""
    incident = f" [incident {record['incident']}]" if record.get("incident") else ""
    level = str(record.get("level", "")).upper()
    return f"{level:<7} {record.get('event')}{service}: {record.get('message', '')}{incident}"


def record_line(record: dict[str, Any]) -> str:
    """Return one record as a line, its local time first."""
    return f"{local_time(record.get('time'))} {record_body(record)}"


def print_log_item(item: dict[str, Any]) -> None:
    if "error" in item and "event" not in item:
        print(f"hasupctl: {item['error']}", file=sys.stderr)
    elif "output" in item:
        # "~": the time of a line from a log file is estimated (see `hasupctl logs` in the README)
        approx = "~" if item.get("estimated_time") else " "
        print(f"{local_time(item.get('time'))}{approx}{item.get('service')}| {item['output']}")
    else:
        print(f"{local_time(item.get('time'))} hasupd| {record_body(item)}")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def print_errors(groups: list[dict[str, Any]]) -> None:
    if not groups:
        print("no errors")
        return
    rows = [["COUNT", "GROUP", "SERVICE", "KIND", "FIRST SEEN", "LAST SEEN", "INCIDENT", "PATTERN"]]
    for g in groups:
        rows.append(
            [
                str(g["count"]),
                g["group"],
                g["service"] or "hasupd",
                g["kind"],
                local_time(g["first_seen"]),
                local_time(g["last_seen"]),
                g["incident"] or "-",
                g["pattern"],
            ]
        )
    print(_table(rows))


def print_error_group(group: dict[str, Any]) -> None:
    owner = group["service"] or "hasupd"
    print(f"error group {group['group']} of {owner} ({group['kind']}): {group['pattern']}")
    first, last = local_time(group["first_seen"]), local_time(group["last_seen"])
    print(f"  {group['count']} time(s), first {first}, last {last}")
    print()
    incidents = group.get("incidents") or []
    if incidents:
        print(f"appeared in {len(incidents)} incident(s) (hasupctl incident ID):")
        for item in incidents:
            print(f"  {item['incident']}  {local_time(item['time'])}")
    else:
        print("appeared in no incident")
    for sample in group.get("samples") or []:
        print()
        print(f"sample of {local_time(sample['time'])}:")
        for line in str(sample["text"]).split("\n"):
            print(f"  | {line}")


def print_incident(data: dict[str, Any]) -> None:
    outcome = data["outcome"] or "still open"
    print(f"incident {data['incident']} of {data['service'] or '-'}: {outcome}")
    print(f"  opened {local_time(data['opened'])}: {data['reason'] or '-'}")
    if data["closed"]:
        print(f"  closed {local_time(data['closed'])}")
    print()
    for record in data["records"]:
        print(record_line(record))
    output = data["output"]
    print()
    if output["error"]:
        print(f"output before the failure: unavailable ({output['error']})")
    elif output["lines"]:
        print(f"last {len(output['lines'])} output line(s) before the failure ({output['source']}):")
    else:
        print("no output was captured before the failure")
    for line in output["lines"]:
        print(f"  | {line}")
