"""``hasupctl``: talks to hasupd over its control socket (argument parsing and printing only)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from hasupd.cli.ctl_alert import add_alert_commands, run_alert_command
from hasupd.cli.ctl_backup import add_backup_commands, run_backup_command
from hasupd.cli.ctl_fleet import add_fleet_commands, run_fleet_command
from hasupd.cli.ctl_records import RECORD_COMMANDS, add_record_commands, run_record_command
from hasupd.cli.ctl_restore import add_restore_command, run_restore_command
from hasupd.cli.ctl_units import UNIT_COMMANDS, add_unit_commands, run_unit_command
from hasupd.control.client import ControlError, call, socket_path
from hasupd.control.protocol import Exit


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def print_status(services: list[dict[str, Any]]) -> None:
    rows = [
        ["NAME", "STATE", "RESULT", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "HEALTH", "INCIDENT", "STATUS"]
    ]
    for s in services:
        rows.append(
            [
                s["name"],
                s["state"],
                s["result"],
                str(s["pid"] or "-"),
                _duration(s["uptime_sec"]),
                str(s["restarts"]),
                s["last_exit"] or "-",
                s.get("health") or "-",
                s["incident"] or "-",
                s.get("status_text") or "",
            ]
        )
    print(_table(rows))
    for s in services:
        if s.get("rolled_back"):
            print(f"{s['name']}: {s['rolled_back']}")
        if s.get("next_run"):
            print(f"{s['name']}: timer, next run {s['next_run']}")
        if s.get("process"):
            shown = " ".join(f"{k}={v}" for k, v in s["process"].items())
            print(f"{s['name']}: process {shown}")
    # A service with several instances also as a whole: how many are up.
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in services:
        groups.setdefault(s.get("service", s["name"]), []).append(s)
    for name, units in groups.items():
        if len(units) > 1 or units[0]["name"] != name:
            up = sum(u["state"] == "running" for u in units)
            print(f"{name}: {up}/{len(units)} instances running")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hasupctl", description="Control a running hasupd.")
    parser.add_argument(
        "--socket", help="control socket (default: $HASUPD_SOCKET or /run/hasupd/control.sock)"
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="state, result, pid, uptime, restarts, last exit, incident")
    status.add_argument("names", nargs="*", metavar="NAME")
    for verb, text in (
        ("start", "start services"),
        ("stop", "stop services (and do not restart them)"),
        ("restart", "stop, then start services"),
        ("reset-failed", "forget failures so failed services can start again"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("names", nargs="+" if verb != "reset-failed" else "*", metavar="NAME")
        if verb == "restart":
            p.add_argument(
                "--rolling",
                action="store_true",
                help="one instance at a time, each waiting until the last is running and healthy",
            )
    reload = sub.add_parser(
        "reload", help="re-read the config and apply only what changed; with NAME: that service's own reload"
    )
    reload.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    reload.add_argument(
        "names", nargs="*", metavar="NAME", help="reload these services (reload_signal or reload_command)"
    )
    reexec = sub.add_parser(
        "daemon-reexec",
        help="replace hasupd's image with the installed hasupd (same pid); services keep running",
    )
    reexec.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the new image to answer (default 60)"
    )
    sub.add_parser("daemon-info", help="hasupd's version, pid and how its last re-exec went")
    add_record_commands(sub)
    alert = sub.add_parser("alert", help="alerts (alert test [CHANNEL], alert silence, alert list)")
    alert_verbs = alert.add_subparsers(dest="alert_command", required=True, metavar="COMMAND")
    alert_test = alert_verbs.add_parser(
        "test", help="send a test message now (through the spool, not coalesced); print the server's answer"
    )
    alert_test.add_argument("channel", nargs="?", metavar="CHANNEL", help="one channel (default: every one)")
    alert_test.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_alert_commands(alert_verbs)
    add_backup_commands(sub)
    add_restore_command(sub)
    add_fleet_commands(sub)
    add_unit_commands(sub)
    for p in sub.choices.values():  # accept --json after the command too
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


# Exit code when whoever reads hasupctl's output stops reading (`hasupctl status | head -1`): the one a
# shell reports for any program ended by SIGPIPE there, so pipelines see what they see from cat or ls.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Run one hasupctl command; return its exit code (the table in the README).

    A closed stdout is no error of the command: hasupctl stops printing and returns EXIT_BROKEN_PIPE
    without a traceback (Python's documented recipe: stdout is pointed at /dev/null so the flush at
    exit cannot fail again).
    """
    try:
        code = _run(argv)
        sys.stdout.flush()  # inside the try: buffered output meets the closed pipe here
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return Exit.USAGE if exit_.code not in (0, None) else Exit.OK
    request: dict[str, Any] = {}
    if hasattr(args, "names") and args.command != "reload":
        request["names"] = args.names
    if args.command == "reload":
        request["dry_run"] = args.dry_run
    if getattr(args, "rolling", False):
        request["rolling"] = True
    if args.command == "backup":
        return run_backup_command(args)
    if args.command == "fleet":
        return run_fleet_command(args)
    if args.command == "restore":
        return run_restore_command(args)
    if args.command in RECORD_COMMANDS:
        return run_record_command(args)
    if args.command == "alert" and args.alert_command != "test":
        return run_alert_command(args)
    if args.command == "alert":
        request = {"channel": args.channel} if args.channel else {}
    if args.command == "daemon-reexec":
        return _daemon_reexec(args)
    if args.command in UNIT_COMMANDS:
        return run_unit_command(args)
    if args.command == "reload" and args.names:
        if args.dry_run:
            print("hasupctl: --dry-run is for the config reload, not a service's", file=sys.stderr)
            return Exit.USAGE
        return _reload_services(args)
    try:
        cmd = "alert-test" if args.command == "alert" else args.command
        data = call(socket_path(args.socket), cmd, request)
    except ControlError as error:
        print(f"hasupctl: {error}", file=sys.stderr)
        return error.code
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.command == "status" or args.command in ("start", "stop", "restart", "reset-failed"):
        print_status(data)
        if args.command == "status":
            _print_daemon_line(args)
    elif args.command == "alert":
        for outcome in data:
            print(f"{outcome['channel']}: accepted: {outcome['answer']} (Message-ID {outcome['message_id']})")
    elif args.command == "daemon-info":
        _print_info(data)
    elif args.command == "reload":
        print_reload(data)
    if (
        args.command == "status"
        and args.names
        and any(s["state"] not in ("running", "reloading") for s in data)
    ):
        return Exit.NOT_FOUND  # as systemctl status: a named service that is not running
    return Exit.OK


