"""The restore request's error handling: every failure of the restore itself is an error reply and a
record; only a failure of the supervision (stopping/starting services) propagates."""

from __future__ import annotations

from typing import Any, cast

import pytest

from hasupd import events as ev
from hasupd.backup.restore import BadRestorePath, RestoreError, SupervisionError
from hasupd.control.commands.restore import restore
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit


class FakeRestorer:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def plan(self, *args: Any) -> Any:
        raise self.error


class FakeBackups:
    def __init__(self, error: BaseException) -> None:
        self.runners = {"app-data": object()}
        self._error = error

    def restorer(self, name: str, manager: Any) -> FakeRestorer:
        return FakeRestorer(self._error)


class FakeManager:
    def __init__(self) -> None:
        self.published: list[ev.Event] = []

    def publish(self, event: ev.Event) -> None:
        self.published.append(event)


def context(error: BaseException) -> tuple[Context, FakeManager]:
    manager = FakeManager()
    ctx = Context(manager=cast(Any, manager), reloader=cast(Any, None), backups=cast(Any, FakeBackups(error)))
    return ctx, manager


ARGS = {"job": "app-data", "in_place": True, "path": "/srv/x", "_user": "root"}


@pytest.mark.parametrize(
    ("error", "code"),
    [(BadRestorePath("/srv/x does not exist in snapshot"), Exit.USAGE), (RestoreError("no"), Exit.FAILED)],
)
async def test_restore_failures_are_error_replies(error: Exception, code: Exit) -> None:
    ctx, _ = context(error)
    with pytest.raises(CommandError) as raised:
        await restore(ctx, dict(ARGS))
    assert raised.value.code == code and str(error) in str(raised.value)


async def test_a_bug_in_the_restore_code_is_an_error_reply_and_a_record() -> None:
    ctx, manager = context(FileNotFoundError(2, "No such file or directory"))
    with pytest.raises(CommandError) as raised:
        await restore(ctx, dict(ARGS))
    assert raised.value.code == Exit.FAILED and "FileNotFoundError" in str(raised.value)
    (step,) = manager.published
    assert isinstance(step, ev.RestoreStep) and step.step == "error" and not step.ok and step.user == "root"


async def test_a_failure_of_the_supervision_propagates() -> None:
    ctx, _ = context(SupervisionError("stop_many broke"))
    with pytest.raises(SupervisionError):
        await restore(ctx, dict(ARGS))
