"""Service states, results and restart modes, spelled as systemd spells them."""

from enum import StrEnum


class ServiceState(StrEnum):
    DEAD = "dead"
    START_PRE = "start-pre"
    START = "start"
    RUNNING = "running"
    STOP = "stop"
    STOP_WATCHDOG = "stop-watchdog"
    STOP_SIGTERM = "stop-sigterm"
    STOP_SIGKILL = "stop-sigkill"
    STOP_POST = "stop-post"
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
        ServiceState.START_PRE,
        ServiceState.START,
        ServiceState.RUNNING,
        ServiceState.STOP,
        ServiceState.STOP_WATCHDOG,
        ServiceState.STOP_SIGTERM,
        ServiceState.STOP_SIGKILL,
        ServiceState.STOP_POST,
    }
)
STOPPING_STATES = frozenset(
    {
        ServiceState.STOP,
        ServiceState.STOP_WATCHDOG,
        ServiceState.STOP_SIGTERM,
        ServiceState.STOP_SIGKILL,
        ServiceState.STOP_POST,
    }
)
# Nothing runs and nothing is scheduled in these.
INACTIVE_STATES = frozenset({ServiceState.DEAD, ServiceState.FAILED})
