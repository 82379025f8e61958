"""The event bus: FIFO delivery, also for events published while another is being delivered."""

from __future__ import annotations

import pytest

from hasupd import events as ev


def test_event_published_by_a_subscriber_reaches_every_subscriber_after_the_current_one() -> None:
    bus = ev.EventBus()
    seen: dict[str, list[str]] = {"first": [], "second": [], "third": []}
    first_event = ev.ServiceStable(service="a", pid=1)
    caused = ev.ServiceStable(service="b", pid=2)

    def first(event: ev.Event) -> None:
        seen["first"].append(str(event.service))
        if event is first_event:
            bus.publish(caused)  # a reaction, such as the manager starting a unit
            # Queued, not delivered inside this call: nobody has seen it yet.
            assert seen["second"] == [] and seen["third"] == []

    bus.subscribe(first)
    bus.subscribe(lambda e: seen["second"].append(str(e.service)))
    bus.subscribe(lambda e: seen["third"].append(str(e.service)))
    bus.publish(first_event)
    assert seen == {"first": ["a", "b"], "second": ["a", "b"], "third": ["a", "b"]}


def test_chains_of_reactions_do_not_recurse() -> None:
    bus = ev.EventBus()
    seen: list[int] = []

    def react(event: ev.Event) -> None:
        assert isinstance(event, ev.ServiceStable) and event.pid is not None
        seen.append(event.pid)
        if event.pid < 5000:  # far deeper than the interpreter's recursion limit
            bus.publish(ev.ServiceStable(service="x", pid=event.pid + 1))

    bus.subscribe(react)
    bus.publish(ev.ServiceStable(service="x", pid=0))
    assert seen == list(range(5001))


def test_a_raising_subscriber_propagates_and_drops_what_was_queued_behind_it() -> None:
    bus = ev.EventBus()
    seen: list[str] = []

    def broken(event: ev.Event) -> None:
        seen.append(str(event.service))
        if event.service == "a":
            bus.publish(ev.ServiceStable(service="queued", pid=2))
            raise RuntimeError("bug")

    bus.subscribe(broken)
    with pytest.raises(RuntimeError, match="bug"):
        bus.publish(ev.ServiceStable(service="a", pid=1))
    # The queued event was dropped and the bus is not stuck: the next event is delivered at once.
    bus.publish(ev.ServiceStable(service="b", pid=3))
    assert seen == ["a", "b"]
