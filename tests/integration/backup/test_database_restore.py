"""Database restores run by the real daemon (must-show 3): a damaged live PostgreSQL database restored in
place with the service stopped only for the swap; a restore whose check query fails leaves the live
database as it was; --target-db and --dry-run touch nothing live."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.backup.dbsupport import cluster
from tests.integration.backup.jobsupport import QUIET, Setup
from tests.support.harness import Hasupd, record_time
from tests.support.postgres import BIN, Cluster

__all__ = ["cluster"]


def _config(setup: Setup, cluster: Cluster) -> Path:
    probe = [str(BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", *cluster.conn(), "-d", "shop"]
    app = {
        "command": ["/bin/sleep", "3600"],
        # The application's own probe: it needs its customers table.
        "health": [{"exec": [*probe, "-c", "SELECT count(*) FROM customers"], "interval_sec": "500ms"}],
    }
    etc = setup.config({}, services={"shop-app": app})
    databases: list[dict[str, Any]] = [
        {**cluster.spec("shop"), "check_query": "SELECT count(*) FROM orders"},
        # The same database, with a check that no restored copy passes.
        {
            **cluster.spec("shop"),
            "name": "shop-strict",
            "check_query": "SELECT count(*) FROM orders WHERE id < 0",
        },
    ]
    job = {
        "repository": "hot",
        **QUIET,
        "quiesce": ["shop-app"],
        "databases": databases,
        "drill": {"schedule": "@monthly", "boot": True},
    }
    (etc / "backups.d" / "app-data.yaml").write_text(json.dumps(job))
    return etc


def _steps(d: Hasupd, since: int) -> list[dict[str, Any]]:
    return d.find("restore.step")[since:]


def test_damaged_database_is_restored_in_place_and_a_failing_check_leaves_it_alone(
    setup: Setup, cluster: Cluster, hasupd: Callable[..., Hasupd]
) -> None:
    cluster.psql("CREATE DATABASE shop")
    cluster.psql(
        "CREATE TABLE customers AS SELECT g AS id, 'c' || g AS name FROM generate_series(1, 50) g;"
        "CREATE TABLE orders AS SELECT g AS id, g % 50 + 1 AS customer FROM generate_series(1, 1000) g;",
        "shop",
    )
    d = hasupd(_config(setup, cluster))
    d.wait_for("health.ok", service="shop-app", timeout=30)
    backup = d.ctl("backup", "run", "app-data", timeout=300)
    assert backup.returncode == 0, backup.stderr
    assert not d.find("service.stopping", service="shop-app")  # the dumps ran beside the service
    listed = d.ctl("backup", "list", "app-data").stdout
    assert "database postgresql-shop" in listed and "database shop-strict" in listed, listed

    # The damage: a table dropped in the live database.
    cluster.psql("DROP TABLE orders", "shop")
    before = cluster.databases()

    dry = d.ctl("restore", "app-data", "--database", "postgresql-shop", "--in-place", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "(dry run: nothing was done)" in dry.stdout and "shop-app" in dry.stdout
    assert cluster.databases() == before

    # A restore whose check query fails: nothing live changes, the service never stops.
    seen = len(d.find("restore.step"))
    strict = d.ctl("restore", "app-data", "--database", "shop-strict", "--in-place", timeout=300)
    assert strict.returncode == 1, strict.stdout
    assert "check query" in strict.stderr and "nothing live was touched" in strict.stderr, strict.stderr
    assert cluster.databases() == before  # the staging copy is dropped, the live one kept its name
    assert cluster.psql("SELECT to_regclass('orders') IS NULL", "shop") == "t"  # as it was
    assert not d.find("service.stopping", service="shop-app")
    assert [s["step"] for s in _steps(d, seen)] == ["load", "verify"]

    # The real restore, in place.
    seen = len(d.find("restore.step"))
    done = d.ctl("restore", "app-data", "--database", "postgresql-shop", "--in-place", timeout=300)
    assert done.returncode == 0, done.stderr
    kept = done.stdout.split("kept as ")[1].split()[0]
    assert cluster.psql("SELECT count(*) FROM orders", "shop") == "1000"
    assert kept in cluster.databases() and kept.startswith("shop_pre_")
    assert cluster.psql("SELECT to_regclass('orders') IS NULL", kept) == "t"  # the damaged one, kept
    steps = _steps(d, seen)
    assert [s["step"] for s in steps] == ["load", "verify", "stop", "swap", "healthy"]
    assert all(s["user"] == "root" for s in steps)
    by_step = {s["step"]: record_time(s) for s in steps}
    [stopping] = d.find("service.stopping", service="shop-app")
    started = [
        r for r in d.find("service.started", service="shop-app") if record_time(r) >= by_step["verify"]
    ]
    # Stopped only for the swap: after the copy was loaded and checked, started before "healthy".
    assert by_step["verify"] <= record_time(stopping) <= by_step["swap"]
    assert started and record_time(started[0]) <= by_step["healthy"]
    d.wait_for("health.ok", service="shop-app", where=lambda r: record_time(r) >= by_step["swap"])
    status = d.ctl("status", "shop-app")
    assert "running" in status.stdout, status.stdout

    # --target-db: a new database, nothing live touched.
    copy = d.ctl(
        "restore", "app-data", "--database", "postgresql-shop", "--target-db", "shop_copy", timeout=300
    )
    assert copy.returncode == 0, copy.stderr
    assert cluster.psql("SELECT count(*) FROM orders", "shop_copy") == "1000"
    again = d.ctl("restore", "app-data", "--database", "postgresql-shop", "--target-db", "shop_copy")
    assert again.returncode == 2 and "already exists" in again.stderr

    # A boot drill on the PostgreSQL dumps: the shadow's probe is pointed at the drill copy (-d shop ->
    # shop_drill_...), which is dropped afterwards.
    drill = d.ctl("backup", "run", "app-data", "--kind", "drill", timeout=300)
    assert drill.returncode == 0, drill.stderr
    passed = d.wait_for("drill.finished", job="app-data")[0]
    assert "loaded as shop_drill_" in passed["detail"] and "probes passed: exec" in passed["detail"], passed
    assert not [n for n in cluster.databases() if "_drill_" in n]
