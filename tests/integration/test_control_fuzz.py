"""Fuzz the control socket of a real hasupd with thousands of malformed requests.

Seeded: the seed is printed (``HASUPD_FUZZ_SEED=N`` replays a run). Bounded in count and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hasupd.control.commands import COMMANDS
from hasupd.control.protocol import MAX_REQUEST_BYTES, Exit
from tests.support.harness import Hasupd, pid_alive, write_config

SLEEP = ["/bin/sleep", "1000"]
REQUESTS = 5000
TIME_BUDGET_SEC = 20.0  # the loop stops here even if not all requests were sent (it says so)

# Every argument each command reads. A new command or argument must be added here, or the test fails.
ARGUMENTS: dict[str, tuple[str, ...]] = {
    "status": ("names",),
    "start": ("names",),
    "stop": ("names",),
    "restart": ("names", "rolling"),
    "reset-failed": ("names",),
    "reload": ("dry_run",),
    "logs": ("name", "lines", "follow"),
    "events": ("since", "service", "lines"),
    "errors": ("since", "service", "lines"),
    "incident": ("id",),
    "alert-test": ("channel",),
    "alert-silence": ("target", "duration", "reason"),
    "alert-list": (),
    "backup-run": ("job", "kind"),
    "backup-list": ("job",),
    "backup-status": ("job",),
    "restore": ("job", "snapshot", "path", "target", "in_place", "dry_run", "database", "target_db"),
    "daemon-info": (),
    "fleet-status": (),
    "fleet-move": ("name", "host"),
    "fleet-drain": ("host",),
    "errors-show": ("group", "since"),
    "enable": ("names",),
    "disable": ("names",),
    "mask": ("names",),
    "unmask": ("names",),
    "cat": ("names",),
    "show": ("names",),
    "kill": ("names", "signal", "whom"),
    "reload-service": ("names",),
}
# Commands not fuzzed here, and why.
NOT_FUZZED = {
    "daemon-reexec": "takes no arguments and re-executes hasupd whatever it is sent (test_zero_blip.py)",
}
# Commands that would change the running services given a harmless-looking value (no names: every
# service) get only values that cannot name a service; see _value.
SERVICE_NAMES = ("web", "db")


# Arguments that pass validation (and act on nothing), so that a wrong value of one argument reaches the
# code that reads it; each WRONG_VALUES entry then replaces one of them (or is added) in turn.
VALID_BASE: dict[str, dict[str, Any]] = {
    "start": {"names": ["nope"]},
    "stop": {"names": ["nope"]},
    "restart": {"names": ["nope"]},
    "reset-failed": {"names": ["nope"]},
    "reload": {"dry_run": True},
    "logs": {"name": "nope", "lines": 1, "follow": False},
    "events": {"since": "1h", "service": "nope", "lines": 1},
    "incident": {"id": "abc"},
    "errors": {"since": "1h", "service": "nope", "lines": 1},
    "errors-show": {"group": "0123456789ab", "since": "1h"},
    "alert-test": {"channel": "nope"},
    "alert-silence": {"target": "nope", "duration": "1s", "reason": "fuzz"},
    "backup-run": {"job": "nope", "kind": "backup"},
    "restore": {"job": "nope", "snapshot": "latest", "target": "/nonexistent", "dry_run": True},
    "enable": {"names": ["nope"]},
    "disable": {"names": ["nope"]},
    "mask": {"names": ["nope"]},
    "unmask": {"names": ["nope"]},
    "cat": {"names": ["nope"]},
    "show": {"names": ["nope"]},
    "kill": {"names": ["nope"], "signal": "USR1", "whom": "main"},
    "reload-service": {"names": ["nope"]},
}
# Commands whose names must never name a real service here (they would stop, signal or disable it).
NAMED_CHANGES = (
    "start",
    "stop",
    "restart",
    "reset-failed",
    "enable",
    "disable",
    "mask",
    "unmask",
    "kill",
    "reload-service",
)
# Every command gets each of these for each of its arguments once, before the random part.
WRONG_VALUES: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    10**30,
    1.5,
    float("nan"),
    "",
    "\ud800",
    "\x00",
    "nope",
    [],
    [1],
    ["\udfff"],
    {},
    {"k": [1]},
)


def _nested(rng: random.Random, depth: int) -> Any:
    value: Any = rng.choice([1, "x", None, True])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def _value(rng: random.Random) -> Any:
    """Return a JSON value of some wrong (or odd) kind; never a list of real service names."""
    choices: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.choice([0, -1, 1, 2**31, 2**64, -(2**70), 10**300]),
        lambda: rng.choice([0.5, -1e308, 1e308, float("nan"), float("inf")]),
        lambda: "",
        lambda: rng.choice(["30d", "1e999d", "9" * 400 + "d", "2026-13-45", "latest", "../../etc", "-1"]),
        lambda: rng.choice(["/", "/tmp/x", "/proc/self/mem", "nope", "a" * 255, "web@99", "Web", "web\n"]),
        lambda: "\ud800" + rng.choice(["", "a", "\udfff"]),
        lambda: "\x00" * rng.randint(1, 50),
        lambda: "é\u202e\ufeff\U0001f600",
        lambda: "x" * rng.randint(1000, 20000),
        lambda: [],
        lambda: [rng.choice([1, None, "", "\ud800", [], {}, "nope"])],
        lambda: ["nope"] * rng.randint(1, 500),
        lambda: {},
        lambda: {"names": "web"},  # a string, not a list: refused, whatever the command
        lambda: _nested(rng, rng.randint(2, 30)),
    ]
    return rng.choice(choices)()


def _dumps(message: Any) -> bytes:
    # ensure_ascii escapes lone surrogates as \ud800, the form a JSON request carries them in.
    return json.dumps(message, allow_nan=True).encode() + b"\n"


def _args(rng: random.Random, cmd: str) -> dict[str, Any]:
    """Return wrong or odd values for some of ``cmd``'s arguments, never ones that act on a service."""
    args = {a: _value(rng) for a in ARGUMENTS[cmd] if rng.random() < 0.7}
    if rng.random() < 0.2:
        args[rng.choice(["_user", "unknown", ""])] = _value(rng)
    if cmd in NAMED_CHANGES:
        args["names"] = _wrong_names(rng)  # anything else could stop or restart a service
    if cmd == "reload":
        args["dry_run"] = rng.choice([None, 1, "yes", [], {}, True])
    return args


