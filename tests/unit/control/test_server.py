"""The control server on a real unix socket: a handler's unexpected exception is an error reply and a
control.error record, and the server (and the TaskGroup it runs in, hasupd's) goes on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from hasupd import events as ev
from hasupd.config.model import AccessConfig
from hasupd.control import commands
from hasupd.control.auth import Role
from hasupd.control.commands import Command
from hasupd.control.context import Context
from hasupd.control.server import ControlServer


async def _boom(ctx: Context, args: dict[str, Any]) -> Any:
    return {"a": 1}["b"]  # a bug: KeyError


async def _ask(path: Path, line: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(line)
    await writer.drain()
    answer: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 10))
    writer.close()
    return answer


def test_unexpected_handler_error_is_a_reply_and_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(commands.COMMANDS, "boom", Command(Role.READ, False, _boom))
    published: list[ev.Event] = []

    async def scenario() -> None:
        async with asyncio.TaskGroup() as tasks:
            server = ControlServer(
                tmp_path / "control.sock",
                Context(manager=None, reloader=None),  # type: ignore[arg-type]  # boom needs neither
                access=AccessConfig,
                publish=published.append,
                spawn=tasks.create_task,
            )
            await server.start()
            try:
                for _ in range(3):
                    reply = await _ask(server.path, b'{"v":1,"cmd":"boom","args":{}}\n')
                    assert reply["ok"] is False and reply["code"] == 1
                    assert "KeyError" in reply["error"] and "control.error" in reply["error"]
                reply = await _ask(server.path, b"[" * 5000 + b"\n")
                assert reply["code"] == 2 and "nested deeper" in reply["error"]
            finally:
                await server.close()

    asyncio.run(scenario())  # the TaskGroup ended normally: nothing escaped into it
    failures = [e for e in published if isinstance(e, ev.ControlFailed)]
    assert len(failures) == 3
    assert failures[0].error == "KeyError: 'b'" and "_boom" in failures[0].traceback
    assert failures[0].request == '{"v":1,"cmd":"boom","args":{}}\n'
