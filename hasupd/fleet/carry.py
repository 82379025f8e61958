"""The fleet membership carried from one image of hasupd to the next (re-exec, restart after a crash).

The old image puts ``FleetNode.hand_over()`` in the state record (``fleet``); the new one reads it here,
before the node runs: the services it owned that still run here carry on (same process, same fencing
token in their environment, same lease kept alive), nothing is stopped or elected anew. What cannot be
carried on is stopped before the node runs, as if adopted without ownership. Whether the lease is still
alive is the node's first question to etcd (``FleetNode.resume``): until then the deadline from the last
acknowledged keep-alive in the record holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hasupd.config.model import FleetConfig
from hasupd.fleet import keys
from hasupd.fleet.node import Owned
from hasupd.manager import Manager


@dataclass
class Carried:
    """What the new image takes over: the lease and the keys whose services still run here."""

    lease: int
    last_ack: float
    last_ack_wall: float
    owned: list[Owned] = field(default_factory=list)
    gave_up: dict[str, tuple[float, str]] = field(default_factory=dict)
    stale: list[tuple[str, int]] = field(default_factory=list)  # (key, token): not placed so any more


def carried(state: object, config: FleetConfig, manager: Manager) -> Carried | None:
    """Return the membership to carry on from the record's ``fleet`` entry, or None when there is none
    to carry (no entry, another cluster or host name, a malformed entry). A key is carried on only
    while its service is still placed by the same rule and has a process here (a hand-over under way
    is carried on as well: the node releases the key once the service is down)."""
    if not isinstance(state, dict):
        return None
    try:
        if state["cluster"] != config.cluster or state["host"] != config.host:
            return None
        out = Carried(
            lease=int(state["lease"]),
            last_ack=float(state["last_ack"]),
            last_ack_wall=float(state["last_ack_wall"]),
        )
        placed = manager.placed()
        for item in state["owned"]:
            owned = Owned(
                service=str(item["service"]),
                key=str(item["key"]),
                token=int(item["token"]),
                since=float(item["since"]),
                releasing=item.get("releasing"),
                environment={str(k): str(v) for k, v in dict(item.get("environment") or {}).items()},
            )
            config_ = placed.get(owned.service)
            slots = (
                keys.slot_keys(config.cluster, owned.service, config_.placement)
                if config_ is not None and config_.placement is not None
                else []
            )
            if owned.key not in slots:
                out.stale.append((owned.key, owned.token))  # given back at the first round
            elif owned.releasing is not None or not manager.placed_inactive(owned.service):
                out.owned.append(owned)
            # else: placed but not running (it died while no hasupd watched): the key stays bound to
            # the lease, and the first round owns it again and starts the service, same token.
        for service, (until, key) in dict(state.get("gave_up") or {}).items():
            out.gave_up[str(service)] = (float(until), str(key))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):  # OverflowError: int(inf)
        return None
    if out.lease <= 0:
        return None
    return out


def apply_environment(carry: Carried, manager: Manager) -> None:
    """Give the carried services' units their fleet environment again (the new image's config does
    not have it): a restart after a crash here starts them with the same token."""
    for owned in carry.owned:
        if owned.releasing is None:
            manager.placed_environment(owned.service, owned.environment)
