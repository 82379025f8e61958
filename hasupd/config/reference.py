"""The configuration reference: every key of every config file, with its type, default and meaning.

This table is the ONE place a key is documented. ``python3 -m hasupd.cli.gendocs`` writes the man
pages hasupd.yaml(5), hasupd.service(5), hasupd.backup(5) and the JSON Schemas from it, and
tests/unit/config/test_reference.py fails, naming the key, when a key the validators accept has no
entry here (or an entry names a key they no longer accept, or a default here is not the model's).

To document a new key: add one ``Key`` to the list of its file below (in the order the man page should
show it, after the mapping it is in), then run ``python3 -m hasupd.cli.gendocs``. The test learns the keys
from ``read_mapping``; a converter that accepts a key some other way (a reserved name beside free names,
such as a fixed key in ``alerts:`` next to the channels) reports it with ``ctx.saw(path, keys)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hasupd.config.model import ALERT_LEVELS, Baseline, ContainerEngine, LogFormat, LogTarget, TlsMode
from hasupd.config.reference_types import (
    ARGV,
    BOOL,
    DURATION,
    EMAIL,
    ENVIRONMENT,
    LISTEN,
    LISTEN_OR_UNIX,
    MAPPING,
    NAME,
    PATH,
    SCHEDULE,
    SIGNAL,
    SIZE,
    STRING,
    TEXT,
    URL,
    Key,
    Type,
    enum,
    integer,
    list_of,
    list_of_mappings,
    named_mappings,
    number,
)
from hasupd.states import OutputMode, RestartMode, ServiceType


@dataclass(frozen=True)
class ConfigFile:
    """One kind of config file and its man page."""

    kind: str  # "daemon", "service" or "backup"
    page: str  # the man page's name, section 5
    files: str  # where such files live
    summary: str  # the man page's one-line NAME
    description: str  # the man page's DESCRIPTION (paragraphs separated by blank lines)
    keys: tuple[Key, ...]


_NAMES = list_of(NAME, "list of names")
_GROUPS = list_of(TEXT, "list of group names")
_PATHS = list_of(PATH, "list of absolute paths")
_POSITIVE = Type("positive number", {"type": "number", "exclusiveMinimum": 0})
_GROUP = Type("error group id (12 hex digits)", {"type": "string", "pattern": "^[0-9a-f]{12}$"})
_RLIMIT = Type("limit such as 4096, infinity or SOFT:HARD", {"type": ["string", "integer"]})

DAEMON_KEYS = (
    Key(
        "state_dir",
        PATH,
        "Where hasupd keeps its state: the alert spool, schedule stamps, the last "
        "configuration that worked, restart counters. --state-dir overrides it.",
        default="/var/lib/hasupd",
    ),
    Key(
        "runtime_dir",
        PATH,
        "Where hasupd puts its control socket (control.sock) and the services' "
        "notify sockets. --runtime-dir overrides it.",
        default="/run/hasupd",
    ),
    Key("log", MAPPING, "How hasupd writes its own records.", example={}),
    Key(
        "log.target",
        enum(LogTarget),
        "journal: native journald fields; stderr: one record per line "
        "on stderr; auto: journald when its socket is there, else stderr.",
        default="auto",
    ),
    Key(
        "log.format",
        enum(LogFormat),
        "The form of a record on stderr: one JSON object per line, or text for people.",
        default="json",
    ),
    Key("metrics", MAPPING, "The Prometheus endpoint (/metrics).", example={}),
    Key(
        "metrics.listen",
        LISTEN,
        "Serve Prometheus metrics on this address. Absent: no endpoint.",
        default_text="off",
    ),
    Key(
        "access",
        MAPPING,
        "Which unix groups get which role on the control socket; root is always "
        "admin. read: status, logs, events; operate: start, stop, restart, backups; admin: restore, "
        "re-exec.",
        example={},
    ),
    Key("access.read", _GROUPS, "Groups whose members may read.", default=["hasupd"]),
    Key(
        "access.operate",
        _GROUPS,
        "Groups whose members may operate services and jobs.",
        default=["hasupd-operators"],
    ),
    Key("access.admin", _GROUPS, "Groups whose members may do everything.", default=["hasupd-admin"]),
    Key(
        "access.socket_group",
        TEXT,
        "The control socket is mode 0660 with this group (when the group "
        "exists): only its members reach hasupd at all.",
        default="hasupd",
    ),
    Key(
        "alerts",
        named_mappings("mapping of channel names to channels"),
        "Alert channels, by name. Services alert on every channel unless their alerts: key names some.",
        example={"email": {"from": "hasupd@example.org", "to": ["ops@example.org"]}},
    ),
    Key(
        "alerts.NAME.email",
        MAPPING,
        "Send alerts of this channel as email (a channel has exactly one of email, apprise, sendmail "
        "and pagerduty).",
        example={"from": "hasupd@example.org", "to": ["ops@example.org"]},
    ),
    Key("alerts.NAME.email.smtp", MAPPING, "The SMTP server.", example={}),
    Key("alerts.NAME.email.smtp.host", TEXT, "Its host name or address.", default="localhost"),
    Key("alerts.NAME.email.smtp.port", integer(1, 65535), "Its port.", default=25),
    Key(
        "alerts.NAME.email.smtp.tls",
        enum(TlsMode),
        "none: plain; starttls: upgrade after connecting; tls: TLS from the start (port 465).",
        default="none",
    ),
    Key("alerts.NAME.email.smtp.username", TEXT, "Log in with this user; needs password_file."),
    Key("alerts.NAME.email.smtp.password_file", PATH, "The file holding the password; needs username."),
    Key("alerts.NAME.email.smtp.ca_file", PATH, "Trust this CA bundle instead of the system's."),
    Key(
        "alerts.NAME.email.smtp.timeout_sec",
        DURATION,
        "Give up on one delivery attempt after this long; the alert stays in the spool and is retried.",
        default="30s",
    ),
    Key("alerts.NAME.email.from", EMAIL, "The sender.", required=True),
    Key(
        "alerts.NAME.email.to",
        list_of(EMAIL, "list of email addresses", nonempty=True),
        "The recipients.",
        required=True,
    ),
    Key(
        "alerts.NAME.coalesce_sec",
        DURATION,
        "Alerts about one service within this window go out as one message.",
        default="5m",
    ),
    Key(
        "alerts.NAME.on_crash",
        BOOL,
        "Also alert on every restart, not only when a service fails.",
        default=False,
    ),
    Key(
        "alerts.NAME.apprise",
        list_of(TEXT, "list of Apprise URLs", nonempty=True),
        "Send alerts of this channel to these Apprise URLs (ntfy://, gotify://, slack://, json://...).",
    ),
    Key(
        "alerts.NAME.sendmail",
        MAPPING,
        "Send alerts of this channel through the host's MTA (PATH -i -f FROM -- TO...).",
        example={"from": "hasupd@example.org", "to": ["ops@example.org"]},
    ),
    Key("alerts.NAME.sendmail.from", EMAIL, "The sender.", required=True),
    Key(
        "alerts.NAME.sendmail.to",
        list_of(EMAIL, "list of email addresses", nonempty=True),
        "The recipients.",
        required=True,
    ),
    Key("alerts.NAME.sendmail.path", PATH, "The sendmail program.", default="/usr/sbin/sendmail"),
    Key(
        "alerts.NAME.sendmail.timeout_sec",
        DURATION,
        "Give up on one delivery attempt after this.",
        default="30s",
    ),
    Key(
        "alerts.NAME.pagerduty",
        MAPPING,
        "Send alerts of this channel to PagerDuty's Events API v2 (or a receiver that speaks it at url).",
        example={"routing_key_file": "/etc/hasupd/pagerduty.key"},
    ),
    Key("alerts.NAME.pagerduty.routing_key_file", PATH, "The file holding the routing key.", required=True),
    Key(
        "alerts.NAME.pagerduty.url",
        URL,
        "The Events API endpoint.",
        default="https://events.pagerduty.com/v2/enqueue",
    ),
    Key(
        "alerts.NAME.pagerduty.timeout_sec",
        DURATION,
        "Give up on one delivery attempt after this.",
        default="10s",
    ),
    Key(
        "alerts.NAME.timeout_sec",
        DURATION,
        "apprise: give up on one delivery attempt after this.",
        default="30s",
    ),
    Key(
        "alerts.NAME.min_level",
        Type("one of debug, info, warning, error, critical", {"enum": list(ALERT_LEVELS)}),
        "Alerts below this level skip the channel (resolved notices never do).",
        default="debug",
    ),
    Key(
        "alerts.NAME.events",
        list_of(
            Type("event name such as service.failed", {"type": "string"}),
            "list of event names",
            nonempty=True,
        ),
        "Only alerts raised by these events.",
        default_text="every alert",
    ),
    Key(
        "alerts.rules",
        list_of_mappings("list of rules"),
        "What hasupd should find unusual: each rule has a name, exactly one of new_error, error_rate, "
        "restart_rate and quiet, and optionally services.",
        example={"name": "new-errors", "new_error": {}},
    ),
    Key("alerts.rules[].name", NAME, "The rule's name (unique).", required=True),
    Key("alerts.rules[].services", _NAMES, "The services it watches.", default_text="every service"),
    Key(
        "alerts.rules[].new_error",
        MAPPING,
        "An error group seen for the first time.",
        example={},
    ),
    Key(
        "alerts.rules[].new_error.window_sec",
        DURATION,
        "The incident resolves once the group stayed away this long.",
        default="1h",
    ),
    Key("alerts.rules[].new_error.group", _GROUP, "Only this error group.", default_text="every group"),
    Key(
        "alerts.rules[].error_rate",
        MAPPING,
        "An error group's count in a window above above and/or factor x its baseline.",
        example={"factor": 3},
    ),
    Key("alerts.rules[].error_rate.window_sec", DURATION, "The counting window.", default="1h"),
    Key(
        "alerts.rules[].error_rate.above",
        _POSITIVE,
        "Fire when the count in the window is above this.",
        default_text="none",
    ),
    Key(
        "alerts.rules[].error_rate.factor",
        _POSITIVE,
        "Fire when the count is above this times the baseline.",
        default_text="none",
    ),
    Key(
        "alerts.rules[].error_rate.baseline",
        enum(Baseline),
        "How the usual count is taken from the hourly history.",
        default="same_hour",
    ),
    Key(
        "alerts.rules[].error_rate.days",
        integer(1, 90),
        "The days of history the baseline is taken from.",
        default=7,
    ),
    Key("alerts.rules[].error_rate.group", _GROUP, "Only this error group.", default_text="every group"),
    Key(
        "alerts.rules[].restart_rate",
        MAPPING,
        "A service's restarts in a window above above and/or factor x their baseline.",
        example={"factor": 3},
    ),
    Key("alerts.rules[].restart_rate.window_sec", DURATION, "The counting window.", default="1h"),
    Key(
        "alerts.rules[].restart_rate.above",
        _POSITIVE,
        "Fire when the count in the window is above this.",
        default_text="none",
    ),
    Key(
        "alerts.rules[].restart_rate.factor",
        _POSITIVE,
        "Fire when the count is above this times the baseline.",
        default_text="none",
    ),
    Key(
        "alerts.rules[].restart_rate.baseline",
        enum(Baseline),
        "How the usual count is taken from the hourly history.",
        default="same_hour",
    ),
    Key(
        "alerts.rules[].restart_rate.days",
        integer(1, 90),
        "The days of history the baseline is taken from.",
        default=7,
    ),
    Key(
        "alerts.rules[].quiet",
        MAPPING,
        "A dead-man's switch: no output, no READY=/STATUS= and no successful run for after_sec.",
        example={"after_sec": "30m"},
    ),
    Key("alerts.rules[].quiet.after_sec", DURATION, "How long a service may stay quiet.", required=True),
    Key(
        "web",
        MAPPING,
        "The read-only dashboard; absent: none is served.",
        example={"listen": "127.0.0.1:9465"},
    ),
    Key(
        "web.listen",
        LISTEN,
        "The address to serve on; beyond loopback it needs tls and token_file (or password_file).",
        required=True,
    ),
    Key(
        "web.tls",
        MAPPING,
        "Serve HTTPS.",
        example={"cert_file": "/etc/hasupd/web.pem", "key_file": "/etc/hasupd/web.key"},
    ),
    Key("web.tls.cert_file", PATH, "The PEM certificate (chain).", required=True),
    Key("web.tls.key_file", PATH, "Its PEM private key.", required=True),
    Key(
        "web.token_file",
        PATH,
        "The secret: a bearer token, or the password of HTTP Basic auth.",
        default_text="none (loopback only)",
    ),
    Key(
        "web.password_file",
        PATH,
        "The same as token_file, under the name people look for.",
        default_text="none",
    ),
    Key("backups", MAPPING, "Backup settings shared by the jobs of backups.d.", example={}),
    Key(
        "backups.repositories",
        named_mappings("mapping of repository names to repositories"),
        "restic repositories, by name; jobs name them in repository: and long_term.repository:.",
        example={"url": "/var/backups/restic", "password_file": "/etc/hasupd/restic.pass"},
    ),
    Key(
        "backups.repositories.NAME.url",
        TEXT,
        "The repository as restic's -r takes it: a folder, sftp:, rest:, s3: ...",
        required=True,
    ),
    Key(
        "backups.repositories.NAME.password_file",
        PATH,
        "The file holding the repository password.",
        required=True,
    ),
    Key(
        "backups.repositories.NAME.environment_file",
        PATH,
        "KEY=value lines put in restic's environment (cloud credentials such as AWS_ACCESS_KEY_ID).",
    ),
    Key(
        "fleet",
        MAPPING,
        "Run services across hosts that share an etcd cluster. Absent: every service is local.",
        example={"etcd": {"endpoints": ["http://127.0.0.1:2379"]}, "cluster": "prod"},
    ),
    Key(
        "fleet.etcd",
        MAPPING,
        "The etcd cluster.",
        required=True,
        example={"endpoints": ["http://127.0.0.1:2379"]},
    ),
    Key(
        "fleet.etcd.endpoints",
        list_of(URL, "list of etcd client URLs http(s)://HOST:PORT", nonempty=True),
        "etcd's client URLs; all http:// or all https://.",
        required=True,
    ),
    Key("fleet.etcd.ca_file", PATH, "Trust this CA for https:// endpoints."),
    Key("fleet.etcd.cert_file", PATH, "Client certificate; needs key_file."),
    Key("fleet.etcd.key_file", PATH, "Client key; needs cert_file."),
    Key("fleet.etcd.username", TEXT, "etcd user; needs password_file."),
    Key("fleet.etcd.password_file", PATH, "The file holding the etcd password; needs username."),
    Key(
        "fleet.etcd.election_timeout_sec",
        DURATION,
        "etcd's --election-timeout; check-config then checks that a handover fits in the fencing margin.",
        default_text="not checked",
    ),
    Key("fleet.cluster", NAME, "The cluster's name: hosts with the same name share services.", required=True),
    Key("fleet.host", NAME, "This host's name in the fleet.", default_text="the host name"),
    Key(
        "fleet.lease_ttl_sec",
        DURATION,
        "How long a host's lease lives without a keep-alive; whole "
        "seconds, at least 2s. A host that cannot renew stops its placed services within half of it.",
        default="10s",
    ),
)

SERVICE_KEYS = (
    Key("description", STRING, "A line for people, shown by hasupctl status.", default=""),
    Key(
        "command",
        ARGV,
        "The program and its arguments. {instance} is replaced by the instance "
        "number. A bare program name is looked up on the PATH. Either command or container is required.",
    ),
    Key(
        "type",
        enum(ServiceType),
        "simple: running once started; notify: running when it sends "
        "READY=1 on $NOTIFY_SOCKET; oneshot: runs to completion.",
        default="simple",
    ),
    Key("user", TEXT, "Run as this user (name or uid).", default_text="the user hasupd runs as"),
    Key("group", TEXT, "Run with this group (name or gid).", default_text="the user's group"),
    Key("working_directory", PATH, "Start in this folder.", default_text="/"),
    Key("environment", ENVIRONMENT, "Variables set for the service, after environment_files."),
    Key(
        "environment_files",
        list_of(
            Type("absolute path, optionally after -", {"type": "string"}),
            "list of absolute paths (a leading - makes one optional)",
        ),
        "Files of KEY=value lines put in the environment, as systemd's EnvironmentFile=.",
    ),
    Key("after", _NAMES, "Start after these services are ready; stop before them.", default=[]),
    Key("instances", integer(1, 1000), "Run this many copies, NAME@0 to NAME@N-1.", default=1),
    Key(
        "sockets",
        list_of_mappings("list of sockets"),
        "Listening sockets held by hasupd and passed "
        "with the LISTEN_FDS protocol, so a crashed instance refuses no connection while it is replaced.",
        example={"listen": "127.0.0.1:18080"},
    ),
    Key("sockets[].listen", LISTEN_OR_UNIX, "The address to listen on.", required=True),
    Key(
        "sockets[].name",
        Type("1 to 255 printable ASCII characters, no ':'", {"type": "string"}),
        "Its LISTEN_FDNAMES entry.",
        default_text="the service name",
    ),
    Key(
        "restart",
        enum(RestartMode),
        "When to restart after the service stops, as systemd's Restart=.",
        default="on-failure",
    ),
    Key(
        "restart_sec",
        DURATION,
        "The first delay before a restart; it doubles up to restart_max_delay_sec, with jitter.",
        default="100ms",
    ),
    Key("restart_max_delay_sec", DURATION, "The longest delay before a restart.", default="30s"),
    Key(
        "start_limit",
        MAPPING,
        "More starts than burst within interval_sec: the service fails, is not "
        "restarted, and on_failure runs.",
        example={},
    ),
    Key("start_limit.burst", integer(1, 1_000_000), "Starts allowed in the window.", default=5),
    Key("start_limit.interval_sec", DURATION, "The window.", default="60s"),
    Key(
        "timeout_start_sec",
        DURATION,
        "A start (or READY=1 of a notify service) that takes longer fails with result timeout.",
        default="90s",
    ),
    Key(
        "timeout_stop_sec",
        DURATION,
        "After the stop signal, wait this long, then SIGKILL the whole tree.",
        default="10s",
    ),
    Key("kill_signal", SIGNAL, "The signal that asks the service to stop.", default="SIGTERM"),
    Key(
        "watchdog_sec",
        DURATION,
        "A notify service must send WATCHDOG=1 at least this often, or it is "
        "restarted with result watchdog. Absent: no watchdog.",
        default_text="off",
    ),
    Key(
        "heartbeat_file",
        MAPPING,
        "The service touches this file; a file older than max_age_sec counts as a freeze.",
        example={"path": "/run/app/alive"},
    ),
    Key("heartbeat_file.path", PATH, "The file.", required=True),
    Key("heartbeat_file.max_age_sec", DURATION, "The oldest it may get.", default="30s"),
    Key(
        "health",
        list_of_mappings("list of probes"),
        "Health probes, each with exactly one of http, "
        "tcp and exec; failures in a row make the service unhealthy and restart it.",
        example={"tcp": "127.0.0.1:5432"},
    ),
    Key("health[].http", URL, "GET this URL; a 2xx or 3xx answer is healthy."),
    Key("health[].tcp", LISTEN, "Connect to this address."),
    Key("health[].exec", ARGV, "Run this command; exit 0 is healthy."),
    Key("health[].interval_sec", DURATION, "Time between probes.", default="5s"),
    Key("health[].timeout_sec", DURATION, "A probe that takes longer fails.", default="2s"),
    Key(
        "health[].failures", integer(1, 1000), "Failures in a row that make the service unhealthy.", default=3
    ),
    Key(
        "health[].start_period_sec",
        DURATION,
        "Failures in this time after a start do not count.",
        default="0s",
    ),
    Key("limits", MAPPING, "Resource limits, sampled on the whole process tree.", example={}),
    Key(
        "limits.memory",
        SIZE,
        "Restart with result resources when the tree's RSS exceeds this.",
        default_text="none",
    ),
    Key(
        "limits.cpu_percent",
        number(100_000),
        "Restart when the tree's CPU use over cpu_window_sec exceeds this (100 is one core).",
        default_text="none",
    ),
    Key("limits.cpu_window_sec", DURATION, "The window of cpu_percent.", default="60s"),
    Key(
        "limits.nofile",
        _RLIMIT,
        "RLIMIT_NOFILE of the child, as systemd's LimitNOFILE=: N sets soft and hard, SOFT:HARD each.",
        default_text="hasupd's",
    ),
    Key("limits.nproc", _RLIMIT, "RLIMIT_NPROC of the child, as LimitNPROC=.", default_text="hasupd's"),
    Key(
        "limits.core",
        Type("limit such as 0, 1G, infinity or SOFT:HARD", {"type": ["string", "integer"]}),
        "RLIMIT_CORE of the child (a size), as LimitCORE=.",
        default_text="hasupd's",
    ),
    Key("nice", integer(-20, 19), "The child's nice value.", default_text="hasupd's"),
    Key(
        "ionice",
        MAPPING,
        "The child's I/O scheduling class and level, as IOSchedulingClass=/IOSchedulingPriority=.",
        example={"class": "idle"},
    ),
    Key(
        "ionice.class",
        Type("one of realtime, best-effort, idle", {"enum": ["realtime", "best-effort", "idle"]}),
        "The I/O scheduling class.",
        required=True,
    ),
    Key("ionice.level", integer(0, 7), "The level within the class (unused for idle).", default=4),
    Key(
        "umask",
        Type('octal umask such as "0027"', {"type": ["string", "integer"]}),
        "The child's umask (octal digits, quoted or not).",
        default_text="hasupd's",
    ),
    Key(
        "oom_score_adjust",
        integer(-1000, 1000),
        "The child's oom_score_adj; lowering it needs CAP_SYS_RESOURCE.",
        default_text="hasupd's",
    ),
    Key(
        "supplementary_groups",
        list_of(TEXT, "list of group names or ids"),
        "Groups added to the user's own; needs hasupd to run as root.",
        default=[],
    ),
    Key(
        "no_new_privileges",
        BOOL,
        "PR_SET_NO_NEW_PRIVS before exec: setuid binaries and file capabilities gain nothing.",
        default=False,
    ),
    Key(
        "reload_signal",
        SIGNAL,
        "hasupctl reload NAME sends this signal to the main process.",
        default_text="none (exclusive with reload_command)",
    ),
    Key(
        "reload_command",
        ARGV,
        "hasupctl reload NAME runs this command (as the service's user, MAINPID set).",
        default_text="none (exclusive with reload_signal)",
    ),
    Key(
        "schedule",
        SCHEDULE,
        "type: oneshot only: a timer that starts the service at each slot (not at boot).",
        default_text="none",
    ),
    Key(
        "persistent",
        BOOL,
        "With schedule: a slot missed while hasupd was down runs once at start.",
        default_text="false",
    ),
    Key(
        "randomized_delay_sec",
        DURATION,
        "With schedule: delay each run by a random time up to this.",
        default_text="0s",
    ),
    Key(
        "errors",
        MAPPING,
        "What counts as an error in the service's output (besides tracebacks and error priorities).",
        example={"match": ["^ERROR "]},
    ),
    Key(
        "errors.match",
        list_of(TEXT, "list of Python regular expressions"),
        "A line matching any of these is an error.",
        default=[],
    ),
    Key(
        "output",
        enum(OutputMode),
        "Where the service's stdout and stderr go.",
        default_text="journal when journald is there, else file",
    ),
    Key("container", MAPPING, "Run a container instead of a command.", example={"image": "localhost/app:1"}),
    Key("container.engine", enum(ContainerEngine), "The engine.", default="podman"),
    Key("container.image", TEXT, "The image.", required=True),
    Key("container.args", list_of(STRING, "list of strings"), "Arguments after the image.", default=[]),
    Key(
        "container.options",
        list_of(STRING, "list of strings"),
        "Options for `ENGINE run`, before the image.",
        default=[],
    ),
    Key(
        "on_failure",
        list_of_mappings(
            "list of recovery actions: rollback_config, {exec: argv} or {restore: JOB}",
            {"const": "rollback_config"},
        ),
        "After a crash loop (start limit hit), in order: "
        "rollback_config returns to the last configuration under which the service ran healthy.",
        example={"exec": ["/bin/true"]},
    ),
    Key("on_failure[].exec", ARGV, "Run this command."),
    Key("on_failure[].restore", NAME, "Restore the data of this backup job, then start again."),
    Key("alerts", _NAMES, "Alert channels for this service.", default_text="every channel"),
    Key(
        "placement",
        MAPPING,
        "Where the service runs in the fleet (needs fleet: in hasupd.yaml); "
        "exactly one of singleton and replicas. The service gets HASUPD_FLEET_HOST and "
        "HASUPD_FLEET_TOKEN.",
        example={"replicas": 2},
    ),
    Key(
        "placement.singleton",
        BOOL,
        "true: run on exactly one host of the fleet.",
        default_text="one of singleton and replicas is required",
    ),
    Key(
        "placement.replicas",
        integer(1, 1000),
        "Run on this many hosts.",
        default_text="one of singleton and replicas is required",
    ),
    Key("placement.prefer", _NAMES, "Hosts to prefer, in order.", default=[]),
    Key("placement.avoid", _NAMES, "Hosts to avoid.", default=[]),
)

_KEEP_TEXT = "Keep the newest snapshot of each of the last N {}."
_KEEP_UNITS = {
    "last": "snapshots",
    "hourly": "hours",
    "daily": "days",
    "weekly": "weeks",
    "monthly": "months",
    "yearly": "years",
}
_WITHIN = Type("restic duration such as 7d or 2y5m7d3h", {"type": "string", "pattern": "^([0-9]+[ymdh])+$"})


def _keep(prefix: str) -> tuple[Key, ...]:
    counts = tuple(
        Key(f"{prefix}.{unit}", integer(1, 1_000_000), _KEEP_TEXT.format(what))
        for unit, what in _KEEP_UNITS.items()
    )
    return (*counts, Key(f"{prefix}.within", _WITHIN, "Keep every snapshot younger than this."))


BACKUP_KEYS = (
    Key(
        "repository",
        NAME,
        "The repository (from hasupd.yaml backups.repositories) of the short-term snapshots.",
        required=True,
    ),
    Key("paths", _PATHS, "What to back up (paths, databases or both).", default_text="none"),
    Key("exclude", list_of(TEXT, "list of patterns"), "restic --exclude patterns.", default=[]),
    Key(
        "schedule",
        SCHEDULE,
        "When to back up; a run missed while hasupd was down runs after start.",
        default="@daily",
    ),
    Key("randomized_delay_sec", DURATION, "Delay each run by a random time up to this.", default="0s"),
    Key(
        "databases",
        list_of_mappings("list of databases"),
        "Databases dumped while they serve, each a snapshot of its own tagged db:NAME; each entry has "
        "exactly one of postgresql, mysql and sqlite.",
        example={"postgresql": "app"},
    ),
    Key("databases[].postgresql", TEXT, "A PostgreSQL database to dump with pg_dump --format=custom."),
    Key("databases[].mysql", TEXT, "A MariaDB/MySQL database to dump with mysqldump --single-transaction."),
    Key("databases[].sqlite", PATH, "An SQLite file, copied with the online backup API."),
    Key(
        "databases[].name",
        NAME,
        "The dump's name (snapshot file and db:NAME tag).",
        default_text="postgresql-DB, mysql-DB or sqlite-FILESTEM",
    ),
    Key("databases[].user", TEXT, "The user to connect as.", default_text="the client's default"),
    Key(
        "databases[].host",
        TEXT,
        "Host name, or socket directory (PostgreSQL) / socket file (MariaDB).",
        default_text="the client's default",
    ),
    Key("databases[].port", integer(1, 65535), "TCP port.", default_text="the client's default"),
    Key(
        "databases[].password_file",
        PATH,
        "File holding the password (reaches the client as PGPASSWORD / MYSQL_PWD).",
        default_text="none",
    ),
    Key("databases[].bin_dir", PATH, "Where the client programs are.", default_text="PATH"),
    Key(
        "databases[].globals", BOOL, "PostgreSQL: also dump roles (pg_dumpall --globals-only).", default=False
    ),
    Key(
        "databases[].check_query",
        TEXT,
        "Run on a drill or restored copy; its first value must be neither empty, 0 nor false.",
        default_text="none",
    ),
    Key(
        "keep",
        MAPPING,
        "Short-term retention in the repository (restic forget --keep-*). Absent: nothing is forgotten.",
        example={},
    ),
    *_keep("keep"),
    Key(
        "before",
        list_of(ARGV, "list of commands"),
        "Commands run before the snapshot, in order; a failure aborts the job and alerts.",
        default=[],
    ),
    Key("quiesce", _NAMES, "Services stopped during the snapshot, always started again.", default=[]),
    Key(
        "long_term",
        MAPPING,
        "Copies to a second, cheaper repository with their own retention.",
        example={"repository": "cold"},
    ),
    Key(
        "long_term.repository", NAME, "The repository of the copies; not the job's repository.", required=True
    ),
    Key("long_term.schedule", SCHEDULE, "When to copy.", default="@weekly"),
    Key("long_term.keep", MAPPING, "Retention of the copies.", example={}),
    *_keep("long_term.keep"),
    Key("check", MAPPING, "Integrity checks of the repository (restic check).", example={}),
    Key("check.schedule", SCHEDULE, "When to check.", default="@weekly"),
    Key(
        "check.read_data_subset",
        Type("K/N such as 1/12", {"type": "string", "pattern": "^[0-9]+/[0-9]+$"}),
        "Also read a rotating subset of the data: every pack is read once per N checks.",
        default_text="no data read",
    ),
    Key(
        "drill",
        MAPPING,
        "Restore drills: restore the newest snapshot into scratch space and verify it.",
        example={},
    ),
    Key("drill.schedule", SCHEDULE, "When to drill.", default="@monthly"),
    Key(
        "drill.boot",
        BOOL,
        "Boot drill: also start the job's services on the restored data and wait until they are healthy.",
        default=False,
    ),
    Key(
        "max_age",
        DURATION,
        "Alert when the newest good snapshot is older than this.",
        default_text="no alert",
    ),
    Key("prune_schedule", SCHEDULE, "When to prune the repository after forget.", default="@weekly"),
)

FILES = (
    ConfigFile(
        kind="daemon",
        page="hasupd.yaml",
        files="/etc/hasupd/hasupd.yaml",
        summary="hasupd daemon settings, alert channels, backup repositories and access roles",
        description="hasupd.yaml holds the settings of the daemon itself. Every key is optional; a "
        "missing file means all defaults. Services and backup jobs have one file each, see "
        "hasupd.service(5) and hasupd.backup(5).",
        keys=DAEMON_KEYS,
    ),
    ConfigFile(
        kind="service",
        page="hasupd.service",
        files="/etc/hasupd/services.d/NAME.yaml",
        summary="a service supervised by hasupd",
        description="Each file under services.d defines one supervised service; the file name without "
        ".yaml is the service name. Keys mirror systemd's, in snake_case.",
        keys=SERVICE_KEYS,
    ),
    ConfigFile(
        kind="backup",
        page="hasupd.backup",
        files="/etc/hasupd/backups.d/NAME.yaml",
        summary="a restic backup job run by hasupd",
        description="Each file under backups.d defines one backup job; the file name without .yaml is "
        "the job name. repository and paths are required.",
        keys=BACKUP_KEYS,
    ),
)
