"""What a scrape of hasupd's /metrics must hold, read back with prometheus_client's own parsers
(shared by the unit and the integration tests)."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as text_families

# Every family hasupd serves, by the name the parsers give it (a counter's without "_total"), and its
# type. The README's "Metrics" table lists the same.
FAMILIES = {
    "hasupd_service_state": "gauge",
    "hasupd_service_up": "gauge",
    "hasupd_service_restarts": "counter",
    "hasupd_service_last_exit_code": "gauge",
    "hasupd_watchdog_timeouts": "counter",
    "hasupd_health_status": "gauge",
    "hasupd_event_loop_lag_seconds": "gauge",
    "hasupd_alert_spool_depth": "gauge",
    "hasupd_backup_last_success_timestamp_seconds": "gauge",
    "hasupd_backup_duration_seconds": "gauge",
    "hasupd_backup_bytes_added": "gauge",
    "hasupd_backup_failures": "counter",
    "hasupd_backup_age_seconds": "gauge",
    "hasupd_backup_max_age_seconds": "gauge",
    "hasupd_backup_drill_ok": "gauge",
    "hasupd_systemd_watchdog_late": "counter",
    "hasupd_backup_restorable_as_of_timestamp_seconds": "gauge",
    "hasupd_config_reloads": "counter",
}

# Served only when hasupd.yaml has fleet: (a config without it serves exactly FAMILIES).
FLEET_FAMILIES = {
    "hasupd_fleet_owner": "gauge",
    "hasupd_fleet_token": "gauge",
    "hasupd_fleet_elections": "counter",
    "hasupd_fleet_lease_age_seconds": "gauge",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def check_families(body: str, *, openmetrics: bool = False, fleet: bool = False) -> Samples:
    """Parse a scrape (text format 0.0.4, or OpenMetrics), assert that it holds exactly FAMILIES, each
    with its type and a help text, every sample under the family it belongs to; return the samples as
    {(sample name, sorted labels): value}."""
    parse = openmetrics_families if openmetrics else text_families
    families = list(parse(body))
    typed = {f.name: f.type for f in families}
    expected = {**FAMILIES, **FLEET_FAMILIES} if fleet else FAMILIES
    wrong = {
        name: typed.get(name)
        for name in typed.keys() | expected.keys()
        if typed.get(name) != expected.get(name)
    }
    assert not wrong, f"families with a wrong type (None: missing or extra): {wrong}"
    for family in families:
        assert family.documentation.strip(), f"{family.name} has no help text"
        allowed = {family.name + "_total"} if family.type == "counter" else {family.name}
        names = {s.name for s in family.samples}
        assert names <= allowed, f"{family.name} ({family.type}) holds samples {names - allowed}"
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value) for f in families for s in f.samples}
