"""``databases:`` of a backup job: values, defaults and located errors."""

from __future__ import annotations

from pathlib import Path

from hasupd.config.load import load_config
from hasupd.config.model import DatabaseKind, DatabaseSpec
from tests.unit.config.test_load import issues, write

HASUPD = "backups: {repositories: {hot: {url: /r, password_file: /p}}}\n"


def test_databases_make_paths_optional_and_get_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": HASUPD,
            "backups.d/db.yaml": """
                repository: hot
                databases:
                  - {postgresql: App_1, user: postgres, host: /run/postgresql, port: 5433, globals: true}
                  - {mysql: shop, user: backup, password_file: /etc/hasupd/shop.pass, name: shop}
                  - {sqlite: /srv/app/app.db, check_query: "SELECT count(*) FROM items"}
            """,
        },
    )
    [job] = load_config(tmp_path).backups
    assert job.paths == ()
    assert job.databases == (
        DatabaseSpec(
            DatabaseKind.POSTGRESQL,
            "App_1",
            "postgresql-app_1",
            user="postgres",
            host="/run/postgresql",
            port=5433,
            globals=True,
        ),
        DatabaseSpec(
            DatabaseKind.MYSQL, "shop", "shop", user="backup", password_file="/etc/hasupd/shop.pass"
        ),
        DatabaseSpec(
            DatabaseKind.SQLITE, "/srv/app/app.db", "sqlite-app", check_query="SELECT count(*) FROM items"
        ),
    )


def test_database_errors_are_located(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": HASUPD,
            "backups.d/db.yaml": """
                repository: hot
                databases:
                  - {postgresql: app, mysql: app}
                  - {sqlite: relative.db}
                  - {mysql: "a;drop", globals: true}
                  - {postgresql: app, port: 0}
                  - {postgresql: app}
                  - {postgresql: other, name: postgresql-app}
            """,
            "backups.d/none.yaml": "repository: hot\n",
        },
    )
    assert issues(tmp_path) == [
        "backups.d/db.yaml:3:5: databases.0: give exactly one of postgresql, mysql, sqlite",
        "backups.d/db.yaml:4:14: databases.1.sqlite: expected an absolute path, got 'relative.db'",
        "backups.d/db.yaml:5:13: databases.2.mysql: invalid database name 'a;drop': "
        "letters, digits, _ $ - (at most 63)",
        "backups.d/db.yaml:5:32: databases.2.globals: not an option of a mysql database",
        "backups.d/db.yaml:6:29: databases.3.port: expected an integer from 1 to 65535, got 0",
        "backups.d/db.yaml:8:5: databases.5.name: another database of this job is named 'postgresql-app'",
        "backups.d/none.yaml:1:1: paths: required key is missing (give paths, databases or both)",
    ]
