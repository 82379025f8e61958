"""The configuration as frozen, typed data.

Defaults live here and only here. Everything is compared by value, so a reload is a diff of two
``Config`` objects. Durations are float seconds, sizes are int bytes, signals are ``signal.Signals``.
Mappings are stored as sorted tuples of pairs so that the objects stay hashable.
"""

from __future__ import annotations

import signal
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum

from hasupd.states import OutputMode, RestartMode, ServiceType

DEFAULT_CONFIG_DIR = "/etc/hasupd"
DEFAULT_STATE_DIR = "/var/lib/hasupd"
DEFAULT_RUNTIME_DIR = "/run/hasupd"
# Services shipped by packages; /etc/hasupd/services.d overrides them file by file.
DEFAULT_VENDOR_DIR = "/usr/lib/hasupd"


class ProbeKind(StrEnum):
    HTTP = "http"
    TCP = "tcp"
    EXEC = "exec"


class RecoveryKind(StrEnum):
    EXEC = "exec"
    RESTORE = "restore"
    ROLLBACK_CONFIG = "rollback_config"


class TlsMode(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class LogTarget(StrEnum):
    AUTO = "auto"
    JOURNAL = "journal"
    STDERR = "stderr"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class ContainerEngine(StrEnum):
    PODMAN = "podman"
    DOCKER = "docker"


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class StartLimit:
    burst: int = 5
    interval_sec: float = 60.0


@dataclass(frozen=True)
class HeartbeatFile:
    path: str
    max_age_sec: float = 30.0


@dataclass(frozen=True)
class HealthProbe:
    kind: ProbeKind
    # http: the URL; tcp: "host:port"; exec: unused (see argv)
    target: str = ""
    argv: tuple[str, ...] = ()
    interval_sec: float = 5.0
    timeout_sec: float = 2.0
    failures: int = 3
    start_period_sec: float = 0.0


@dataclass(frozen=True)
class RLimit:
    """One resource limit set in the child before exec; None is "infinity"."""

    soft: int | None
    hard: int | None


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes, RSS of the whole tree
    cpu_percent: float | None = None
    cpu_window_sec: float = 60.0
    nofile: RLimit | None = None  # None: hasupd's own (setrlimit in the child, as systemd's LimitNOFILE=)
    nproc: RLimit | None = None
    core: RLimit | None = None  # bytes


@dataclass(frozen=True)
class IoNice:
    """I/O scheduling class and level (ioprio_set(2), systemd's IOSchedulingClass=/Priority=)."""

    klass: str = "best-effort"  # realtime | best-effort | idle
    level: int = 4  # 0 (highest) .. 7; unused for idle


@dataclass(frozen=True)
class SocketSpec:
    listen: str  # "host:port", "[v6]:port" or an absolute unix socket path
    name: str | None = None  # LISTEN_FDNAMES entry; defaults to the service name


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    engine: ContainerEngine = ContainerEngine.PODMAN
    args: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecoveryAction:
    kind: RecoveryKind
    argv: tuple[str, ...] = ()  # kind == exec
    job: str | None = None  # kind == restore


@dataclass(frozen=True)
class Placement:
    """Where a service runs in the fleet: on exactly one host (singleton) or on ``replicas`` hosts."""

    singleton: bool = False
    replicas: int = 1  # 1 when singleton
    prefer: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()

    @property
    def slots(self) -> int:
        """Return how many owners the service has at once (1 for a singleton)."""
        return 1 if self.singleton else self.replicas


@dataclass(frozen=True)
class ErrorsConfig:
    """Which lines of a service's output are errors, beside those it marks itself (see
    ``hasupd.observe.error_lines``): regular expressions, any of which makes a line an error."""

    match: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """One service's settings.

    Slots: one per service, and with more than 30 fields an instance would carry a dict of its own
    (~1.5 KB) instead of Python's compact attribute values (slots: 8 bytes a field).
    """

    name: str
    # The file it came from; not part of the value (moving a file changes nothing that runs).
    source: str = field(default="", compare=False)
    description: str = ""
    command: tuple[str, ...] = ()
    type: ServiceType = ServiceType.SIMPLE
    user: str | None = None
    group: str | None = None
    working_directory: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    environment_files: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    instances: int = 1
    sockets: tuple[SocketSpec, ...] = ()
    restart: RestartMode = RestartMode.ON_FAILURE
    restart_sec: float = 0.1
    restart_max_delay_sec: float = 30.0
    # Exit codes that mean "retrying cannot help" (systemd's RestartPreventExitStatus=).
    restart_prevent_exit_status: tuple[int, ...] = ()
    start_limit: StartLimit = StartLimit()
    timeout_start_sec: float = 90.0
    timeout_stop_sec: float = 10.0
    kill_signal: signal.Signals = signal.SIGTERM
    watchdog_sec: float | None = None
    heartbeat_file: HeartbeatFile | None = None
    health: tuple[HealthProbe, ...] = ()
    limits: Limits = Limits()
    output: OutputMode | None = None  # None: journal when journald is there, else file
    container: ContainerSpec | None = None
    on_failure: tuple[RecoveryAction, ...] = ()
    alerts: tuple[str, ...] | None = None  # None: every channel
    placement: Placement | None = None  # None: local, as without a fleet
    errors: ErrorsConfig = ErrorsConfig()
    # A service's own reload (``hasupctl reload NAME``): a signal to the main process or a command.
    reload_signal: signal.Signals | None = None
    reload_command: tuple[str, ...] = ()
    # Timers (type: oneshot only): run on a cron expression; ``persistent`` catches up a run missed
    # while hasupd was down; each run waits a random 0..randomized_delay_sec first.
    schedule: str | None = None
    persistent: bool = False
    randomized_delay_sec: float = 0.0
    # Per-process settings applied in the child before exec (None / empty: hasupd's own).
    nice: int | None = None
    ionice: IoNice | None = None
    umask: int | None = None
    oom_score_adjust: int | None = None
    supplementary_groups: tuple[str, ...] = ()
    no_new_privileges: bool = False

    # Pickled as before slots (a dict of the fields: STATE_DIR/known-good/, hasupd.recovery), so that
    # the files an older hasupd wrote load here, and the files written here load in an older hasupd.
    def __getstate__(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict[str, object]) -> None:
        for f in fields(self):
            if f.name in state:
                object.__setattr__(self, f.name, state[f.name])
            elif f.default is not MISSING:  # a field added since the file was written
                object.__setattr__(self, f.name, f.default)


# --------------------------------------------------------------------------- backups


@dataclass(frozen=True)
class Keep:
    """restic --keep-* values; None means "not given". Every value is >= 1 once validated."""

    last: int | None = None
    hourly: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None
    within: str | None = None  # restic duration such as "2y5m7d3h"


@dataclass(frozen=True)
class LongTerm:
    repository: str
    schedule: str = "@weekly"
    keep: Keep = Keep()


@dataclass(frozen=True)
class CheckSpec:
    schedule: str = "@weekly"
    read_data_subset_n: int | None = None  # "1/12" -> 12: every pack read once per 12 runs


@dataclass(frozen=True)
class DrillSpec:
    schedule: str = "@monthly"
    boot: bool = False  # also start a shadow instance of each quiesce service on the restored copy


class DatabaseKind(StrEnum):
    POSTGRESQL = "postgresql"
    MYSQL = "mysql"
    SQLITE = "sqlite"


@dataclass(frozen=True)
class DatabaseSpec:
    """One database a backup job dumps while it keeps serving (``databases:`` of a backup job)."""

    kind: DatabaseKind
    database: str  # the database name; for sqlite the absolute path of its file
    name: str  # hasupd's name of the dump: snapshot file name and ``db:NAME`` tag
    user: str | None = None
    host: str | None = None  # a host name, or an absolute path: a socket directory (pg) / file (mysql)
    port: int | None = None
    password_file: str | None = None
    bin_dir: str | None = None  # where pg_dump/mysqldump ... are; None: PATH
    globals: bool = False  # postgresql: also ``pg_dumpall --globals-only`` as NAME-globals
    check_query: str | None = None  # restore: must succeed (and return a row) on the restored copy


@dataclass(frozen=True)
class BackupJobConfig:
    name: str
    repository: str
    paths: tuple[str, ...]
    source: str = field(default="", compare=False)
    exclude: tuple[str, ...] = ()
    schedule: str = "@daily"
    randomized_delay_sec: float = 0.0
    keep: Keep = Keep()
    before: tuple[tuple[str, ...], ...] = ()
    quiesce: tuple[str, ...] = ()
    long_term: LongTerm | None = None
    check: CheckSpec | None = None
    drill: DrillSpec | None = None
    max_age_sec: float | None = None
    prune_schedule: str = "@weekly"
    databases: tuple[DatabaseSpec, ...] = ()


@dataclass(frozen=True)
class RepositoryConfig:
    name: str
    url: str
    password_file: str
    environment_file: str | None = None


# --------------------------------------------------------------------------- daemon


@dataclass(frozen=True)
class LogConfig:
    target: LogTarget = LogTarget.AUTO
    format: LogFormat = LogFormat.JSON


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None  # "host:port"; None: off


@dataclass(frozen=True)
class WebTls:
    cert_file: str  # PEM certificate (chain)
    key_file: str  # its PEM private key


@dataclass(frozen=True)
class WebConfig:
    """The read-only dashboard. Beyond loopback it needs ``tls`` and a credential (checked at load)."""

    listen: str  # "host:port"
    tls: WebTls | None = None
    token_file: str | None = None  # the secret: a bearer token, or the password of HTTP Basic auth
    password_file: str | None = None  # the same, under the name people look for


@dataclass(frozen=True)
class AccessConfig:
    read: tuple[str, ...] = ("hasupd",)
    operate: tuple[str, ...] = ("hasupd-operators",)
    admin: tuple[str, ...] = ("hasupd-admin",)
    # The control socket is 0660 with this group (when it exists): only its members reach hasupd at all;
    # their roles then decide what they may do.
    socket_group: str = "hasupd"


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "localhost"
    port: int = 25
    tls: TlsMode = TlsMode.NONE
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    timeout_sec: float = 30.0


@dataclass(frozen=True)
class EmailChannel:
    smtp: SmtpConfig
    from_addr: str
    to: tuple[str, ...]


@dataclass(frozen=True)
class SendmailChannel:
    """Hand each message to the local MTA: ``PATH -t -oi`` with the message on stdin."""

    from_addr: str
    to: tuple[str, ...]
    path: str = "/usr/sbin/sendmail"
    timeout_sec: float = 30.0


@dataclass(frozen=True)
class PagerDutyChannel:
    """PagerDuty Events API v2 (or a compatible receiver at ``url``); the incident id is the dedup key."""

    routing_key_file: str
    url: str = "https://events.pagerduty.com/v2/enqueue"
    timeout_sec: float = 10.0


# Alert levels a channel can ask for (``min_level``), as the logging levels of the events.
ALERT_LEVELS: dict[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


@dataclass(frozen=True)
class AlertChannel:
    """One alert channel: exactly one transport (email, apprise, sendmail or pagerduty) and its filters."""

    name: str
    email: EmailChannel | None = None
    coalesce_sec: float = 300.0
    on_crash: bool = False  # also alert on every restart, not only failures
    apprise: tuple[str, ...] = ()  # Apprise URLs (ntfy://, gotify://, slack://, json://, ...)
    sendmail: SendmailChannel | None = None
    pagerduty: PagerDutyChannel | None = None
    timeout_sec: float = 30.0  # one delivery attempt of an apprise channel
    min_level: str = "debug"  # alerts below this level skip the channel (resolved notices never do)
    events: tuple[str, ...] = ()  # only alerts raised by these event names; () = every one

    @property
    def transport(self) -> str:
        """Return the transport's name: "email", "apprise", "sendmail" or "pagerduty"."""
        if self.apprise:
            return "apprise"
        if self.sendmail is not None:
            return "sendmail"
        if self.pagerduty is not None:
            return "pagerduty"
        return "email"


class RuleKind(StrEnum):
    NEW_ERROR = "new_error"  # an error group seen for the first time
    ERROR_RATE = "error_rate"  # an error group's count in a window above a threshold or its baseline
    RESTART_RATE = "restart_rate"  # a service's restarts in a window above a threshold or its baseline
    QUIET = "quiet"  # no output and no other sign of life for a while (a dead-man's switch)


class Baseline(StrEnum):
    SAME_HOUR = "same_hour"  # the same hour of the day over the past days
    MOVING_AVERAGE = "moving_average"  # the hourly mean over the past days


@dataclass(frozen=True)
class AlertRule:
    """One of ``alerts.rules`` in hasupd.yaml (see ``hasupd.alerts.rules`` for what each kind does)."""

    name: str
    kind: RuleKind
    services: tuple[str, ...] = ()  # empty: every service
    group: str | None = None  # new_error, error_rate: only this error group
    # error_rate, restart_rate: the counting window; new_error: how long without the group until the
    # incident resolves; quiet: how long a service may stay quiet.
    window_sec: float = 3600.0
    above: float | None = None  # fire when the count in the window is above this ...
    factor: float | None = None  # ... and above factor x the baseline for such a window
    baseline: Baseline = Baseline.SAME_HOUR
    days: int = 7  # the history a baseline is taken from


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]  # "http(s)://host:port" of etcd's client (gRPC gateway) URLs
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    # etcd's --election-timeout when it is known: check-config then refuses a lease TTL that cannot
    # ride out a leader election (see hasupd/config/fleet_timing.py); None: not checked.
    election_timeout_sec: float | None = None


@dataclass(frozen=True)
class FleetConfig:
    etcd: EtcdConfig
    cluster: str
    host: str  # defaults to the host name when hasupd.yaml leaves it out
    lease_ttl_sec: float = 10.0


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: str = DEFAULT_STATE_DIR
    runtime_dir: str = DEFAULT_RUNTIME_DIR
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    access: AccessConfig = AccessConfig()
    alerts: tuple[AlertChannel, ...] = ()
    repositories: tuple[RepositoryConfig, ...] = ()
    fleet: FleetConfig | None = None  # None: no fleet, every service is local
    rules: tuple[AlertRule, ...] = ()  # alerts.rules: what is out of the ordinary
    web: WebConfig | None = None  # None: no dashboard


@dataclass(frozen=True)
class Config:
    """Everything under one config dir, validated."""

    config_dir: str
    daemon: DaemonConfig = DaemonConfig()
    services: tuple[ServiceConfig, ...] = ()  # sorted by name
    backups: tuple[BackupJobConfig, ...] = ()  # sorted by name

    def service(self, name: str) -> ServiceConfig | None:
        """Return the service called ``name``, or None."""
        return next((s for s in self.services if s.name == name), None)
