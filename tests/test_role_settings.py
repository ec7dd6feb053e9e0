"""What the role, the database and the server bring (SPEC §10.3): the runner's own session
settings win over a role's or database's, `session_settings` names the ones it overrode,
and the client encoding is UTF-8 whatever the database's encoding."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Db, login_role, run
from tests.pg import Cluster

Files = Callable[[dict[str, str | bytes]], Path]
_names = itertools.count()


def overridden(result: object) -> dict[str, dict[str, str]]:
    event = result.event("session_settings")  # type: ignore[attr-defined]
    return {s["name"]: s for s in event["settings"]}


def test_statement_timeout_zero_overrides_the_roles(db: Db, migrations: Files) -> None:
    """The issue's case: role statement_timeout = 1s, MIGRATE_STATEMENT_TIMEOUT=0, a 3 s
    statement. Before: 57014."""
    url = login_role(db, statement_timeout="1s")
    folder = migrations({"001_slow.sql": "SELECT pg_sleep(3);\nCREATE TABLE done (id int);"})
    result = run(url, folder, MIGRATE_STATEMENT_TIMEOUT="0")
    assert result.code == 0, result.stderr
    assert db.table_exists("public.done")
    assert overridden(result)["statement_timeout"] == {
        "name": "statement_timeout", "inherited": "1s", "source": "role", "used": "0"}
    assert result.names().count("session_settings") == 1


def test_database_statement_timeout_does_not_end_a_no_transaction_file(
        db: Db, migrations: Files) -> None:
    db.execute(f"ALTER DATABASE \"{db.name}\" SET statement_timeout = '1s'")
    folder = migrations({
        "001_t.sql": "CREATE TABLE t (id int);",
        "002_slow.sql": "-- migrate:no-transaction\nSELECT pg_sleep(2.5);\n",
        "003_more.sql": "SELECT pg_sleep(1.5);\nCREATE TABLE more (id int);",
    })
    result = run(db.url, folder)
    assert result.code == 0, result.stderr
    assert db.table_exists("public.more")
    assert overridden(result)["statement_timeout"]["source"] == "database"


def test_a_set_timeout_still_applies_and_is_named(db: Db, migrations: Files) -> None:
    url = login_role(db, statement_timeout="1min", lock_timeout="1s")
    folder = migrations({"001_slow.sql": "SELECT pg_sleep(3);"})
    result = run(url, folder, MIGRATE_STATEMENT_TIMEOUT="500ms")
    assert result.code == 1
    assert result.event("migration_failed")["sqlstate"] == "57014"
    named = overridden(result)
    assert named["statement_timeout"]["used"] == "500ms"
    assert named["lock_timeout"] == {"name": "lock_timeout", "inherited": "1s",
                                     "source": "role", "used": "5000ms"}


def test_the_sessions_keep_their_own_settings_across_every_file(
        db: Db, migrations: Files) -> None:
    """The session reset (RESET ALL) between files returns to the runner's settings, not
    to the role's."""
    url = login_role(db, idle_session_timeout="2s", idle_in_transaction_session_timeout="1s",
                    statement_timeout="1s", client_encoding="LATIN1")
    look = ("INSERT INTO seen SELECT {v}, current_setting('idle_session_timeout'), "
            "current_setting('idle_in_transaction_session_timeout'), "
            "current_setting('statement_timeout'), current_setting('client_encoding');")
    folder = migrations({
        "001_seen.sql": "CREATE TABLE seen (v int, idle text, idle_tx text, st text, enc text);\n"
                        + look.format(v=1) + "\nSET statement_timeout = '7s';",
        "002_again.sql": look.format(v=2),
        "003_no_tx.sql": "-- migrate:no-transaction\n" + look.format(v=3),
    })
    result = run(url, folder)
    assert result.code == 0, result.stderr
    assert db.query("SELECT * FROM seen ORDER BY v") == [
        (v, "0", "0", "0", "UTF8") for v in (1, 2, 3)]
    assert set(overridden(result)) == {"idle_session_timeout", "client_encoding",
                                       "idle_in_transaction_session_timeout",
                                       "statement_timeout"}


