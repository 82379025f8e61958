"""The fleet's timing rules, in one place for the config check and the node (``hasupd/fleet/node.py``).

Safety: etcd cannot expire a lease earlier than TTL after the send of the last keep-alive it
acknowledged (a new raft leader even renews every lease in full), so a host that stops its placed
services at ``last acknowledged send + fence_delay`` and is done stopping ``fence_margin`` before that
send + TTL never overlaps with the next owner. The config check keeps every placed service's
``timeout_stop_sec`` within ``TTL/2 - FENCE_MARGIN_SEC``, so ``fence_delay`` is at least TTL/2.

Liveness: killing etcd's leader leaves no member to renew leases until a new leader is elected, which
takes up to twice etcd's ``--election-timeout`` (raft's randomised timeout) plus a round trip. An owner
rides that out only if ``fence_delay`` minus one keep-alive interval (the age of the last
acknowledgement when the leader dies) covers it: ``rides_out_election``.
"""

from __future__ import annotations

FENCE_MARGIN_SEC = 0.5  # at least this much between a fenced stop's end (SIGKILL included) and expiry
ELECTION_ANSWER_SEC = 0.5  # after a new leader is elected: the first keep-alive answered through it
MIN_STEP_SEC = 0.2


def keepalive_interval(ttl: float) -> float:
    """Return the time between keep-alives (and between reads of the fleet's keys)."""
    return max(MIN_STEP_SEC, ttl / 6)


def call_timeout(ttl: float) -> float:
    """Return how long one etcd call (all endpoints tried in turn) may take before it counts as failed."""
    return max(MIN_STEP_SEC, ttl / 6)


def fence_margin(ttl: float) -> float:
    """Return the time kept between the end of a fenced stop and the earliest possible lease expiry."""
    return max(FENCE_MARGIN_SEC, ttl / 10)


def fence_delay(ttl: float, max_stop: float) -> float:
    """Return the time after the send of the last acknowledged keep-alive at which placed services are
    stopped (fencing): late enough to ride out an etcd leader election, early enough that a stop of
    ``max_stop`` seconds (the longest ``timeout_stop_sec`` of the placed services) ends ``fence_margin``
    before the lease can expire; never earlier than TTL/2."""
    return max(ttl / 2, ttl - max_stop - fence_margin(ttl))


def election_allowance(election_timeout: float) -> float:
    """Return the longest time etcd can go without a leader after its leader dies, plus an answer."""
    return 2 * election_timeout + ELECTION_ANSWER_SEC


def rides_out_election(ttl: float, max_stop: float, election_timeout: float) -> bool:
    """Return True when an owner keeps its services through an etcd leader election."""
    return fence_delay(ttl, max_stop) - keepalive_interval(ttl) >= election_allowance(election_timeout)


def min_ttl_for_election(max_stop: float, election_timeout: float) -> int:
    """Return the smallest whole-second TTL for which ``rides_out_election`` holds."""
    ttl = 2
    while not rides_out_election(ttl, max_stop, election_timeout) and ttl < 3600:
        ttl += 1
    return ttl
