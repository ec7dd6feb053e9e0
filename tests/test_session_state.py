"""Every file starts from the session state the first one started from, and the runner's
own rows never depend on what a file left in its session (issue 10 A)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Db, Runner, run

Files = Callable[[dict[str, str | bytes]], Path]

# Written fully qualified: the file before it may have emptied search_path.
PROBE = """
CREATE TABLE IF NOT EXISTS public.probe (n serial, state text);
INSERT INTO public.probe (state) SELECT pg_catalog.concat_ws(' | ',
  pg_catalog.current_setting('search_path'), current_user, session_user,
  pg_catalog.current_setting('session_replication_role'),
  pg_catalog.current_setting('statement_timeout'),
  pg_catalog.current_setting('synchronous_commit'),
  pg_catalog.current_setting('TimeZone'),
  pg_catalog.current_setting('tcp_keepalives_idle'),
  pg_catalog.current_setting('client_connection_check_interval'),
  pg_catalog.current_setting('application_name'),
  (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class
    WHERE relnamespace = pg_catalog.pg_my_temp_schema()),
  (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements),
  (SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels()),
  (SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors WHERE name <> ''),
  (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks
    WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()));
"""

LEFTOVERS = {
    "search_path": "SELECT pg_catalog.set_config('search_path', '', false);",
    "statement_timeout": "SET statement_timeout = '7s';",
    "session_replication_role": "SET session_replication_role = replica;",
    "synchronous_commit": "SET synchronous_commit = off;",
    "time_zone": "SET TIME ZONE 'Asia/Seoul';",
    "keepalive_undone": "SET tcp_keepalives_idle = 600;",
    "role": "SET ROLE app_owner;",
    "session_authorization": "SET SESSION AUTHORIZATION app_owner;",
    "temp_table": "CREATE TEMP TABLE scratch (id int);",
    "prepared_statement": "PREPARE q AS SELECT 1;",
    "listen": "LISTEN somewhere;",
    "cursor_with_hold": "DECLARE c CURSOR WITH HOLD FOR SELECT 1;",
    "advisory_lock": "SELECT pg_advisory_lock(4242);",
    "no_transaction_search_path": "-- migrate:no-transaction\nSET search_path = '';",
    "no_transaction_role": "-- migrate:no-transaction\nSET ROLE app_owner;",
}


def _app_owner(db: Db) -> None:
    """A role with no rights on the bookkeeping tables (a schema owner, say)."""
    db.execute("DO $$ BEGIN CREATE ROLE app_owner; "
               "EXCEPTION WHEN duplicate_object THEN NULL; END $$")


def test_pg_dump_style_empty_search_path_does_not_reach_the_next_file(
        db: Db, migrations: Files) -> None:
    folder = migrations({
        "001_baseline.sql": "SELECT pg_catalog.set_config('search_path', '', false);\n"
                            "CREATE TABLE public.item (id int);\n",
        "002_note.sql": "CREATE TABLE note (id int);\n",
    })
    result = run(db.url, folder)
    assert result.code == 0, result.stderr
    assert db.table_exists("public.item") and db.table_exists("public.note")
    assert db.query("SELECT version, status FROM migration_history ORDER BY 1") == [
        (1, "applied"), (2, "applied")]


def test_set_role_in_a_file_history_written_as_the_connecting_role(
        db: Db, migrations: Files) -> None:
    _app_owner(db)
    folder = migrations({
        "001_app.sql": "CREATE SCHEMA app AUTHORIZATION app_owner;\nSET ROLE app_owner;\n"
                       "CREATE TABLE app.item (id int);\n",
        "002_after.sql": "CREATE TABLE after_app (id int);\n",
    })
    result = run(db.url, folder)
    assert result.code == 0, result.stderr
    assert db.query("SELECT tableowner FROM pg_tables WHERE tablename = 'item'") == [
        ("app_owner",)]
    # The next file runs as the connecting role again.
    assert db.query("SELECT tableowner FROM pg_tables WHERE tablename = 'after_app'") == [
        ("postgres",)]
    assert db.query("SELECT version, applied_by FROM migration_history ORDER BY 1") == [
        (1, "postgres"), (2, "postgres")]
    assert db.query("SELECT DISTINCT executed_by FROM migration_audit") == [("postgres",)]


@pytest.mark.parametrize("leftover", sorted(LEFTOVERS))
def test_each_file_starts_from_the_first_files_session_state(
        db: Db, migrations: Files, leftover: str) -> None:
    _app_owner(db)
    db.execute("GRANT ALL ON SCHEMA public TO app_owner")
    folder = migrations({
        "001_probe.sql": PROBE,
        "002_leaves_state.sql": LEFTOVERS[leftover] + "\n",
        "003_probe.sql": PROBE,
    })
    result = run(db.url, folder)
    assert result.code == 0, result.stderr
    first, last = (row[0] for row in db.query("SELECT state FROM probe ORDER BY n"))
    assert last == first
    assert db.query("SELECT DISTINCT applied_by FROM migration_history") == [("postgres",)]


def test_failed_no_transaction_file_audited_as_the_connecting_role(
        db: Db, migrations: Files) -> None:
    _app_owner(db)
    folder = migrations({
        "001_fails.sql": "-- migrate:no-transaction\nSET ROLE app_owner;\nSELECT 1 / 0;\n",
    })
    result = run(db.url, folder)
    assert result.code == 1
    assert result.event("migration_failed")["sqlstate"] == "22012"
    assert "audit_write_failed" not in result.names()
    assert db.query("SELECT version, success, executed_by FROM migration_audit") == [
        (1, False, "postgres")]
    assert db.query("SELECT version, status, applied_by FROM migration_history") == [
        (1, "failed", "postgres")]


def test_what_a_rollback_does_not_undo_is_gone_before_the_retry(
        db: Db, migrations: Files) -> None:
    # A rollback does not undo PREPARE or a session advisory lock: without a reset after
    # the failed attempt, the retry fails on `q` already existing.
    db.execute("CREATE TABLE busy (id int)")
    folder = migrations({
        "001_alter.sql": "PREPARE q AS SELECT 1;\nSELECT pg_advisory_lock(4242);\n"
                         "ALTER TABLE busy ADD COLUMN note text;\n",
    })
    blocker = db.connect()
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
    try:
        runner = Runner(db.url, folder, MIGRATE_DDL_LOCK_TIMEOUT="200ms",
                        MIGRATE_DDL_LOCK_RETRIES="5")
        runner.wait_for_event("migration_lock_retry")
    finally:
        blocker.rollback()
        blocker.close()
    result = runner.finish(timeout=60)
    assert result.code == 0, result.stderr
    assert db.query("SELECT success FROM migration_audit ORDER BY id")[-1] == (True,)


def _without_own_claim(probe: str, db: Db, version: int) -> str:
    """The probe, not counting the session lock by which a no-transaction file's session
    says it runs that file (SPEC §10.1): the runner's, not a leftover of a file."""
    from runner.session.lock import lock_key, owner_key

    key = owner_key(lock_key(db.name, "public"), version) & 0xFFFFFFFFFFFFFFFF
    mine = "WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()"
    assert mine in probe
    return probe.replace(mine, f"{mine}\n    AND NOT (objsubid = 1 AND classid = {key >> 32} "
                               f"AND objid = {key & 0xFFFFFFFF})")


def test_a_no_transaction_file_after_leftovers_starts_clean_too(
        db: Db, migrations: Files) -> None:
    folder = migrations({
        "001_probe.sql": PROBE,
        "002_leaves_state.sql": "CREATE TEMP TABLE scratch (id int);\nPREPARE q AS SELECT 1;\n"
                                "DECLARE c CURSOR WITH HOLD FOR SELECT 1;\n",
        "003_probe.sql": "-- migrate:no-transaction\n" + _without_own_claim(PROBE, db, 3),
    })
    result = run(db.url, folder)
    assert result.code == 0, result.stderr
    first, last = (row[0] for row in db.query("SELECT state FROM probe ORDER BY n"))
    assert last == first
