"""The password file of a database entry, read at each dump."""

from __future__ import annotations

from pathlib import Path

import pytest

from hasupd.backup.databases import DatabaseConfigError, mysql_connection, pg_connection
from hasupd.config.model import DatabaseKind, DatabaseSpec


@pytest.mark.parametrize("connect", [pg_connection, mysql_connection])
def test_a_password_file_that_is_not_utf8_is_a_job_error(tmp_path: Path, connect: object) -> None:
    """It escaped as UnicodeDecodeError (not the job's error type), out of the job's task."""
    secret = tmp_path / "db.pass"
    secret.write_bytes(b"caf\xe9\n")  # latin-1
    spec = DatabaseSpec(DatabaseKind.POSTGRESQL, "app", "postgresql-app", password_file=str(secret))
    with pytest.raises(DatabaseConfigError, match="not UTF-8"):
        connect(spec)  # type: ignore[operator]
