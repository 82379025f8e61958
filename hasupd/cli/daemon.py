"""``hasupd``: the daemon entry point (argument parsing only)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from hasupd import __version__
from hasupd.config.model import DEFAULT_CONFIG_DIR, DEFAULT_VENDOR_DIR, LogFormat, LogTarget


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hasupd", description="Process supervisor for Linux hosts.")
    parser.add_argument("--version", action="version", version=f"hasupd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config-dir",
            type=Path,
            default=Path(os.environ.get("HASUPD_CONFIG_DIR", DEFAULT_CONFIG_DIR)),
            help="configuration folder (default: %(default)s)",
        )
        p.add_argument(
            "--vendor-dir",
            type=Path,
            default=Path(os.environ.get("HASUPD_VENDOR_DIR", DEFAULT_VENDOR_DIR)),
            help="packages' folder whose services.d the config dir's overrides (default: %(default)s)",
        )
        p.add_argument("--state-dir", type=Path, help="state folder (overrides hasupd.yaml state_dir)")
        p.add_argument("--runtime-dir", type=Path, help="runtime folder (overrides hasupd.yaml runtime_dir)")

    run = sub.add_parser("run", help="supervise in the foreground (systemd Type=notify)")
    common(run)
    run.add_argument("--log-format", choices=[f.value for f in LogFormat], help="json (default) or text")
    run.add_argument(
        "--log-target",
        choices=[t.value for t in LogTarget],
        help="auto (journald when present, else stderr), journal or stderr",
    )
    run.add_argument(
        "--no-cgroup",
        action="store_true",
        help="contain services with process groups even where a cgroup could be used",
    )
    run.add_argument(
        "--no-clone3",
        action="store_true",
        help="start services through subprocess (fork/vfork + preexec) instead of clone3 (for comparison)",
    )
    run.add_argument(
        "--no-watch",
        action="store_true",
        help="reload only on SIGHUP or hasupctl reload, not on file changes",
    )

    post = sub.add_parser(
        "stop-post",
        help="hasupd.service's ExecStopPost=: after a requested stop, kill what is left of UNIT's cgroup",
    )
    post.add_argument("unit", metavar="UNIT", help="the unit's full name (%%n in the unit file)")

    check = sub.add_parser("check-config", help="validate the configuration; print every error")
    common(check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "stop-post":
        from hasupd.host import unitstop

        return unitstop.main(args.unit)
    # Imported here so that --help and --version stay fast.
    from hasupd import daemon

    options = daemon.Options(
        config_dir=args.config_dir,
        state_dir=args.state_dir,
        runtime_dir=args.runtime_dir,
        log_format=LogFormat(args.log_format) if getattr(args, "log_format", None) else None,
        log_target=LogTarget(args.log_target) if getattr(args, "log_target", None) else None,
        force_fallback_containment=getattr(args, "no_cgroup", False),
        no_watch=getattr(args, "no_watch", False),
        vendor_dir=args.vendor_dir,
        no_clone3=getattr(args, "no_clone3", False),
    )
    if args.command == "check-config":
        return daemon.check_config(options)
    return _exit_now(daemon.run(options))


def _exit_now(code: int) -> int:
    """End the process with ``code`` once records and output are flushed, skipping the interpreter's
    teardown: freeing every object of a finished hasupd took ~80 ms of a stop of 100 services (bench,
    scenario 7), while every service is already down and every record written. Nothing hasupd runs
    at exit is lost: it registers no atexit handler, and logging is shut down (flushed) here."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed stdout must not change the code
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