def _reload_services(args: argparse.Namespace) -> int:
    """``reload NAME...``: each service's own reload; print its status once it is done."""
    try:
        data = call(socket_path(args.socket), "reload-service", {"names": args.names})
    except ControlError as error:
        print(f"hasupctl: {error}", file=sys.stderr)
        return error.code
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_status(data)
    return Exit.OK


def print_reload(data: dict[str, Any]) -> None:
    """Print the answer of ``reload``: the plan's lines (services, then backup jobs and alert channels)."""
    print("plan (dry run, nothing changed):" if data["dry_run"] else "applied:")
    for line in data["plan"] or ["nothing to do"]:
        print("  " + line)


def _print_daemon_line(args: argparse.Namespace) -> None:
    """After the status table: which hasupd answered (its version and pid), so that an upgrade by
    re-exec shows. Nothing when the running hasupd predates daemon-info."""
    try:
        info = call(socket_path(args.socket), "daemon-info", {})
    except ControlError:
        return
    print(f"hasupd {info['version']}, pid {info['pid']}")


def _print_info(data: dict[str, Any]) -> None:
    print(f"hasupd {data['version']}, pid {data['pid']}")
    last = data.get("last_reexec")
    if last:
        print(
            f"last re-exec: {last['from_version']} -> {last['to_version']}, services unsupervised for "
            f"{last['unsupervised_sec']:.3f}s, state record: {last['record']}, "
            f"{last['carried']} unit(s) carried on"
        )


def _daemon_reexec(args: argparse.Namespace) -> int:
    """Ask for the re-exec, then wait until the new image answers (same pid) and print how it went."""
    path = socket_path(args.socket)
    try:
        before = call(path, "daemon-reexec", {})
    except ControlError as error:
        print(f"hasupctl: {error}", file=sys.stderr)
        return error.code
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            info = call(path, "daemon-info", {})
        except ControlError as error:
            if error.code != Exit.UNREACHABLE or time.monotonic() > deadline:
                print(f"hasupctl: {error}", file=sys.stderr)
                return error.code
            time.sleep(0.05)
            continue
        if info.get("image") != before["image"]:
            break
        if time.monotonic() > deadline:
            print("hasupctl: hasupd did not come back from the re-exec in time", file=sys.stderr)
            return Exit.FAILED
        time.sleep(0.05)  # the old image still answers until it executes the new one
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
