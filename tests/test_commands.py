"""The operator commands (SPEC §4) against a real PostgreSQL: status, validate, rollback,
baseline, repair, new. Each test checks the database, the exit code and stdout or the log."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner.session.lock import lock_key
from tests.conftest import ROOT, Db, run, runner_cmd, runner_env
from tests.pg import bindir

Files = Callable[[dict[str, str | bytes]], Path]
PACS = ROOT / "migrations"
PACS_SCHEMAS = ["security", "viewer", "annotation"]

FOUR: dict[str, str | bytes] = {
    "1_item.sql": "BEGIN;\nCREATE TABLE item (id int PRIMARY KEY);\nCOMMIT;\n",
    "1_item_rollback.sql": "BEGIN;\nDROP TABLE item;\nCOMMIT;\n",
    "2_seed.sql": "INSERT INTO item VALUES (1), (2);\n",
    "2_seed_rollback.sql": "DELETE FROM item WHERE id IN (1, 2);\n",
    "3_idx.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY item_idx ON item (id);\n",
    "3_idx_rollback.sql": "-- migrate:no-transaction\nDROP INDEX CONCURRENTLY item_idx;\n",
    "4_more.sql": "CREATE TABLE more (id int);\n",
    "4_more_rollback.sql": "DROP TABLE more;\n",
}


NATIVE = {"MIGRATE_HISTORY_FORMAT": "native"}


def history(db: Db) -> list[tuple[Any, ...]]:
    if not db.table_exists("migration_history"):
        return []
    return db.query("SELECT version, status FROM migration_history ORDER BY version")


def audit(db: Db) -> list[tuple[Any, ...]]:
    return db.query("SELECT version, direction, success FROM migration_audit ORDER BY id")


def relations(db: Db) -> int:
    return int(db.scalar("SELECT count(*) FROM pg_class WHERE relnamespace NOT IN "
                         "(SELECT oid FROM pg_namespace WHERE nspname IN "
                         "('pg_catalog', 'information_schema', 'pg_toast'))"))


def migrated(db: Db, folder: Path, *args: str) -> None:
    result = run(db.url, folder, *args)
    assert result.code == 0, result.stderr


# --- status -------------------------------------------------------------------------------


def test_status_json_shows_every_state(db: Db, migrations: Files) -> None:
    folder = migrations({
        "1_a.sql": "CREATE TABLE a (id int);",
        "2_b.sql": "CREATE TABLE b (id int);",
        "4_d.sql": "CREATE TABLE d (id int);",
        "5_gone.sql": "CREATE TABLE gone (id int);",
        "6_idx.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY i ON a (nope);\n",
    })
    assert run(db.url, folder).code == 1  # 1, 2, 4, 5 applied; 6 failed part-way
    (folder / "1_a.sql").write_text("CREATE TABLE a (id bigint);")  # changed
    (folder / "5_gone.sql").unlink()  # missing
    (folder / "3_c.sql").write_text("CREATE TABLE c (id int);")  # out of order
    (folder / "7_new.sql").write_text("CREATE TABLE new (id int);")  # pending
    before = relations(db)

    result = run(db.url, folder, "status", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    states = {m["version"]: m["state"] for m in doc["migrations"]}
    assert states == {1: "changed", 2: "applied", 3: "out_of_order", 4: "applied",
                      5: "missing", 6: "failed", 7: "pending"}
    assert doc["summary"] == {"applied": 2, "pending": 1, "failed": 1, "changed": 1,
                              "missing": 1, "out_of_order": 1}
    rows = {m["version"]: m for m in doc["migrations"]}
    for row in doc["migrations"]:
        assert {"version", "name", "file", "state", "checksum", "applied_at",
                "execution_time_ms"} <= set(row)
    assert rows[2]["name"] == "2_b" and rows[2]["file"] == "2_b.sql"
    assert rows[2]["applied_at"].endswith("Z") and isinstance(rows[2]["execution_time_ms"], int)
    assert rows[1]["checksum"] != rows[1]["applied_checksum"]
    assert rows[1]["applied_checksum"] == db.scalar(
        "SELECT checksum FROM migration_history WHERE version = 1")
    assert rows[5]["file"] is None and rows[5]["name"] == "version 5 (gone)"
    assert rows[7]["applied_at"] is None and rows[7]["execution_time_ms"] is None
    assert relations(db) == before  # read-only


def test_status_table_is_aligned_and_plain_when_piped(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "10_long_description.sql": "CREATE TABLE b (id int);"})
    migrated(db, folder, "--to", "1")
    result = run(db.url, folder, "status")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "NAME", "STATE", "APPLIED", "AT", "DURATION"]
    column = lines[0].index("STATE")
    assert lines[1][column:].startswith("applied") and lines[2][column:].startswith("pending")
    assert lines[1].split()[:2] == ["1", "1_a"] and lines[1].endswith(" ms")
    assert lines[-1] == "1 applied, 1 pending"
    assert "\x1b[" not in result.stdout
    assert [e["event"] for e in result.events] == ["db_connected", "history_format",
                                                   "status_read"]


def _status_on_a_terminal(db: Db, folder: Path, **env: str) -> str:
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(runner_cmd("status"), env=runner_env(db.url, folder, **env),
                              stdout=terminal, stderr=subprocess.PIPE, cwd=ROOT, timeout=60)
    finally:
        os.close(terminal)
    assert proc.returncode == 0, proc.stderr
    out = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal side is closed and drained
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    return out.decode()


def test_status_colours_state_on_a_terminal_unless_no_color(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    coloured = _status_on_a_terminal(db, folder, NO_COLOR="")
    assert "\x1b[33mpending\x1b[0m" in coloured
    assert "\x1b[" not in _status_on_a_terminal(db, folder, NO_COLOR="1")


def test_status_on_an_untouched_database_creates_nothing_and_takes_no_lock(
        db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "2_b.sql": "CREATE TABLE b (id int);"})
    before = relations(db)
    with db.connect() as holder:  # another runner holds the lock
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(db.name, "ops"),))
        result = run(db.url, folder, "status", "--json", "--schema", "ops",
                     MIGRATE_LOCK_TIMEOUT="0")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [m["state"] for m in doc["migrations"]] == ["pending", "pending"]
    assert doc["summary"]["pending"] == 2
    assert relations(db) == before
    assert not db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'ops'")


def test_status_works_for_a_role_that_can_only_select(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    migrated(db, folder)
    reader = f"reader_{db.name}"
    db.execute(f'CREATE ROLE "{reader}" LOGIN; '
               f'GRANT SELECT ON migration_history, migration_audit TO "{reader}"')
    (folder / "2_b.sql").write_text("CREATE TABLE b (id int);")
    result = run(db.cluster.url(db.name, user=reader), folder, "status", "--json")
    assert result.code == 0, result.stderr
    states = [m["state"] for m in json.loads(result.stdout)["migrations"]]
    assert states == ["applied", "pending"]


def test_settings_flags_work_before_and_after_the_command(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    for args in (["--dir", str(folder), "status", "--json"],
                 ["status", "--json", "--dir", str(folder)]):
        result = run(db.url, None, *args)
        assert result.code == 0, result.stderr
        assert json.loads(result.stdout)["summary"]["pending"] == 1


# --- validate -----------------------------------------------------------------------------


def test_validate_offline_reports_every_problem_in_one_run(migrations: Files) -> None:
    folder = migrations({
        "initial.sql": "SELECT 1;",
        "1_a.sql": "CREATE TABLE a (id int);",
        "1_a_rollback.sql": "DROP TABL a;",
        "2_b.sql": "CREATE TABLE (;",
        "3_c.sql": "-- TODO\n",
        "4_gone_rollback.sql": "SELECT 1;",
        "5_cic.sql": "CREATE TABLE t (id int);\nCREATE INDEX CONCURRENTLY i ON t (id);\n",
    })
    result = run(None, folder, "validate", "--offline")  # no database anywhere
    assert result.code == 5, result.stderr
    problems = result.events[-1]["problems"]
    expected = ["initial.sql", "1_a_rollback.sql:1:", "2_b.sql:1:", "3_c.sql",
                "4_gone_rollback.sql", "5_cic.sql:2:1: CREATE INDEX CONCURRENTLY"]
    for name in expected:
        assert any(p.startswith(name) for p in problems), (name, problems)
    assert len(problems) == len(expected)
    assert result.stdout.splitlines() == problems
    assert "db_connected" not in result.names()


def test_validate_passes_on_the_pacs_migrations_offline_and_online(db: Db) -> None:
    offline = run(None, PACS, "validate", "--offline")
    assert offline.code == 0, offline.stderr
    assert offline.stdout == "ok: 3 migrations, 3 rollback files\n"
    migrated(db, PACS)
    online = run(db.url, PACS, "validate")
    assert online.code == 0, online.stderr
    assert online.event("validation_passed")["files"] == 3


def test_validate_with_database_checks_history(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "2_b.sql": "CREATE TABLE b (id int);",
                         "3_c.sql": "CREATE TABLE c (id int);"})
    migrated(db, folder)
    (folder / "3_c.sql").unlink()  # database ahead: a warning...
    ahead = run(db.url, folder, "validate")
    assert ahead.code == 0, ahead.stderr
    assert ahead.event("database_ahead")["versions"] == [3]
    assert run(db.url, folder, "validate", "--strict").code == 5  # ...unless --strict
    (folder / "1_a.sql").write_text("CREATE TABLE a (id bigint);")
    (folder / "0_zero.sql").write_text("SELECT 0;")
    result = run(db.url, folder, "validate")
    assert result.code == 5
    problems = result.events[-1]["problems"]
    assert any(p.startswith("1_a.sql: changed") for p in problems)
    assert any("divergent" in p for p in problems)
    assert any(p.startswith("0_zero.sql: pending but older") for p in problems)
    assert history(db) == [(1, "applied"), (2, "applied"), (3, "applied")]


# --- rollback -----------------------------------------------------------------------------


def test_rollback_steps_and_to_run_rollback_files_newest_first(
        db: Db, migrations: Files) -> None:
    folder = migrations(FOUR)
    migrated(db, folder)
    one = run(db.url, folder, "rollback")
    assert one.code == 0, one.stderr
    assert not db.table_exists("more")
    done = one.event("rollback_applied")
    assert (done["version"], done["file"]) == (4, "4_more_rollback.sql")
    assert isinstance(done["duration_ms"], int) and done["name"]
    assert one.stdout == ""

    two = run(db.url, folder, "rollback", "--to", "1")  # 3 (no-transaction), then 2
    assert two.code == 0, two.stderr
    applied = [e["version"] for e in two.events if e["event"] == "rollback_applied"]
    assert applied == [3, 2]
    assert two.event("rollback_complete")["rolled_back"] == 2
    assert not db.scalar("SELECT to_regclass('item_idx') IS NOT NULL")
    assert db.scalar("SELECT count(*) FROM item") == 0
    assert history(db) == [(1, "applied")]
    assert audit(db)[4:] == [(4, "down", True), (3, "down", True), (2, "down", True)]

    again = run(db.url, folder)
    assert again.event("migrations_complete")["applied"] == 3


def test_rollback_refused_when_a_needed_rollback_file_is_missing_or_bad(
        db: Db, migrations: Files) -> None:
    content = dict(FOUR)
    del content["3_idx_rollback.sql"]
    folder = migrations(content)
    migrated(db, folder)
    result = run(db.url, folder, "rollback", "--steps", "2")
    assert result.code == 5
    assert "3_idx.sql: no rollback file" in result.events[-1]["error"]
    assert db.table_exists("more")  # 4's rollback is fine, yet it did not run
    assert history(db) == [(1, "applied"), (2, "applied"), (3, "applied"), (4, "applied")]
    assert "rollback_started" not in result.names()

    (folder / "3_idx_rollback.sql").write_text("DROP INDEX CONCURRENTLY item_idx;\n")
    bad = run(db.url, folder, "rollback", "--steps", "2")
    assert bad.code == 5
    assert bad.events[-1]["problems"][0].startswith(
        "3_idx_rollback.sql:1:1: DROP INDEX CONCURRENTLY cannot run inside a transaction")
    assert db.table_exists("more") and len(history(db)) == 4

    typo = run(db.url, folder, "rollback", "--to", "7")
    assert typo.code == 5 and "version 7 is not applied" in typo.events[-1]["error"]


def test_rollback_file_failing_exits_1_with_its_line(db: Db, migrations: Files) -> None:
    folder = migrations({**FOUR, "2_seed_rollback.sql":
                         "DELETE FROM item;\nDELETE FROM item WHERE nope = 1;\n"})
    migrated(db, folder)
    result = run(db.url, folder, "rollback", "--steps", "3")
    assert result.code == 1
    failed = result.event("migration_failed")
    assert (failed["file"], failed["line"], failed["column"]) == ("2_seed_rollback.sql", 2,
                                                             len("DELETE FROM item WHERE ") + 1)
    assert (failed["version"], failed["sqlstate"], failed["direction"]) == (2, "42703", "down")
    assert result.events[-1]["error"].startswith("2_seed_rollback.sql:2:24:")
    # 4 and 3 rolled back; 2 kept all of its rows (its transaction rolled back).
    assert history(db) == [(1, "applied"), (2, "applied")]
    assert db.scalar("SELECT count(*) FROM item") == 2
    assert audit(db)[-1] == (2, "down", False)


def test_no_transaction_rollback_failing_part_way_leaves_a_failed_row(
        db: Db, migrations: Files) -> None:
    folder = migrations({
        "1_t.sql": "CREATE TABLE t (a int, b int);",
        "2_idx.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY t_a ON t (a);\n",
        "2_idx_rollback.sql": "-- migrate:no-transaction\nDROP INDEX CONCURRENTLY t_a;\n"
                              "DROP INDEX CONCURRENTLY t_nope;\n",
    })
    migrated(db, folder)
    result = run(db.url, folder, "rollback")
    assert result.code == 1
    assert "repair --failed" in result.events[-1]["error"]
    assert history(db) == [(1, "applied"), (2, "failed")]
    assert run(db.url, folder).code == 5  # migrate waits for the operator


def test_rollback_all_pacs_migrations_and_migrate_again_gives_the_same_schema(db: Db) -> None:
    migrated(db, PACS)
    before = pacs_schema(db)
    assert len(before[0]) > 50 and len(before[1]) > 20
    result = run(db.url, PACS, "rollback", "--to", "0")
    assert result.code == 0, result.stderr
    assert [e["version"] for e in result.events if e["event"] == "rollback_applied"] == [3, 2, 1]
    assert not db.query("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                        (PACS_SCHEMAS,))
    assert history(db) == []
    assert [d for _, d, _ in audit(db)] == ["up"] * 3 + ["down"] * 3
    migrated(db, PACS)
    assert pacs_schema(db) == before
    assert db.scalar("SELECT count(*) FROM security.roles") == 5


def pacs_schema(db: Db) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    columns = db.query(
        "SELECT table_schema, table_name, column_name, ordinal_position, data_type, "
        "is_nullable, column_default, is_identity FROM information_schema.columns "
        "WHERE table_schema = ANY(%s) ORDER BY 1, 2, 4", (PACS_SCHEMAS,))
    # NOT NULL constraints are named after table oids before PG 18: leave those out.
    constraints = db.query(
        "SELECT table_schema, table_name, constraint_name, constraint_type "
        "FROM information_schema.table_constraints WHERE table_schema = ANY(%s) "
        "AND constraint_name !~ '^[0-9]+_[0-9]+_[0-9]+_not_null$' ORDER BY 1, 2, 3",
        (PACS_SCHEMAS,))
    return columns, constraints


def test_rollback_with_nothing_applied_is_a_no_op(db: Db, migrations: Files) -> None:
    result = run(db.url, migrations(FOUR), "rollback")
    assert result.code == 0, result.stderr
    assert result.event("rollback_complete")["rolled_back"] == 0
    assert not db.table_exists("migration_history")


def test_rollback_waits_for_the_migrate_lock(db: Db, migrations: Files) -> None:
    folder = migrations(FOUR)
    migrated(db, folder)
    with db.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(db.name, "public"),))
        result = run(db.url, folder, "rollback", MIGRATE_LOCK_TIMEOUT="0")
    assert result.code == 4
    assert db.table_exists("more")


# --- baseline -----------------------------------------------------------------------------


def psql(db: Db, path: Path) -> None:
    subprocess.run([str(bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.url,
                    "-f", str(path)], check=True, capture_output=True, text=True)


def test_baseline_adopts_a_psql_built_database_then_migrate_applies_only_newer(
        db: Db) -> None:
    """In the native format, whose tables `history` and `audit` read (the PACS folder's
    .up.sql layout would choose sqlx)."""
    psql(db, PACS / "001_initial_schema.up.sql")  # the old init containers
    psql(db, PACS / "002_initial_seed_data.up.sql")
    result = run(db.url, PACS, "baseline", "--to", "2", **NATIVE)
    assert result.code == 0, result.stderr
    assert history(db) == [(1, "applied"), (2, "applied")]
    assert audit(db) == [(1, "baseline", True), (2, "baseline", True)]
    assert [e["file"] for e in result.events if e["event"] == "migration_baselined"] == [
        "001_initial_schema.up.sql", "002_initial_seed_data.up.sql"]
    assert "migration_started" not in result.names()

    after = run(db.url, PACS, **NATIVE)
    assert after.code == 0, after.stderr
    assert [e["version"] for e in after.events if e["event"] == "migration_applied"] == [3]
    assert db.table_exists("annotation.masks")
    assert db.scalar("SELECT count(*) FROM security.roles") == 5

    again = run(db.url, PACS, "baseline", "--to", "2", **NATIVE)
    assert again.code == 5
    assert "baseline refused" in again.events[-1]["error"]
    assert len(audit(db)) == 3


def test_baseline_refuses_a_version_without_a_file(db: Db) -> None:
    result = run(db.url, PACS, "baseline", "--to", "30")
    assert result.code == 5
    assert "no migration file has version 30" in result.events[-1]["error"]
    assert not db.table_exists("migration_history")


# --- repair -------------------------------------------------------------------------------


def test_repair_failed_after_a_failed_no_transaction_migration_lets_migrate_finish(
        db: Db, migrations: Files) -> None:
    folder = migrations({
        "1_t.sql": "CREATE TABLE t (id int);",
        "2_idx.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY t_a ON t (id);\n"
                     "CREATE INDEX CONCURRENTLY t_b ON t (nope);\n",
        "3_later.sql": "CREATE TABLE later (id int);",
    })
    assert run(db.url, folder).code == 1
    assert run(db.url, folder).code == 5
    db.execute("DROP INDEX t_a")  # the operator cleans up by hand and fixes the file
    (folder / "2_idx.sql").write_text("-- migrate:no-transaction\n"
                                      "CREATE INDEX CONCURRENTLY t_a ON t (id);\n")
    result = run(db.url, folder, "repair", "--failed")
    assert result.code == 0, result.stderr
    assert result.event("failed_row_cleared")["file"] == "2_idx.sql"
    assert history(db) == [(1, "applied")]
    assert audit(db)[-1] == (2, "repair", True)

    finish = run(db.url, folder)
    assert finish.code == 0, finish.stderr
    assert history(db) == [(1, "applied"), (2, "applied"), (3, "applied")]
    assert db.table_exists("later")


def test_repair_accept_checksums_stores_the_new_checksum(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "2_b.sql": "CREATE TABLE b (id int);"})
    migrated(db, folder)
    (folder / "1_a.sql").write_text("-- reviewed: comment added\nCREATE TABLE a (id int);")
    assert run(db.url, folder).code == 5
    result = run(db.url, folder, "repair", "--accept-checksums")
    assert result.code == 0, result.stderr
    accepted = result.event("checksum_accepted")
    assert accepted["version"] == 1 and accepted["old_checksum"] != accepted["new_checksum"]
    assert db.scalar("SELECT checksum FROM migration_history WHERE version = 1") == \
        accepted["new_checksum"]
    assert db.query("SELECT version, direction, checksum FROM migration_audit "
                    "WHERE direction = 'repair'") == [(1, "repair", accepted["new_checksum"])]
    assert run(db.url, folder).code == 0


def test_repair_needs_to_be_told_what(db: Db, migrations: Files) -> None:
    result = run(db.url, migrations({"1_a.sql": "SELECT 1;"}), "repair")
    assert result.code == 2
    assert "--failed" in result.events[-1]["error"]


# --- new ----------------------------------------------------------------------------------


def test_new_in_an_empty_folder_writes_both_files_with_the_header(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    result = run(None, folder, "new", "add_users")  # no database needed
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [str(folder / "001_add_users.sql"),
                                          str(folder / "001_add_users_rollback.sql")]
    forward = (folder / "001_add_users.sql").read_text()
    assert "-- Purpose:" in forward
    assert "-- Depends on: nothing (first migration)" in forward
    assert "-- Rollback:   001_add_users_rollback.sql" in forward
    assert "undo 001_add_users.sql" in (folder / "001_add_users_rollback.sql").read_text()
    # Header only: it fails validation until someone writes the SQL, on purpose.
    assert run(None, folder, "validate", "--offline").code == 5


def test_new_follows_the_folders_width_and_refuses_to_overwrite(migrations: Files) -> None:
    folder = migrations({"0001_a.sql": "SELECT 1;", "0002_b-c.sql": "SELECT 2;",
                         "0002_b-c_rollback.sql": "SELECT 0;"})
    result = run(None, folder, "new", "add-x_2")
    assert result.code == 0, result.stderr
    assert [Path(p).name for p in result.stdout.split()] == ["0003_add-x_2.sql",
                                                             "0003_add-x_2_rollback.sql"]
    assert "-- Depends on: 0002_b-c.sql" in (folder / "0003_add-x_2.sql").read_text()

    taken = run(None, folder, "new", "--number", "2", "other")
    assert taken.code == 5
    assert "version 2 is already used by 0002_b-c.sql" in taken.events[-1]["error"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "0001_a.sql", "0002_b-c.sql", "0002_b-c_rollback.sql", "0003_add-x_2.sql",
        "0003_add-x_2_rollback.sql"]
    assert (folder / "0002_b-c.sql").read_text() == "SELECT 2;"


@pytest.mark.parametrize("description", ["add users", "add;drop", "undo_rollback", "ünï"])
def test_new_rejects_a_bad_description(migrations: Files, description: str) -> None:
    folder = migrations({"1_a.sql": "SELECT 1;"})
    result = run(None, folder, "new", description)
    assert result.code == 2
    assert [p.name for p in folder.iterdir()] == ["1_a.sql"]


def test_every_command_has_help() -> None:
    for command in ("status", "validate", "rollback", "baseline", "repair", "new"):
        result = run(None, None, command, "--help")
        assert result.code == 0 and f"usage: migration-runner {command}" in result.stdout


@pytest.fixture
def app_db(cluster_with_password: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """The password cluster's `app` database, emptied before and after: the shared
    fixture resets `public` in the `postgres` database, not in `app`."""
    def empty() -> None:
        with psycopg.connect(cluster_with_password[0], autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")

    empty()
    yield cluster_with_password
    empty()


def test_commands_never_show_the_password(app_db: tuple[str, str], migrations: Files) -> None:
    url, password = app_db
    folder = migrations(FOUR)
    outputs = [run(url, folder, *args) for args in (
        ["migrate"], ["status"], ["status", "--json"], ["validate"], ["rollback"],
        ["repair", "--failed"])]
    assert [r.code for r in outputs] == [0] * 6, [r.stderr for r in outputs if r.code]
    wrong = run(url.replace(password, "wrong-" + password), folder, "status",
                MIGRATE_WAIT_TIMEOUT="0")
    assert wrong.code == 3
    for result in [*outputs, wrong]:
        assert password not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [
    ["migrate"], ["migrate", "--dry-run"], ["status"], ["status", "--exit-code"],
    ["validate"], ["validate", "--offline"], ["rollback"], ["rollback", "--dry-run"],
    ["baseline", "--to", "1"], ["repair", "--failed"], ["new", "add_x"],
    ["draft-rollback", "1"],
], ids=" ".join)
@pytest.mark.parametrize("history_format", ["native", "sqlx"])
def test_a_missing_migrations_folder_is_one_error_for_every_command(
        db: Db, tmp_path: Path, args: list[str], history_format: str) -> None:
    missing = tmp_path / "no-such-folder"
    result = run(db.url, missing, *args, MIGRATE_HISTORY_FORMAT=history_format)
    assert result.code == 2, result.stderr
    assert result.events[-1]["error"] == (f"migrations folder {str(missing)!r} cannot be read: "
                                          "No such file or directory; set MIGRATIONS_DIR or --dir")
    assert not missing.exists()
