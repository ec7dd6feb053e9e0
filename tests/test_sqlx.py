"""The sqlx history format (SPEC §8) against a real PostgreSQL, with tests/sqlx_oracle.py
standing in for the app's `sqlx::migrate!().run()`: whichever of the two migrates a
database, the other must agree, row for row."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.folder import sqlx_files
from runner.histories import sqlx
from tests import sqlx_oracle as oracle
from tests.conftest import Db, Runner, run
from tests.pg import Cluster, bindir

Files = Callable[[dict[str, str | bytes]], Path]
SQLX = {"MIGRATE_HISTORY_FORMAT": "sqlx"}
NATIVE = {"MIGRATE_HISTORY_FORMAT": "native"}

APP: dict[str, str | bytes] = {
    "20240101120000_add_users_table.up.sql": "CREATE TABLE users (id int PRIMARY KEY);\n",
    "20240101120000_add_users_table.down.sql": "DROP TABLE users;\n",
    "20240102000000_seed.sql": "INSERT INTO users VALUES (1), (2);\n",
    "20240103000000_users_idx.up.sql":
        "-- no-transaction\nCREATE INDEX CONCURRENTLY users_idx ON users (id);\n",
    "20240103000000_users_idx.down.sql": "-- no-transaction\nDROP INDEX CONCURRENTLY users_idx;\n",
    "20240104000000_nothing_yet.up.sql": "-- kept on purpose: the down file does the work\n",
    "20240104000000_nothing_yet.down.sql": "SELECT 1;\n",
}


def rows(db: Db, schema: str = "public") -> list[tuple[Any, ...]]:
    """What both sides must write identically; installed_on and the time are their own."""
    return db.query(f'SELECT version, description, success, checksum, execution_time >= -1 '
                    f'FROM "{schema}"._sqlx_migrations ORDER BY version')


def migrate(db: Db, folder: Path, *args: str, **env: str) -> Any:
    return run(db.url, folder, *args, **{**SQLX, **env})


def applied_versions(result: Any) -> list[int]:
    return [e["version"] for e in result.events if e["event"] == "migration_applied"]


@pytest.fixture
def db2(cluster: Cluster, db: Db) -> Db:
    name = db.name + "_b"
    with cluster.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return Db(cluster, name)


# --- the oracle, pinned ---------------------------------------------------------------------


def test_oracle_and_runner_agree_with_vectors_checked_by_hand(migrations: Files) -> None:
    assert oracle.lock_id("postgres") == 368907709894077238
    assert sqlx.lock_key("postgres") == 368907709894077238
    folder = migrations({"20240101120000_add_users_table.up.sql": "SELECT 1;\n"})
    (m,) = oracle.resolve(folder)
    assert (m.version, m.description, m.kind) == (20240101120000, "add users table", "up")
    assert m.checksum == hashlib.sha384(b"SELECT 1;\n").digest()
    (ours,) = sqlx_files.read_folder(folder).migrations
    assert (ours.version, ours.description) == (20240101120000, "add users table")
    assert ours.checksum == m.checksum.hex()


# --- one history, either side first ---------------------------------------------------------


def test_runner_then_oracle_then_runner_again(db: Db, migrations: Files) -> None:
    folder = migrations(APP)
    result = migrate(db, folder)
    assert result.code == 0, result.stderr
    assert applied_versions(result) == [20240101120000, 20240102000000, 20240103000000,
                                        20240104000000]
    empty = result.event("empty_migration")
    assert empty["file"] == "20240104000000_nothing_yet.up.sql"
    expected = [(m.version, m.description, True, m.checksum, True)
                for m in oracle.resolve(folder) if m.kind != "down"]
    assert rows(db) == expected
    assert expected[0][1] == "add users table"
    assert db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_idx'::regclass")

    assert oracle.run(db.url, folder) == []  # no VersionMismatch, nothing to do
    assert rows(db) == expected


def test_oracle_then_runner_applies_only_a_new_file_with_byte_equal_rows(
        db: Db, db2: Db, migrations: Files) -> None:
    folder = migrations(APP)
    assert len(oracle.run(db.url, folder)) == 4
    before = rows(db)
    again = migrate(db, folder)
    assert again.code == 0, again.stderr
    assert applied_versions(again) == []
    assert rows(db) == before

    (folder / "20240105000000_posts.sql").write_text("CREATE TABLE posts (id int);\n")
    more = migrate(db, folder)
    assert more.code == 0, more.stderr
    assert applied_versions(more) == [20240105000000]
    assert oracle.run(db.url, folder) == []

    assert oracle.run(db2.url, folder) == [20240101120000, 20240102000000, 20240103000000,
                                           20240104000000, 20240105000000]
    assert rows(db) == rows(db2)


def test_oracle_holding_sqlx_lock_makes_the_runner_wait(db: Db, migrations: Files) -> None:
    folder = migrations(APP)
    with oracle.connect(db.url) as app:
        oracle.lock(app)
        runner = Runner(db.url, folder, **SQLX)
        waiting = runner.wait_for_event("lock_waiting")
        assert waiting["holder_pid"] == app.info.backend_pid
        assert waiting["lock_key"] == oracle.lock_id(db.name)
        assert not db.table_exists("users")
        oracle.unlock(app)
        result = runner.finish()
    assert result.code == 0, result.stderr
    assert len(rows(db)) == 4


# --- history checks ---------------------------------------------------------------------


def test_changed_file_exits_5_and_line_endings_only_warn(db: Db, migrations: Files) -> None:
    folder = migrations(APP)
    assert migrate(db, folder).code == 0
    seed = folder / "20240102000000_seed.sql"
    seed.write_bytes(b"INSERT INTO users VALUES (1), (2);\r\n")  # a CRLF checkout
    eol = migrate(db, folder)
    assert eol.code == 0, eol.stderr
    assert eol.event("checksum_eol_only")["file"] == seed.name
    with pytest.raises(oracle.VersionMismatch):  # the app hashes the raw bytes
        oracle.run(db.url, folder)
    status = json.loads(migrate(db, folder, "status", "--json").stdout)
    assert status["summary"]["changed"] == 0 and status["summary"]["applied"] == 4

    repaired = migrate(db, folder, "repair", "--accept-checksums")
    assert repaired.code == 0, repaired.stderr
    assert oracle.run(db.url, folder) == []  # the stored checksum is the bytes at hand

    seed.write_text("INSERT INTO users VALUES (1), (2), (3);\n")
    changed = migrate(db, folder)
    assert changed.code == 5
    assert "20240102000000_seed.sql: changed after it was applied" in changed.stderr
    assert "checksum_eol_only" not in changed.names()


def test_a_success_false_row_stops_both(db: Db, migrations: Files) -> None:
    folder = migrations(APP)
    assert migrate(db, folder).code == 0
    db.execute("UPDATE _sqlx_migrations SET success = false WHERE version = 20240104000000")
    (folder / "20240105000000_posts.sql").write_text("CREATE TABLE posts (id int);\n")
    result = migrate(db, folder)
    assert result.code == 5
    assert "failed part-way" in result.event("run_failed")["error"]
    assert not db.table_exists("posts")
    with pytest.raises(oracle.Dirty):
        oracle.run(db.url, folder)
    status = json.loads(migrate(db, folder, "status", "--json").stdout)
    assert status["summary"]["failed"] == 1

    assert migrate(db, folder, "repair", "--failed").code == 0
    again = migrate(db, folder)
    assert again.code == 0, again.stderr
    assert applied_versions(again) == [20240104000000, 20240105000000]
    assert oracle.run(db.url, folder) == []


def test_no_transaction_file_failing_part_way_leaves_a_dirty_row(
        db: Db, migrations: Files) -> None:
    folder = migrations({
        "1_a.sql": "CREATE TABLE a (id int);\n",
        "2_idx.sql": "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON a (nope);\n"})
    failed = migrate(db, folder)
    assert failed.code == 1
    assert db.query("SELECT version, success FROM _sqlx_migrations ORDER BY 1") == [
        (1, True), (2, False)]
    with pytest.raises(oracle.Dirty):
        oracle.run(db.url, folder)
    # Every fix the runner suggests names the format, so it works pasted into a shell.
    assert ("`migration-runner repair --failed --history-format sqlx`"
            in failed.event("run_failed")["error"])
    again = migrate(db, folder)
    assert again.code == 5
    assert ("`migration-runner repair --mark-applied 2 --history-format sqlx`"
            in again.event("run_failed")["error"])


# --- the guard ------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["", "public"])
def test_native_format_refuses_a_database_the_app_migrated(
        db: Db, migrations: Files, schema: str) -> None:
    """MIGRATE_SCHEMA unset or naming the app's schema: the guard finds the app's rows."""
    folder = migrations(APP)
    assert len(oracle.run(db.url, folder)) == 4
    objects = db.scalar("SELECT count(*) FROM pg_class")
    schema = schema or "public"
    for command in (["migrate"], ["baseline", "--to", "20240102000000"]):
        result = run(db.url, folder, *command, MIGRATE_SCHEMA=schema, **NATIVE)
        assert result.code == 5, result.stderr
        error = result.event("run_failed")["error"]
        assert '_sqlx_migrations" holds 4 rows (newest version 20240104000000)' in error
        assert "MIGRATE_HISTORY_FORMAT=sqlx" in error
        assert not db.table_exists(f'"{schema}".migration_history') or not db.scalar(
            f'SELECT count(*) FROM "{schema}".migration_history')
    dry = run(db.url, folder, "--dry-run", MIGRATE_SCHEMA=schema, **NATIVE)
    assert dry.code == 5 and dry.stdout == ""
    validate = run(db.url, folder, "validate", MIGRATE_SCHEMA=schema, **NATIVE)
    assert validate.code == 5 and "MIGRATE_HISTORY_FORMAT=sqlx" in validate.stdout
    assert db.scalar("SELECT count(*) FROM _sqlx_migrations") == 4
    assert db.scalar("SELECT count(*) FROM pg_class") <= objects + 4  # at most empty tables


READERS = [["status"], ["status", "--json"], ["status", "--exit-code"], ["rollback"],
           ["rollback", "--dry-run"], ["rollback", "--to", "0"], ["repair", "--failed"],
           ["repair", "--mark-applied", "20240102000000"]]


def test_every_command_refuses_a_history_it_does_not_read(
        db: Db, migrations: Files, tmp_path: Path) -> None:
    """The guard of `migrate` holds for every command that reads the history: none may
    report "all pending" or "nothing to roll back" from the wrong table (either way)."""
    folder = migrations(APP)
    assert len(oracle.run(db.url, folder)) == 4
    before = rows(db)
    for command in READERS:
        result = run(db.url, folder, *command, **NATIVE)
        assert result.code == 5, (command, result.stderr)
        assert "MIGRATE_HISTORY_FORMAT=sqlx" in result.event("run_failed")["error"], command
    assert rows(db) == before

    # The other way round: a native history, read in the sqlx format.
    other = tmp_path / "native"
    other.mkdir()
    (other / "001_a.up.sql").write_text("CREATE TABLE a (id int);\n")
    (other / "001_a.down.sql").write_text("DROP TABLE a;\n")
    db.execute("DROP TABLE _sqlx_migrations")
    assert run(db.url, other, **NATIVE).code == 0
    for command in READERS[:6]:
        result = migrate(db, other, *command)
        assert result.code == 5, (command, result.stderr)
        assert "migration_history" in result.event("run_failed")["error"], command
    assert db.table_exists("public.a")


def test_baseline_moves_a_native_database_to_sqlx(db: Db, migrations: Files) -> None:
    folder = migrations({k: v for k, v in APP.items() if "nothing_yet" not in k})
    assert run(db.url, folder, **NATIVE).code == 0
    refused = migrate(db, folder)  # sqlx format would apply everything again
    assert refused.code == 5
    error = refused.event("run_failed")["error"]
    assert 'migration_history" holds 3 rows' in error
    # The fix, ready to paste: the real version, the format flag.
    assert "`migration-runner baseline --to 20240103000000 --history-format sqlx`" in error

    moved = migrate(db, folder, "baseline", "--to", "20240103000000")
    assert moved.code == 0, moved.stderr
    assert moved.event("history_retired")["renamed_to"] == '"public".' \
        '"migration_history_before_sqlx"'
    assert oracle.run(db.url, folder) == []
    assert rows(db) == [(m.version, m.description, True, m.checksum, True)
                        for m in oracle.resolve(folder) if m.kind != "down"]
    assert migrate(db, folder, "baseline", "--to", "20240103000000").code == 5

    # A later run that forgets the setting must not read the old history, where a new
    # file would be pending and run a second time: `auto` finds the sqlx one.
    (folder / "20240105000000_count.sql").write_text("INSERT INTO users VALUES (9);\n")
    assert migrate(db, folder).code == 0
    for command in (["migrate"], ["status", "--exit-code"], ["validate"]):
        forgot = run(db.url, folder, *command)
        assert forgot.code == 0, (command, forgot.stderr)
        assert forgot.event("history_format")["format"] == "sqlx"
    with_native = run(db.url, folder, **NATIVE)
    assert with_native.code == 5
    assert "MIGRATE_HISTORY_FORMAT=sqlx" in with_native.event("run_failed")["error"]
    assert db.scalar("SELECT count(*) FROM users WHERE id = 9") == 1
    assert db.scalar("SELECT count(*) FROM migration_history_before_sqlx") == 3


# --- the folder as sqlx reads it ----------------------------------------------------------


def test_files_sqlx_would_read_differently_are_refused(db: Db, migrations: Files) -> None:
    folder = migrations({
        "1_a.sql": "CREATE TABLE a (id int);\n",
        "1_a_rollback.sql": "DROP TABLE a;\n",
        "2_idx.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY i2 ON a (id);\n",
        "3_idx.sql": "-- an index\n-- no-transaction\nCREATE INDEX CONCURRENTLY i3 ON a (id);\n",
        "4_two.sql": "-- no-transaction\nCREATE INDEX CONCURRENTLY i4 ON a (id);\n"
                     "CREATE INDEX CONCURRENTLY i5 ON a (id);\n",
        "5_bom.sql": b"\xef\xbb\xbfCREATE TABLE b (id int);\n",
        "6_wrapped.sql": "BEGIN;\nCREATE TABLE c (id int);\nCOMMIT;\n",
        "7_more.sql": "-- no-transactional, says the author\nCREATE TABLE d (id int);\n",
        "notes.sql": "-- not a migration\n",
    })
    result = run(None, folder, "validate", "--offline", "--history-format", "sqlx")
    assert result.code == 5
    for name, why in [("1_a_rollback.sql", "second migration of version 1"),
                      ("2_idx.sql", "form sqlx ignores"), ("3_idx.sql", "form sqlx ignores"),
                      ("4_two.sql", "one statement per no-transaction file"),
                      ("5_bom.sql", "BOM"), ("6_wrapped.sql", "drop the wrapper"),
                      ("7_more.sql", "exactly `-- no-transaction`"),
                      ("notes.sql", "sqlx ignores")]:
        assert any(line.startswith(name) and why in line
                   for line in result.stdout.splitlines()), (name, result.stdout)
    assert migrate(db, folder).code == 5
    assert not db.table_exists("a") and not db.table_exists("_sqlx_migrations")

    # The runner's own format reads the same files its own way.
    (folder / "5_bom.sql").unlink()
    (folder / "notes.sql").unlink()
    (folder / "7_more.sql").unlink()
    (folder / "4_two.sql").unlink()
    (folder / "3_idx.sql").unlink()
    native = run(None, folder, "validate", "--offline")
    assert native.code == 0, native.stdout


def test_no_transaction_at_byte_0_runs_outside_a_transaction(
        db: Db, db2: Db, migrations: Files) -> None:
    folder = migrations({
        "1_a.sql": "CREATE TABLE a (id int);\n",
        "2_idx.sql": "-- no-transaction\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n"})
    result = migrate(db, folder)
    assert result.code == 0, result.stderr
    assert [e["transactional"] for e in result.events
            if e["event"] == "migration_started"] == [True, False]
    assert db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'a_idx'::regclass")
    assert oracle.run(db2.url, folder) == [1, 2]
    assert rows(db) == rows(db2)


def test_the_app_fails_on_a_rollback_file_pair_the_runner_refuses_it(
        db: Db, migrations: Files) -> None:
    """Why the PACS folder moved to .up.sql/.down.sql: sqlx reads `NNN_x_rollback.sql` as a
    second migration of version NNN."""
    folder = migrations({"001_x.sql": "CREATE TABLE x (id int);\n",
                         "001_x_rollback.sql": "DROP TABLE x;\n"})
    # Directory order decides which file goes first; either way the app fails, now and
    # at every start after.
    with pytest.raises(oracle.MigrateError):
        oracle.run(db.url, folder)
    with pytest.raises(oracle.MigrateError):
        oracle.run(db.url, folder)
    refused = run(None, folder, "validate", "--offline", "--history-format", "sqlx")
    assert refused.code == 5
    assert "001_x_rollback.sql: sqlx applies it as a second migration" in refused.stdout


# --- docs.rs's odd files: sqlx format against psql -----------------------------------------

DOCS_RS: dict[str, str | bytes] = {
    "20231021111635_initial.up.sql": (
        "-- generated via pg_dump --schema-only, `public.` removed\n"
        "CREATE SCHEMA IF NOT EXISTS public;\n"
        "CREATE TYPE build_status AS ENUM ('in_progress', 'success', 'failure');\n"
        "CREATE FUNCTION normalize_crate_name(character varying) RETURNS character varying\n"
        "    LANGUAGE sql\n    AS $_$\n        SELECT LOWER(REPLACE($1, '_', '-'));\n"
        "    $_$;\n"
        "CREATE TABLE releases (id serial PRIMARY KEY, name text NOT NULL,\n"
        "    build_status boolean);\n"
        "CREATE TABLE builds (id serial PRIMARY KEY, rid integer NOT NULL REFERENCES releases,\n"
        "    build_status build_status NOT NULL,\n"
        "    build_time timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL);\n"
        "CREATE TABLE queue (id serial PRIMARY KEY, attempt integer DEFAULT 0);\n"
        "CREATE TABLE repositories (id serial PRIMARY KEY, updated_at timestamptz);\n"),
    "20231021111635_initial.down.sql":
        "DROP TABLE repositories, queue, builds, releases;\nDROP TYPE build_status;\n",
    "20240221104457_drop_releases_build_status.up.sql":
        "ALTER TABLE releases DROP COLUMN build_status;\n",
    "20240221104457_drop_releases_build_status.down.sql":
        "ALTER TABLE releases ADD COLUMN build_status BOOL;\n",
    "20240221114302_ensure_no_buildless_releases_exist.up.sql":
        "-- no up-migration, we only have a down-migration as validation\n",
    "20240221114302_ensure_no_buildless_releases_exist.down.sql":
        "DELETE FROM releases WHERE NOT EXISTS (\n    SELECT *\n    FROM builds\n"
        "    WHERE builds.rid = releases.id\n);\n",
    "20240309082057_release_status_view.sql.up.sql": (
        "CREATE OR REPLACE VIEW release_build_status AS (\n  SELECT r.id,\n"
        "    MAX(b.build_time) as last_build_time\n  FROM releases as r\n"
        "    LEFT OUTER JOIN builds AS b on b.rid = r.id\n  GROUP BY r.id\n);\n"),
    "20240309082057_release_status_view.sql.down.sql": "DROP VIEW release_build_status;\n",
    "20240624085737_build-status-idx.up.sql":
        "CREATE INDEX builds_build_status_idx ON builds USING btree (build_status ASC);\n",
    "20240624085737_build-status-idx.down.sql": "DROP INDEX builds_build_status_idx;\n",
    "20260131071854_failed-queued-crates.up.sql":
        "-- Add up migration script here\nDELETE FROM queue WHERE attempt >= 5;\n",
    "20260131071854_failed-queued-crates.down.sql": b"",
    "20260208042033_repositories-index-updated-.up.sql":
        "CREATE INDEX repositories_updated_idx ON repositories USING btree (updated_at);\n",
    "20260208042033_repositories-index-updated-.down.sql": "DROP INDEX repositories_updated_idx;\n",
}


def schema_dump(db: Db) -> str:
    out = subprocess.run(
        [str(bindir() / "pg_dump"), "--schema-only", "--no-owner", "-T", "_sqlx_migrations",
         "-T", "migration_audit", "-T", "migration_audit_id_seq", "-d", db.url],
        check=True, capture_output=True, text=True).stdout
    # pg_dump 15.14+ fences the dump with a random \restrict key.
    return "\n".join(line for line in out.splitlines() if not re.match(r"\\(un)?restrict", line))


def test_docs_rs_odd_files_give_the_schema_psql_gives(
        db: Db, db2: Db, migrations: Files) -> None:
    folder = migrations(DOCS_RS)
    result = migrate(db, folder)
    assert result.code == 0, result.stderr
    assert [e["file"] for e in result.events if e["event"] == "empty_migration"] == [
        "20240221114302_ensure_no_buildless_releases_exist.up.sql"]
    descriptions = [r[1] for r in rows(db)]
    assert "release status view.sql" in descriptions
    assert "repositories-index-updated-" in descriptions
    assert rows(db) == [(m.version, m.description, True, m.checksum, True)
                        for m in oracle.resolve(folder) if m.kind != "down"]

    for path in sorted(folder.glob("*.up.sql"), key=lambda p: int(p.name.split("_")[0])):
        subprocess.run([str(bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-d", db2.url, "-f", str(path)], check=True, capture_output=True)
    assert schema_dump(db) == schema_dump(db2)
    assert "release_build_status" in schema_dump(db)

    status = json.loads(migrate(db, folder, "status", "--json").stdout)
    assert status["summary"]["applied"] == 7 and status["summary"]["pending"] == 0
    # The empty .down.sql is a no-op, as for sqlx's revert (SPEC §8): warned, not refused.
    validate = migrate(db, folder, "validate")
    assert validate.code == 0, validate.stdout
    assert (validate.event("empty_rollback")["file"]
            == "20260131071854_failed-queued-crates.down.sql")
    back = migrate(db, folder, "rollback", "--to", "20240624085737")
    assert back.code == 0, back.stderr
    assert back.event("empty_rollback")["version"] == 20260131071854
    assert len(rows(db)) == 5
    assert not db.scalar("SELECT to_regclass('repositories_updated_idx') IS NOT NULL")
    assert oracle.run(db.url, folder) == [20260131071854, 20260208042033]


# --- every command in the sqlx format -------------------------------------------------------


def test_every_command_in_sqlx_format(db: Db, migrations: Files, tmp_path: Path) -> None:
    folder = migrations(APP)
    dry = migrate(db, folder, "--dry-run")
    assert dry.code == 0, dry.stderr
    assert re.search(r"^20240103000000_users_idx.up.sql +no-transaction +1 statement$",
                     dry.stdout, re.M), dry.stdout
    assert not db.table_exists("_sqlx_migrations")

    assert migrate(db, folder, "--to", "20240102000000").code == 0
    status = json.loads(migrate(db, folder, "status", "--json").stdout)
    assert status["summary"] == {"applied": 2, "pending": 2, "failed": 0, "changed": 0,
                                 "missing": 0, "out_of_order": 0}
    first = status["migrations"][0]
    assert first["checksum"] == next(m for m in oracle.resolve(folder)
                                     if m.kind == "up").checksum.hex()
    assert migrate(db, folder, "validate").code == 0

    assert migrate(db, folder).code == 0
    back = migrate(db, folder, "rollback", "--steps", "2")
    assert back.code == 0, back.stderr
    assert [r[0] for r in rows(db)] == [20240101120000, 20240102000000]
    assert not db.scalar("SELECT to_regclass('users_idx') IS NOT NULL")
    assert db.query("SELECT version, direction FROM migration_audit "
                    "WHERE direction = 'down' ORDER BY id") == [
        (20240104000000, "down"), (20240103000000, "down")]
    assert oracle.run(db.url, folder) == [20240103000000, 20240104000000]
    assert oracle.undo(db.url, folder, 20240102000000) == [20240104000000, 20240103000000]

    snapshot = tmp_path / "schema.json"
    verify = migrate(db, folder, "verify", "--write", str(snapshot))
    assert verify.code == 0, verify.stderr
    tables = json.loads(snapshot.read_text())["schemas"]["public"]["tables"]
    assert sorted(tables) == ["users"]


def test_history_format_setting(migrations: Files) -> None:
    folder = migrations({"1_a.sql": "SELECT 1;\n"})
    bad = run(None, folder, "validate", "--offline", MIGRATE_HISTORY_FORMAT="flyway")
    assert bad.code == 2
    assert "MIGRATE_HISTORY_FORMAT" in bad.event("run_failed")["error"]


def test_commands_that_write_after_the_app_made_the_history(db: Db, migrations: Files) -> None:
    """A history the app created has no audit table beside it: `repair` and `rollback`
    create it before their first audit row."""
    folder = migrations(APP)
    assert len(oracle.run(db.url, folder)) == 4
    assert not db.table_exists("public.migration_audit")
    path = folder / "20240102000000_seed.sql"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    repaired = migrate(db, folder, "repair", "--accept-checksums")
    assert repaired.code == 0, repaired.stderr
    assert oracle.run(db.url, folder) == []  # the raw bytes' checksum, as the app reads them
    back = migrate(db, folder, "rollback")
    assert back.code == 0, back.stderr
    assert db.scalar("SELECT count(*) FROM public.migration_audit WHERE direction = 'down' "
                     "AND success") == 1


def test_a_file_new_wrote_is_not_applied_as_an_empty_migration(
        db: Db, migrations: Files) -> None:
    """In the sqlx format a file of comments only is a valid no-op; one that still holds
    the header `new` wrote has just not been written yet: recorded as applied, its SQL
    would never run."""
    folder = migrations({"001_a.up.sql": "CREATE TABLE a (id int);\n",
                         "001_a.down.sql": "DROP TABLE a;\n"})
    made = migrate(db, folder, "new", "add_notes")
    assert made.code == 0, made.stderr
    result = migrate(db, folder)
    assert result.code == 5, result.stderr
    assert "002_add_notes.up.sql: still only the header `new` wrote" in result.stderr
    assert not db.table_exists("public._sqlx_migrations") or db.scalar(
        "SELECT count(*) FROM _sqlx_migrations") == 0
    offline = migrate(db, folder, "validate", "--offline")
    assert offline.code == 5 and "002_add_notes.up.sql: still only the header" in offline.stdout


def test_status_exit_code_is_5_when_migrate_would_refuse_a_pending_file(
        db: Db, migrations: Files) -> None:
    folder = migrations({"001_a.up.sql": "CREATE TABLE a (id int);\n",
                         "001_a.down.sql": "DROP TABLE a;\n"})
    assert migrate(db, folder).code == 0
    assert migrate(db, folder, "new", "add_notes").code == 0
    assert migrate(db, folder).code == 5  # the header `new` wrote is no migration yet
    assert migrate(db, folder, "status", "--exit-code").code == 5
    (folder / "002_add_notes.up.sql").write_text("CREATE TABLE notes (id int);\n")
    assert migrate(db, folder, "status", "--exit-code").code == 6
