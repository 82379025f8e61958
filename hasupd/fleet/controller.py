"""Wiring of the fleet into the daemon: the etcd client in its own worker thread, the node, leaving.

Nothing here runs unless hasupd.yaml has ``fleet:``. A fleet that cannot even be set up (unreadable
password file, bad certificates) is recorded as ``fleet.join-refused``; local services are unaffected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from hasupd import events as ev
from hasupd.config.fleet_timing import call_timeout
from hasupd.config.model import FleetConfig
from hasupd.fleet import keys
from hasupd.fleet.carry import apply_environment, carried
from hasupd.fleet.etcd import EtcdError, EtcdGateway
from hasupd.fleet.node import CRASH_RESTART, FleetNode
from hasupd.fleet.status import describe
from hasupd.manager import Manager

T = TypeVar("T")


class Fleet:
    """The node plus the one worker thread every etcd call runs in (calls are serialised there)."""

    def __init__(
        self,
        config: FleetConfig,
        manager: Manager,
        publish: Callable[[ev.Event], None],
        handed_over: object = None,
        how: str = CRASH_RESTART,
    ) -> None:
        """``handed_over``: the ``fleet`` entry of the state record the last image of hasupd left (on a
        re-exec, ``how`` = "re-exec"), whose membership this one carries on (see ``carry``)."""
        etcd_config = config.etcd
        password = None
        if etcd_config.password_file is not None:
            with open(etcd_config.password_file, encoding="utf-8") as file:
                password = file.read().strip()
        self.etcd = EtcdGateway(
            etcd_config.endpoints,
            timeout=call_timeout(config.lease_ttl_sec),
            ca_file=etcd_config.ca_file,
            cert_file=etcd_config.cert_file,
            key_file=etcd_config.key_file,
            username=etcd_config.username,
            password=password,
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hasupd-etcd"
        )
        self.manager = manager
        placed = manager.placed()
        carry = carried(handed_over, config, manager)
        kept = {o.service for o in carry.owned} if carry is not None else set()
        if carry is not None:
            apply_environment(carry, manager)
        for name in placed:
            if name not in kept and not manager.placed_inactive(name):
                # Adopted without an ownership handed over (no record, or not owned by the last image):
                # the ownership may be another host's. Stop it; the election starts it again here.
                manager.stop_placed(name, "fleet: running without ownership after a hasupd restart")
        loop = asyncio.get_running_loop()
        self.node = FleetNode(
            config,
            {name: s.placement for name, s in placed.items() if s.placement is not None},
            {name: s.timeout_start_sec for name, s in placed.items()},
            etcd=self.etcd,
            call=self._call,
            runner=manager,
            publish=publish,
            now=loop.time,
            sleep=asyncio.sleep,
            stop_timeouts={name: s.timeout_stop_sec for name, s in placed.items()},
        )
        if carry is not None:
            self.node.resume(carry.lease, carry.owned, carry.last_ack, carry.last_ack_wall, how)
            self.node.resume_keys(carry.gave_up, carry.stale)

    async def _call(self, fn: Callable[[], T], timeout: float) -> T:
        """Run ``fn`` in the etcd thread; give up waiting after ``timeout`` (the thread's own socket
        timeout ends the call soon after)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        return await asyncio.wait_for(future, timeout=max(0.0, timeout))

    def reconfigure(self, changed: set[str], updated: set[str]) -> None:
        """Follow a reload the Manager applied (its config is the new one)."""
        placed = self.manager.placed()
        self.node.reconfigure(
            {name: s.placement for name, s in placed.items() if s.placement is not None},
            {name: s.timeout_start_sec for name, s in placed.items()},
            changed,
            updated,
            stop_timeouts={name: s.timeout_stop_sec for name, s in placed.items()},
        )

    async def leave(self) -> None:
        """Stop the placed services here, wait (bounded) for them, then revoke the lease so that
        another host takes over at once instead of after the TTL."""
        placed = list(self.manager.placed())
        self.node.stop_all("hasupd is stopping")
        await self.manager.stop_many(
            [u for name in placed for u in self.manager.resolve(name)], "hasupd is stopping"
        )
        lease = self.node.view.lease
        if lease:
            # If etcd does not answer, the lease expires by itself.
            with contextlib.suppress(EtcdError, TimeoutError):
                await self._call(lambda: self.etcd.revoke(lease), max(0.5, self.node.ttl / 3))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def status(self) -> dict[str, Any]:
        """Return the fleet view for ``hasupctl fleet status``: read etcd now (the last round's read
        when etcd does not answer), with each live host's lease age."""
        prefix = keys.root(self.node.cluster)
        timeout = max(0.5, self.node.ttl / 3)
        snapshot = self.node.view.snapshot
        ttls: dict[int, tuple[int, int]] = {}
        try:
            snapshot = await self._call(lambda: self.etcd.range_prefix(prefix), timeout)
            for kv in snapshot.kvs:
                if kv.key.startswith(prefix + "hosts/"):
                    lease = kv.lease
                    ttls[lease] = await self._call(lambda lease=lease: self.etcd.time_to_live(lease), timeout)  # type: ignore[misc]
        except (EtcdError, TimeoutError):
            pass  # shown from the last read, marked by "joined"/"refused"
        return describe(self.node, snapshot, ttls)


def build_fleet(
    config: FleetConfig | None,
    manager: Manager,
    publish: Callable[[ev.Event], None],
    handed_over: object = None,
    how: str = CRASH_RESTART,
) -> Fleet | None:
    """Return the fleet for ``config`` (None without ``fleet:``, or when it cannot be set up: recorded),
    carrying on the membership ``handed_over`` by the last image of hasupd (see ``Fleet``)."""
    if config is None:
        return None
    try:
        return Fleet(config, manager, publish, handed_over, how)
    except (OSError, ssl.SSLError, ValueError) as exc:
        publish(ev.FleetJoinRefused(host=config.host, reason=f"cannot set up the etcd client: {exc}"))
        for name in manager.placed():
            if not manager.placed_inactive(name):  # adopted, and no fleet to own it: if in doubt, stop
                manager.stop_placed(name, "fleet: running without ownership after a hasupd restart")
        return None
