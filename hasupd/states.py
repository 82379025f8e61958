"""Service states, results, health and restart modes, spelled as systemd spells them.

Only states the state machine enters are declared (systemd's start-pre, stop and stop-post have no
counterpart: hasupd runs no ExecStartPre/ExecStop/ExecStopPost commands).
"""

from enum import StrEnum


class ServiceState(StrEnum):
    DEAD = "dead"
    START = "start"
    RUNNING = "running"
    RELOADING = "reloading"  # the service's own reload (systemd's "reload"): running, then running again
    STOP_WATCHDOG = "stop-watchdog"
    STOP_SIGTERM = "stop-sigterm"
    STOP_SIGKILL = "stop-sigkill"
    FAILED = "failed"
    AUTO_RESTART = "auto-restart"


class ServiceResult(StrEnum):
    SUCCESS = "success"
    RESOURCES = "resources"
    TIMEOUT = "timeout"
    EXIT_CODE = "exit-code"
    SIGNAL = "signal"
    CORE_DUMP = "core-dump"
    WATCHDOG = "watchdog"
    HEALTH = "health"
    OOM_KILL = "oom-kill"
    START_LIMIT_HIT = "start-limit-hit"


class Health(StrEnum):
    """What the health probes of a running service say (a service without probes has no health)."""

    STARTING = "starting"  # probes armed, none has passed or failed yet
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class RestartMode(StrEnum):
    NO = "no"
    ALWAYS = "always"
    ON_SUCCESS = "on-success"
    ON_FAILURE = "on-failure"
    ON_ABNORMAL = "on-abnormal"
    ON_WATCHDOG = "on-watchdog"


class ServiceType(StrEnum):
    SIMPLE = "simple"
    NOTIFY = "notify"
    ONESHOT = "oneshot"


class OutputMode(StrEnum):
    JOURNAL = "journal"
    FILE = "file"
    INHERIT = "inherit"


# A process of the service may be alive in these states.
ACTIVE_STATES = frozenset(
    {
        ServiceState.START,
        ServiceState.RUNNING,
        ServiceState.RELOADING,
        ServiceState.STOP_WATCHDOG,
        ServiceState.STOP_SIGTERM,
        ServiceState.STOP_SIGKILL,
    }
)
STOPPING_STATES = frozenset(
    {
        ServiceState.STOP_WATCHDOG,
        ServiceState.STOP_SIGTERM,
        ServiceState.STOP_SIGKILL,
    }
)
# Nothing runs and nothing is scheduled in these.
INACTIVE_STATES = frozenset({ServiceState.DEAD, ServiceState.FAILED})
