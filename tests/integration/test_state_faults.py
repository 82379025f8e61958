"""Fault injection on the files hasupd reads back at start (issue: bad state never stops supervision).

Each kind of damage (truncated, random bytes, JSON of the wrong types, huge) is put into every state
file at once: the alert spool (an entry and ``dropped.json``), ``silences.json``, a timer's stamp, a
known-good config, the running marker, ``errors.sqlite`` and the state record of the runtime dir. A
real hasupd must start, supervise its service, keep running, and say which file was damaged.
``units.json`` is the exception by design: guessing would start services an operator disabled, so a
damaged one is a located config error (exit 1, no traceback), as ``hasupd check-config`` says.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.harness import REPO, Hasupd, write_config

NOW = time.time()
SPOOL_ENTRY = {
    "id": "0000000001-aaaa",
    "channel": "ops",
    "created": NOW,
    "message_id": "<1@test>",
    "kind": "failed",
    "subject": "app failed",
    "body": "text",
    "sender": "hasupd@test",
    "recipients": ["ops@test"],
    "to": ["ops@test"],
    "service": "app",
    "incident": None,
    "in_reply_to": None,
    "level": "error",
    "resolves": False,
}
# What each file holds when it is fine (the sample the damage is made from).
SAMPLES: dict[str, object] = {
    "state/alerts/0000000001-aaaa.json": SPOOL_ENTRY,
    "state/alerts/dropped.json": {"ops": 2},
    "state/silences.json": [
        {"target": "app", "until": NOW + 3600, "reason": "r", "created": NOW, "by": "root"}
    ],
    "state/timers/tick.last": None,  # an ISO time, not JSON
    "state/known-good/app.pickle": None,  # a pickle
    "state/hasupd.running": None,  # a pid
    "state/errors.sqlite": None,  # a database
    "run/state.record": {"units": {"app": {"main_pid": 1, "state": "running"}}, "pid": 1},
}
# The files whose damage is named in a record (the alert spool's by their names in its folder; the
# state record's in the daemon.crashed that the damaged running marker gives); the known-good config's is
# named only when it is read (when the service has run stably).
NAMED = [
    "run/state.record",
    "state/alerts/0000000001-aaaa.json",
    "state/alerts/dropped.json",
    "state/silences.json",
    "state/timers/tick.last",
    "state/errors.sqlite",
]
FOLDER = b"(a folder where the file was)"
WRONG_TYPES = [
    3,
    "x",
    None,
    [],
    {},
    [1, [2], {"a": {}}],
    {"a": [1], "units": [1], "ops": [1], "b": {"c": 1e308}},
]


def _typed(sample: object) -> list[object]:
    """Return documents of the sample's shape with values of the wrong types, and of other shapes."""
    out: list[object] = list(WRONG_TYPES)
    if isinstance(sample, dict):
        for bad in ([1], {"x": None}, -1, 1e308, "", True):
            out.append({k: bad for k in sample})
    if isinstance(sample, list) and sample and isinstance(sample[0], dict):
        out.append([{k: [1] for k in sample[0]}, 5, "x"])
    return out


def _sha(data: bytes) -> bytes:
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(data).hexdigest().encode()


def _damage(kind: str, rel: str, sample: object, rand: random.Random) -> list[bytes]:
    """Return the damaged contents of one kind for the file ``rel`` (one or more, tried in turn)."""
    text = json.dumps(sample).encode() if sample is not None else b"2026-12-02T10:00:00+00:00\n"
    if kind == "truncated":
        return [text[: len(text) // 2], b""]
    if kind == "random":
        return [rand.randbytes(4096), b"\xff\xfe\x00" + rand.randbytes(100)]
    if kind == "types":
        docs = [json.dumps(d).encode() for d in _typed(sample)]
        if rel == "run/state.record":
            units = [
                {"app": 5},
                {"app": {k: [1] for k in ("main_pid", "start_time", "invocation", "config")}},
            ]
            bodies = [*_typed(sample), *({"units": u, "pid": "x", "fleet": [1]} for u in units)]
            return [_record_raw(json.dumps(b).encode()) for b in bodies]
        return docs
    if kind == "folder":
        return [FOLDER]
    if kind == "huge":
        deep = b"[" * 300_000 + b"]" * 300_000
        return [deep if rel != "run/state.record" else _record_raw(deep), b"7" * (8 << 20)]
    raise AssertionError(kind)


def _record_raw(data: bytes) -> bytes:
    return b"HASUPD-STATE 2 " + _sha(data) + b"\n" + data


def _config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "etc",
        {
            "app": {"command": ["/bin/sleep", "1009"]},
            "tick": {"command": ["/bin/true"], "type": "oneshot", "schedule": "@daily", "persistent": True},
        },
        daemon={
            "alerts": {
                "ops": {
                    "email": {"smtp": {"host": "127.0.0.1", "port": 9}, "from": "h@test", "to": ["o@test"]}
                }
            }
        },
    )


@pytest.mark.parametrize("kind", ["truncated", "random", "types", "huge", "folder"])
def test_damaged_state_files_are_named_and_hasupd_supervises_on(
    tmp_path: Path, hasupd: Callable[..., Hasupd], kind: str
) -> None:
    config = _config(tmp_path)
    rand = random.Random(kind)
    variants = {rel: _damage(kind, rel, sample, rand) for rel, sample in SAMPLES.items()}
    rounds = max(len(v) for v in variants.values())
    for n in range(rounds):
        work = tmp_path / f"w{n}"
        for rel, contents in variants.items():
            path = work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            content = contents[n % len(contents)]
            if content is FOLDER:
                path.mkdir()
                (path / "x").write_bytes(b"x")
            else:
                path.write_bytes(content)
        d = hasupd(config, state_dir=work / "state", runtime_dir=work / "run")
        d.wait_ready(30)
        d.wait_for("service.started", service="app", timeout=15)
        time.sleep(1.0)  # what reads late (the spool, error groups, timers) has read by now
        assert d.proc.poll() is None, "\n".join(d.lines[-30:])
        status = d.ctl("status", "--json", "app")
        assert status.returncode == 0, (n, status.stderr)
        assert json.loads(status.stdout)[0]["state"] == "running"
        assert not [line for line in d.lines if "Traceback" in line], "\n".join(d.lines[-40:])
        if kind in ("random", "huge", "folder"):  # every file is damaged: each is named in a record
            d.wait_for("daemon.ready")
            for rel in NAMED:
                name = (work / rel).name if rel.startswith("state/alerts/") else str(work / rel)
                assert any(name in line for line in d.lines), (n, rel, "\n".join(d.lines[-40:]))
        assert d.stop() == 0, (n, "\n".join(d.lines[-30:]))


@pytest.mark.parametrize("content", [b"\xff\xfe", b"[" * 300_000, b'{"masked": 3}', b"{", b"7" * (8 << 20)])
def test_a_damaged_units_json_is_a_located_error_not_a_traceback(tmp_path: Path, content: bytes) -> None:
    config = _config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "units.json").write_bytes(content)
    out = subprocess.run(
        [sys.executable, "-m", "hasupd", "run", "--config-dir", str(config), "--state-dir", str(state),
         "--runtime-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"{state / 'units.json'}:1:1:" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