def test_no_session_settings_event_when_nothing_differs(db: Db, migrations: Files) -> None:
    result = run(db.url, migrations({"001_t.sql": "CREATE TABLE t (id int);"}))
    assert result.code == 0, result.stderr
    assert "session_settings" not in result.names()


@pytest.fixture
def encoded_db(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Db]:
    name = f"enc{os.getpid()}_{next(_names)}"
    with cluster.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}" ENCODING \'{request.param}\' '
                     "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    yield Db(cluster, name)


@pytest.mark.parametrize("encoded_db", ["LATIN1"], indirect=True)
def test_latin1_database_takes_what_it_can_hold(encoded_db: Db, migrations: Files) -> None:
    """The issue's case: a LATIN1 database and a file with é. Before: UnicodeEncodeError,
    a traceback, no file or line."""
    folder = migrations({"001_note.sql": "CREATE TABLE note (t text);\n"
                                         "INSERT INTO note VALUES ('Fundus, rétine');\n"})
    result = run(encoded_db.url, folder)
    assert result.code == 0, result.stderr
    assert encoded_db.scalar("SELECT t = U&'Fundus, r\\00E9tine' FROM note") is True
    assert overridden(result)["client_encoding"] == {
        "name": "client_encoding", "inherited": "LATIN1",
        "source": "the database's encoding", "used": "UTF8"}


@pytest.mark.parametrize("encoded_db", ["LATIN1", "WIN1252"], indirect=True)
def test_a_character_the_database_cannot_hold_is_a_located_22p05(
        encoded_db: Db, migrations: Files) -> None:
    folder = migrations({
        "001_note.sql": "CREATE TABLE note (t text);",
        "002_more.sql": "INSERT INTO note VALUES ('ok');\n"
                        "INSERT INTO note VALUES ('Łódź ✓');\n",
    })
    result = run(encoded_db.url, folder)
    assert result.code == 1, result.stderr
    failed = result.event("migration_failed")
    assert (failed["sqlstate"], failed["file"], failed["line"]) == ("22P05", "002_more.sql", 2)
    assert "Traceback" not in result.stderr
    assert encoded_db.scalar("SELECT count(*) FROM note") == 0
    assert encoded_db.query("SELECT version, success FROM migration_audit ORDER BY id") == [
        (1, True), (2, False)]


@pytest.mark.parametrize("encoded_db", ["SQL_ASCII"], indirect=True)
def test_sql_ascii_database_takes_the_bytes_as_psql_does(
        encoded_db: Db, migrations: Files) -> None:
    folder = migrations({"001_note.sql": "CREATE TABLE note (t text);\n"
                                         "INSERT INTO note VALUES ('rétine ✓');\n"})
    result = run(encoded_db.url, folder)
    assert result.code == 0, result.stderr
    # The file's UTF-8 bytes, unconverted: é is 2 bytes, ✓ 3.
    assert encoded_db.scalar("SELECT octet_length(t) FROM note") == len("rétine ✓".encode())
    status = run(encoded_db.url, folder, "status")
    assert status.code == 0, status.stderr


@pytest.fixture
def session_pool(cluster: Cluster) -> Iterator[int]:
    from tests.test_pooler import pgbouncer

    yield from pgbouncer(cluster, "session")


def test_a_pool_that_refuses_startup_options_still_gets_the_runners_settings(
        db: Db, session_pool: int, migrations: Files) -> None:
    """PgBouncer refuses libpq's `options` startup parameter: the runner sets the same
    settings after connecting, and the session reset keeps them from file to file."""
    db.execute(f"ALTER DATABASE \"{db.name}\" SET statement_timeout = '1s'")
    look = ("INSERT INTO seen SELECT {v}, current_setting('statement_timeout'), "
            "current_setting('idle_session_timeout');")
    folder = migrations({
        "001_seen.sql": "CREATE TABLE seen (v int, st text, idle text);\nSELECT pg_sleep(1.5);\n"
                        + look.format(v=1) + "\nSET statement_timeout = '7s';",
        "002_again.sql": look.format(v=2),
    })
    result = run(f"postgresql://postgres@127.0.0.1:{session_pool}/{db.name}", folder)
    assert result.code == 0, result.stderr
    assert db.query("SELECT * FROM seen ORDER BY v") == [(1, "0", "0"), (2, "0", "0")]
