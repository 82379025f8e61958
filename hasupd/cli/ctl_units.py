"""``hasupctl`` verbs a systemd-era operator reaches for: enable, disable, mask, unmask, cat, show, kill,
reload NAME and is-active / is-failed / is-enabled (argument parsing and printing only).

Exit codes: those of every hasupctl command (README), and for the questions is-active, is-failed and
is-enabled: 0 yes, 3 no (is-active: systemctl's own codes; is-failed and is-enabled answer "no" with 3
where systemctl uses 1, so that 1 keeps meaning "the operation failed" for hasupctl).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hasupd.control.client import ControlError, call, socket_path
from hasupd.control.protocol import Exit

STATE_VERBS = ("enable", "disable", "mask", "unmask")
QUESTIONS = ("is-active", "is-failed", "is-enabled")
UNIT_COMMANDS = frozenset({*STATE_VERBS, *QUESTIONS, "cat", "show", "kill"})

# hasupd's states as systemctl's ActiveState words (what is-active prints).
_ACTIVE_STATE = {
    "running": "active",
    "reloading": "reloading",
    "start": "activating",
    "auto-restart": "activating",
    "stop-watchdog": "deactivating",
    "stop-sigterm": "deactivating",
    "stop-sigkill": "deactivating",
    "failed": "failed",
    "dead": "inactive",
}


def add_unit_commands(sub: Any) -> None:
    """Add the verbs of this module to hasupctl's subcommands."""
    helps = {
        "enable": "start at boot again; NAME@INSTANCE of a template NAME@.yaml creates that instance",
        "disable": "do not start at boot or reload (hasupctl start still does)",
        "mask": "refuse every start until unmasked",
        "unmask": "undo mask",
    }
    for verb, text in helps.items():
        sub.add_parser(verb, help=text).add_argument("names", nargs="+", metavar="NAME")
    sub.add_parser("cat", help="the effective config with the file:line of each key").add_argument(
        "names", nargs="+", metavar="NAME"
    )
    show = sub.add_parser("show", help="properties as KEY=VALUE lines, for scripts")
    show.add_argument("names", nargs="+", metavar="NAME")
    show.add_argument("-p", "--property", action="append", dest="properties", metavar="KEY", default=[])
    show.add_argument("--value", action="store_true", help="print only the values")
    kill = sub.add_parser("kill", help="send a signal to a service's processes")
    kill.add_argument("names", nargs="+", metavar="NAME")
    kill.add_argument("-s", "--signal", default="SIGTERM", help="name or number (default SIGTERM)")
    whom = kill.add_mutually_exclusive_group()
    whom.add_argument("--main", dest="whom", action="store_const", const="main", help="the main process only")
    whom.add_argument("--all", dest="whom", action="store_const", const="all", help="every process (default)")
    for verb in QUESTIONS:
        p = sub.add_parser(verb, help=f"exit 0 if every NAME {verb.removeprefix('is-')}, else 3")
        p.add_argument("names", nargs="+", metavar="NAME")
        p.add_argument("-q", "--quiet", action="store_true", help="print nothing; answer by exit code")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def run_unit_command(args: argparse.Namespace) -> int:
    """Run one verb of this module; return hasupctl's exit code."""
    path = socket_path(args.socket)
    command = args.command
    try:
        if command in ("is-active", "is-failed"):
            data = call(path, "status", {"names": args.names})
        elif command == "is-enabled":
            data = call(path, "show", {"names": args.names})
        elif command == "kill":
            request = {"names": args.names, "signal": args.signal, "whom": args.whom or "all"}
            data = call(path, "kill", request)
        else:
            data = call(path, command, {"names": args.names})
    except ControlError as error:
        if command in QUESTIONS and error.code == Exit.NOT_FOUND and not args.quiet:
            print("unknown" if command == "is-enabled" else "inactive")
        print(f"hasupctl: {error}", file=sys.stderr)
        return error.code
    if command in QUESTIONS:
        return _answer_question(args, data)
    if args.json:
        print(json.dumps(data, indent=2))
    elif command == "cat":
        print("\n".join(item["text"] for item in data), end="")
    elif command == "show":
        _print_show(args, data)
    elif command == "kill":
        for item in data:
            print(f"{item['name']}: {item['signal']} to {item['processes']} process(es)")
    else:
        for item in data:
            print(f"{item['name']}: {item['unit_file_state']}")
    return Exit.OK


def _answer_question(args: argparse.Namespace, data: list[dict[str, Any]]) -> int:
    if args.command == "is-enabled":
        words = [item["unit_file_state"] for item in data]
        yes = all(word == "enabled" for word in words)
    elif args.command == "is-active":
        words = [_ACTIVE_STATE.get(item["state"], item["state"]) for item in data]
        yes = all(word in ("active", "reloading") for word in words)
    else:
        words = [_ACTIVE_STATE.get(item["state"], item["state"]) for item in data]
        yes = all(word == "failed" for word in words)
    if not args.quiet:
        for word in words:
            print(word)
    return Exit.OK if yes else Exit.NOT_FOUND


def _print_show(args: argparse.Namespace, data: list[dict[str, Any]]) -> None:
    for index, props in enumerate(data):
        if index:
            print()
        keys = [key for given in args.properties for key in given.split(",") if key] or sorted(props)
        for key in keys:
            if key not in props:
                continue  # as systemctl: an unknown property prints nothing
            print(_value(props[key]) if args.value else f"{key}={_value(props[key])}")