def _payload(rng: random.Random) -> tuple[str, bytes, bool]:
    """Return (kind, bytes to send, whether to close before sending all of it)."""
    kind = rng.choice(
        [
            "random-bytes",
            "truncated",
            "huge-line",
            "deep-arrays",
            "deep-objects",
            "deep-in-args",
            "wrong-envelope",
            "wrong-args",
            "wrong-args",
            "wrong-args",
            "nul",
            "long-string",
            "number",
            "mid-close",
        ]
    )
    cmd = rng.choice(sorted(ARGUMENTS))
    match kind:
        case "random-bytes":
            return kind, rng.randbytes(rng.randint(1, 3000)) + b"\n", False
        case "truncated":
            full = _dumps({"v": 1, "cmd": cmd, "args": _args(rng, cmd)})
            return kind, full[: rng.randint(1, len(full) - 1)] + b"\n", False
        case "huge-line":
            return (
                kind,
                b'{"v":1,"cmd":"' + b"s" * rng.randint(MAX_REQUEST_BYTES, 2 * MAX_REQUEST_BYTES),
                False,
            )
        case "deep-arrays":
            depth = rng.randint(33, 30000)
            return kind, b"[" * depth + b"]" * rng.choice([0, depth]) + b"\n", False
        case "deep-objects":
            depth = rng.randint(33, 10000)
            return kind, b'{"a":' * depth + b"1" + b"}" * depth + b"\n", False
        case "deep-in-args":
            depth = rng.randint(33, 5000)
            arg = rng.choice(ARGUMENTS[cmd] or ("unknown",))  # a command without arguments gets one anyway
            body = b'{"v":1,"cmd":"%s","args":{"%s":' % (cmd.encode(), arg.encode())
            return kind, body + b"[" * depth + b"]" * depth + b"}}\n", False
        case "wrong-envelope":
            message = rng.choice(
                [
                    {"v": _value(rng), "cmd": cmd},
                    {"v": 1, "cmd": _value(rng)},
                    {"v": 1, "cmd": cmd, "args": _value(rng)},
                    {"v": 1, "cmd": "\ud800"},
                    {"v": 1, "cmd": "x" * 30000},
                    _value(rng),
                ]
            )
            return kind, _dumps(message), False
        case "wrong-args":
            return kind, _dumps({"v": 1, "cmd": cmd, "args": _args(rng, cmd)}), False
        case "nul":
            return kind, rng.choice([b"\0" * 100, b'{"v":1,"cmd":"sta\0tus"}\n', b'{"v":1\0}\n']), False
        case "long-string":
            return kind, _dumps({"v": 1, "cmd": cmd, "args": {"names": ["n" * 60000]}}), False
        case "number":
            return (
                kind,
                b'{"v":1,"cmd":"status","args":{"lines":' + b"9" * rng.randint(4000, 60000) + b"}}\n",
                False,
            )
        case _:
            full = _dumps({"v": 1, "cmd": cmd, "args": _args(rng, cmd)})
            return kind, full[: rng.randint(0, len(full) - 2)], True


def _wrong_names(rng: random.Random) -> Any:
    """A ``names`` value that is wrong, or names no service (an empty list would mean every service)."""
    value = _value(rng)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [*value, "nope"] if not value or set(value) & set(SERVICE_NAMES) else value
    return value


