"""A connection limit that leaves room for one connection (SPEC §10.3): the runner goes on
with the lock and the migrations on one session, as sqlx does, and every other promise
holds: the fence, the session reset, no-transaction files, rollbacks, the lock released."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Db, Runner, login_role, run

Files = Callable[[dict[str, str | bytes]], Path]
FILES: dict[str, str | bytes] = {
    "001_study.sql": "CREATE TABLE study (id int);",
    "001_study_rollback.sql": "DROP TABLE study;",
    # A file that takes advisory locks of its own: the reset's pg_advisory_unlock_all()
    # drops them, and must not leave the runner without its own.
    "002_locks.sql": "SELECT pg_advisory_lock(42);\nINSERT INTO study VALUES (2);",
    "002_locks_rollback.sql": "DELETE FROM study WHERE id = 2;",
    "003_index.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY study_id ON study (id);",
    "003_index_rollback.sql": "-- migrate:no-transaction\nDROP INDEX CONCURRENTLY study_id;",
    "004_more.sql": "INSERT INTO study VALUES (4);",
    "004_more_rollback.sql": "DELETE FROM study WHERE id = 4;",
}


def limited(db: Db, where: str) -> str:
    """The URL of a login role owning `db`, with CONNECTION LIMIT 1 on the role or on the
    database (superusers ignore both)."""
    if where == "role":
        return login_role(db, connection_limit=1)
    db.execute(f'ALTER DATABASE "{db.name}" CONNECTION LIMIT 1')
    return login_role(db)


def no_advisory_locks(db: Db) -> bool:
    return db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                     "database = (SELECT oid FROM pg_database WHERE datname = %s)",
                     (db.name,)) == 0


@pytest.mark.parametrize("where", ["role", "database"])
def test_connection_limit_one_runs_on_one_connection(
        db: Db, migrations: Files, where: str) -> None:
    """The issue's case. Before: the lock connection took the slot, the work connection
    was retried for the whole wait timeout, exit 3 "not reachable"."""
    url = limited(db, where)
    folder = migrations(FILES)
    result = run(url, folder, MIGRATE_WAIT_TIMEOUT="30s")
    assert result.code == 0, result.stderr
    assert result.names().count("single_connection") == 1
    assert result.event("single_connection")["level"] == "warning"
    assert "db_wait_retry" not in result.names()
    assert db.query("SELECT id FROM study ORDER BY 1") == [(2,), (4,)]
    assert db.query("SELECT version, status FROM migration_history ORDER BY 1") == [
        (1, "applied"), (2, "applied"), (3, "applied"), (4, "applied")]
    assert no_advisory_locks(db)
    again = run(url, folder)
    assert again.code == 0 and again.event("migrations_complete")["applied"] == 0


def test_rollback_on_one_connection(db: Db, migrations: Files) -> None:
    url = limited(db, "role")
    folder = migrations(FILES)
    assert run(url, folder).code == 0
    result = run(url, folder, "rollback", "--to", "1", MIGRATE_WAIT_TIMEOUT="30s")
    assert result.code == 0, result.stderr
    assert "single_connection" in result.names()
    assert db.query("SELECT version FROM migration_history") == [(1,)]
    assert no_advisory_locks(db)


def test_a_second_runner_waits_for_the_single_connection_runner(
        db: Db, migrations: Files) -> None:
    """Two runners and room for two connections: however they split the slots (the
    second's lock connection may take the first's work slot), each file runs once."""
    url = limited(db, "role")
    db.execute(f"ALTER ROLE \"{url.split('://')[1].split('@')[0]}\" CONNECTION LIMIT 2")
    files = dict(FILES)
    files["005_slow.sql"] = "SELECT pg_sleep(2);\nINSERT INTO study VALUES (5);"
    folder = migrations(files)
    first = Runner(url, folder, MIGRATE_WAIT_TIMEOUT="30s")
    first.wait_for_event("lock_acquired")
    second = run(url, folder, MIGRATE_WAIT_TIMEOUT="30s", MIGRATE_LOCK_TIMEOUT="60s")
    done = first.finish()
    assert (done.code, second.code) == (0, 0), done.stderr + second.stderr
    assert db.query("SELECT id FROM study ORDER BY 1") == [(2,), (4,), (5,)]