def _check_reply(raw: bytes, kind: str) -> dict[str, Any]:
    """Assert ``raw`` is one well-formed protocol reply; return it."""
    assert raw.endswith(b"\n"), (kind, raw[:300])
    line = raw.split(b"\n", 1)[0]
    reply = json.loads(line)
    assert isinstance(reply, dict) and reply.get("v") == 1, (kind, raw[:300])
    if reply["ok"] is True:
        assert "data" in reply or reply.get("stream") is True, (kind, reply)
    else:
        assert reply["ok"] is False, (kind, reply)
        assert reply["code"] in {int(e) for e in Exit} and reply["code"] != 0, (kind, reply)
        assert isinstance(reply["error"], str) and reply["error"], (kind, reply)
    return reply


def _exchange(path: Path, payload: bytes, close_early: bool) -> bytes | None:
    """Send ``payload`` on a new connection; return the reply (None: closed mid-request, or no reply)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        try:
            s.sendall(payload)
            if close_early:
                return None
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # hasupd stopped reading (a line over the limit); its answer is still there to read
        chunks = []
        try:
            while len(chunks) < 1000 and (chunk := s.recv(65536)):
                chunks.append(chunk)
                if b"\n" in chunk:
                    break  # a stream (logs -f) goes on; its first line is the answer
        except ConnectionResetError:
            pass
        return b"".join(chunks) or None


def _status_when_idle(d: Hasupd) -> list[dict[str, Any]]:
    """Return `hasupctl status --json`; while the fuzzer's last connections still hold every slot,
    hasupd answers "busy" (exit 5), which is right, so that is retried for a few seconds."""
    deadline = time.monotonic() + 15
    while True:
        done = d.ctl("status", "--json")
        if done.returncode == 0:
            result: list[dict[str, Any]] = json.loads(done.stdout)
            return result
        assert done.returncode == 5 and "busy" in done.stderr, done
        assert time.monotonic() < deadline, done
        time.sleep(0.2)


def test_fuzzed_control_requests_leave_hasupd_and_its_services_alone(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    assert set(ARGUMENTS) | set(NOT_FUZZED) == set(COMMANDS), "add the new command's arguments to ARGUMENTS"
    seed = int(os.environ.get("HASUPD_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"control fuzz seed: {seed} (HASUPD_FUZZ_SEED={seed} replays it)")
    rng = random.Random(seed)
    config = write_config(tmp_path / "etc", {name: {"command": SLEEP} for name in SERVICE_NAMES})
    d = hasupd(config)
    d.wait_ready()
    status = json.loads(d.ctl("status", "--json").stdout)
    before = {s["name"]: s["pid"] for s in status}
    daemon_pid = d.proc.pid

    systematic = [
        (
            "every-argument",
            _dumps({"v": 1, "cmd": cmd, "args": {**VALID_BASE.get(cmd, {}), arg: value}}),
            False,
        )
        for cmd, names in sorted(ARGUMENTS.items())
        for arg in names
        for value in WRONG_VALUES
    ]
    sent, answered, errors_by_kind = 0, 0, {}
    started = time.monotonic()
    for i in range(len(systematic) + REQUESTS):
        if time.monotonic() - started > TIME_BUDGET_SEC:
            break
        kind, payload, close_early = systematic[i] if i < len(systematic) else _payload(rng)
        raw = _exchange(d.socket, payload, close_early)
        sent += 1
        if raw is None:
            # No answer: closed mid-request, stopped reading a line over the limit, or an empty line
            # (a caller that connected and left, as far as hasupd can tell).
            empty = not payload.split(b"\n", 1)[0].strip()
            assert close_early or empty or kind == "huge-line", (seed, i, kind, payload[:300])
            continue
        reply = _check_reply(raw, kind)
        answered += 1
        if not reply["ok"]:
            errors_by_kind.setdefault(kind, set()).add(reply["code"])
        if i % 500 == 0:
            assert d.proc.poll() is None, f"hasupd died at request {i} (seed {seed}, {kind})"
    # Many connections at once, each closed mid-request.
    for _ in range(10):
        burst = []
        for _ in range(30):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(d.socket))
            burst.append(s)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(_payload(rng)[1][: rng.randint(0, 200)])
        for s in burst:
            s.close()
        sent += len(burst)
    elapsed = time.monotonic() - started
    print(
        f"sent {sent} requests in {elapsed:.1f}s, {answered} answered; error codes by kind: {errors_by_kind}"
    )

    assert sent >= 1500, f"only {sent} requests within {TIME_BUDGET_SEC}s"
    assert d.proc.poll() is None and d.proc.pid == daemon_pid
    # No request reached an unexpected exception in a handler: each got a deliberate answer.
    assert d.find("control.error") == [], d.find("control.error")[:3]
    after = _status_when_idle(d)
    assert {s["name"]: s["pid"] for s in after} == before
    assert all(s["state"] == "running" and pid_alive(s["pid"]) for s in after)
    assert d.stop() == 0
