"""The operator's stuck states and the output a person reads (issue 13, items 11-17),
against a real PostgreSQL: a database built by hand, a no-transaction file finished by
hand, rollback --dry-run, status --exit-code and its permission error, the console log
under a real pseudo-terminal, --help, and messages that name files as they are written."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.session.lock import lock_key
from tests import sqlx_oracle as oracle
from tests.conftest import ROOT, Db, run, runner_cmd, runner_env

Files = Callable[[dict[str, str | bytes]], Path]
SQLX = {"MIGRATE_HISTORY_FORMAT": "sqlx"}


def audit(db: Db) -> list[tuple[Any, ...]]:
    return db.query("SELECT version, direction, success FROM migration_audit ORDER BY id")


# --- 11: a database built by hand ---------------------------------------------------------

BUILT_BY_HAND = [
    # (what psql made, the first migration, its SQLSTATE)
    ("CREATE SCHEMA security", "CREATE SCHEMA security;\nCREATE TABLE security.u (id int);\n",
     "42P06"),
    ("CREATE TABLE users (id int)", "CREATE TABLE users (id int);\n", "42P07"),
    ("CREATE TYPE mood AS ENUM ('ok')", "CREATE TYPE mood AS ENUM ('ok');\n", "42710"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
     "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n", "42723"),
    ("CREATE TABLE t (id int, note text)",
     "-- migrate:no-transaction\nALTER TABLE t ADD COLUMN note text;\n", "42701"),
]


@pytest.mark.parametrize(("by_hand", "first", "sqlstate"), BUILT_BY_HAND,
                         ids=[s for _, _, s in BUILT_BY_HAND])
def test_migrate_on_a_database_built_by_hand_names_baseline(
        db: Db, migrations: Files, tmp_path: Path, by_hand: str, first: str,
        sqlstate: str) -> None:
    db.execute(by_hand)
    folder = migrations({"001_first.sql": first, "002_second.sql": "CREATE TABLE z (id int);"})
    termination = tmp_path / "termination"
    result = run(db.url, folder, MIGRATE_TERMINATION_LOG=str(termination))
    assert result.code == 1
    final = result.event("run_failed")
    assert final["sqlstate"] == sqlstate
    assert "`migration-runner baseline --to V`" in final["error"]
    assert "the last version the database already has" in final["error"]
    assert "baseline --to V" in termination.read_text()
    assert not db.table_exists("z")


def test_baseline_hint_names_the_flags_of_the_format_and_schema(
        db: Db, migrations: Files) -> None:
    db.execute("CREATE TABLE users (id int)")
    folder = migrations({"1_users.up.sql": "CREATE TABLE users (id int);\n"})
    result = run(db.url, folder, "--schema", "ops", **SQLX)
    assert result.code == 1
    assert ("`migration-runner baseline --to V --history-format sqlx --schema ops`"
            in result.event("run_failed")["error"])


def test_no_baseline_hint_once_the_history_has_rows_or_for_other_errors(
        db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    assert run(db.url, folder).code == 0
    db.execute("CREATE TABLE b (id int)")
    (folder / "2_b.sql").write_text("CREATE TABLE b (id int);")
    later = run(db.url, folder)
    assert later.code == 1 and later.event("run_failed")["sqlstate"] == "42P07"
    assert "baseline" not in later.event("run_failed")["error"]


def test_no_baseline_hint_for_an_error_other_than_already_exists(
        db: Db, migrations: Files) -> None:
    result = run(db.url, migrations({"1_a.sql": "CREATE TABLE a (id nope);"}))
    assert result.code == 1 and "baseline" not in result.event("run_failed")["error"]


# --- 12: a no-transaction migration finished by hand --------------------------------------

HALF = {
    "1_t.sql": "CREATE TABLE t (id int, a int, b int);",
    "2_idx.sql": "-- migrate:no-transaction\n"
                 "CREATE INDEX CONCURRENTLY t_a ON t (a);\n"
                 "CREATE INDEX CONCURRENTLY t_b ON t (b);\n"
                 "CREATE INDEX CONCURRENTLY t_c ON t (nope);\n",
    "3_later.sql": "CREATE TABLE later (id int);",
}


def test_failed_no_transaction_file_says_which_statements_completed(
        db: Db, migrations: Files) -> None:
    result = run(db.url, migrations(HALF))
    assert result.code == 1
    failed = result.event("migration_failed")
    assert (failed["completed"], failed["statements"], failed["line"]) == (2, 3, 4)
    error = result.event("run_failed")["error"]
    assert "statements completed before it: 2 of 3" in error
    assert "repair --mark-applied 2" in error


def test_repair_mark_applied_records_a_hand_finished_migration(
        db: Db, migrations: Files) -> None:
    folder = migrations(HALF)
    assert run(db.url, folder).code == 1
    db.execute("CREATE INDEX t_c ON t (id)")  # the operator finishes the file by hand
    (folder / "2_idx.sql").write_text(HALF["2_idx.sql"].replace("(nope)", "(id)"))
    result = run(db.url, folder, "repair", "--mark-applied", "2")
    assert result.code == 0, result.stderr
    assert result.event("failed_row_marked_applied")["file"] == "2_idx.sql"
    assert db.query("SELECT version, status, checksum FROM migration_history "
                    "WHERE version = 2") == [
        (2, "applied", result.event("failed_row_marked_applied")["checksum"])]
    assert audit(db)[-1] == (2, "repair", True)

    finish = run(db.url, folder)
    assert finish.code == 0, finish.stderr
    assert [e["version"] for e in finish.events if e["event"] == "migration_applied"] == [3]


@pytest.mark.parametrize("version", ["1", "2", "9"])
def test_repair_mark_applied_refuses_a_version_that_is_not_failed(
        db: Db, migrations: Files, version: str) -> None:
    folder = migrations({**HALF, "2_idx.sql": HALF["2_idx.sql"].replace("(nope)", "(id)")})
    assert run(db.url, folder, "--to", "1").code == 0  # 1 applied, 2 pending, 9 unknown
    before = db.query("SELECT * FROM migration_history ORDER BY version")
    result = run(db.url, folder, "repair", "--mark-applied", version)
    assert result.code == 5
    assert f"--mark-applied {version} refused" in result.event("run_failed")["error"]
    assert db.query("SELECT * FROM migration_history ORDER BY version") == before
    assert [r for r in audit(db) if r[1] == "repair"] == []


def test_repair_mark_applied_in_the_sqlx_format_satisfies_the_app(
        db: Db, migrations: Files) -> None:
    folder = migrations({
        "1_a.sql": "CREATE TABLE a (id int);\n",
        "2_idx.sql": "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON a (nope);\n"})
    assert run(db.url, folder, **SQLX).code == 1
    db.execute("CREATE INDEX i ON a (id)")
    (folder / "2_idx.sql").write_text("-- no-transaction\nCREATE INDEX CONCURRENTLY i ON a (id);\n")
    refused = run(db.url, folder, "repair", "--mark-applied", "1", **SQLX)
    assert refused.code == 5
    result = run(db.url, folder, "repair", "--mark-applied", "2", **SQLX)
    assert result.code == 0, result.stderr
    assert db.query("SELECT version, success FROM _sqlx_migrations ORDER BY 1") == [
        (1, True), (2, True)]
    assert oracle.run(db.url, folder) == []  # the app's sqlx accepts the row and checksum
    assert run(db.url, folder, **SQLX).code == 0
    assert audit(db)[-1] == (2, "repair", True)


# --- 13: rollback --dry-run ---------------------------------------------------------------

FOUR: dict[str, str | bytes] = {
    "001_item.sql": "CREATE TABLE item (id int PRIMARY KEY);\n",
    "001_item_rollback.sql": "DROP TABLE item;\n",
    "002_seed.sql": "INSERT INTO item VALUES (1);\n",
    "002_seed_rollback.sql": "DELETE FROM item WHERE id = 1;\nSELECT 1;\n",
    "003_idx.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY item_idx ON item (id);\n",
    "003_idx_rollback.sql": "-- migrate:no-transaction\nDROP INDEX CONCURRENTLY item_idx;\n",
}


def test_rollback_dry_run_prints_the_plan_and_changes_nothing(
        db: Db, migrations: Files) -> None:
    folder = migrations(FOUR)
    assert run(db.url, folder).code == 0
    history = db.query("SELECT * FROM migration_history ORDER BY version")
    audit_rows = audit(db)
    with db.connect() as holder:  # a runner holds the lock: a dry run does not wait for it
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(db.name, "public"),))
        result = run(db.url, folder, "rollback", "--to", "1", "--dry-run",
                     MIGRATE_LOCK_TIMEOUT="0")
    assert result.code == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines == [["003_idx_rollback.sql", "no-transaction", "1", "statement"],
                     ["002_seed_rollback.sql", "transaction", "2", "statements"]]
    assert db.query("SELECT * FROM migration_history ORDER BY version") == history
    assert audit(db) == audit_rows
    assert db.table_exists("item") and db.scalar("SELECT count(*) FROM item") == 1
    assert "rollback_started" not in result.names()


def test_rollback_dry_run_refuses_what_rollback_refuses(db: Db, migrations: Files) -> None:
    folder = migrations({k: v for k, v in FOUR.items() if k != "002_seed_rollback.sql"})
    nothing = run(db.url, folder, "rollback", "--dry-run")
    assert nothing.code == 0 and nothing.stdout == "nothing to roll back\n"
    assert not db.table_exists("migration_history")
    assert run(db.url, folder).code == 0
    result = run(db.url, folder, "rollback", "--steps", "2", "--dry-run")
    assert result.code == 5
    assert "002_seed.sql: no rollback file" in result.event("run_failed")["error"]
    assert result.stdout == ""


# --- 14: status --exit-code and a role that may not read the history ----------------------


def test_status_exit_code_tells_ci_what_migrate_would_do(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    assert run(db.url, folder, "status", "--exit-code").code == 6  # pending
    assert run(db.url, folder, "status").code == 0  # without the flag: always 0
    assert run(db.url, folder).code == 0
    assert run(db.url, folder, "status", "--exit-code").code == 0  # nothing to do
    (folder / "1_a.sql").write_text("CREATE TABLE a (id bigint);")
    changed = run(db.url, folder, "status", "--exit-code", "--json")
    assert changed.code == 5 and json.loads(changed.stdout)["summary"]["changed"] == 1
    (folder / "1_a.sql").write_text("CREATE TABLE a (id int);")
    db.execute("UPDATE migration_history SET status = 'failed'")
    assert run(db.url, folder, "status", "--exit-code").code == 5  # failed


@pytest.mark.parametrize("grant", ["GRANT USAGE ON SCHEMA ops TO {role}", ""],
                         ids=["no SELECT on the table", "no USAGE on the schema"])
def test_status_without_select_on_the_history_is_a_configuration_error(
        db: Db, migrations: Files, grant: str) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    assert run(db.url, folder, "--schema", "ops").code == 0
    reader = f"noread_{db.name}"
    db.execute(f'CREATE ROLE "{reader}" LOGIN')
    if grant:
        db.execute(grant.format(role=f'"{reader}"'))
    result = run(db.cluster.url(db.name, user=reader), folder, "status", "--schema", "ops",
                 "--json")
    assert result.code == 2, result.stderr
    assert result.stdout == ""
    error = result.event("run_failed")["error"]
    assert '"ops"."migration_history"' in error
    assert f'GRANT SELECT ON "ops"."migration_history" TO "{reader}"' in error
    assert result.event("run_failed")["sqlstate"] == "42501"


# --- 15: the console log, under a real pseudo-terminal ------------------------------------


def on_a_terminal(db: Db | None, folder: Path | None, *args: str,
                  **env: str) -> tuple[int, str]:
    """Run with stdout and stderr on one pseudo-terminal, as a person sees it; no
    MIGRATE_LOG_FORMAT, so the runner picks console itself."""
    controller, terminal = pty.openpty()
    environ = runner_env(db.url if db else None, folder, NO_COLOR="1", **env)
    del environ["MIGRATE_LOG_FORMAT"]
    proc = subprocess.Popen(runner_cmd(*args), env=environ, stdin=subprocess.DEVNULL,
                            stdout=terminal, stderr=terminal, cwd=ROOT)
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process closed the terminal and it is drained
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    return proc.wait(timeout=10), out.decode().replace("\r\n", "\n")


def test_console_shows_each_validation_problem_once(migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "2_b.sql": "SELEC 1;", "3_c.sql": "CREATE TABLE (;",
                         "04_bad name.sql": "SELECT 1;"})
    code, screen = on_a_terminal(None, folder, "validate", "--offline")
    assert code == 5
    problems = run(None, folder, "validate", "--offline").event("run_failed")["problems"]
    assert len(problems) >= 3
    for problem in problems:
        assert screen.count(problem) == 1, screen
    assert "problems=" not in screen and "['" not in screen


def test_console_lists_problems_of_a_refused_migrate_one_per_line(
        db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "SELEC 1;", "2_b.sql": "CREATE TABLE (;"})
    code, screen = on_a_terminal(db, folder, "migrate")
    assert code == 5
    lines = screen.splitlines()
    for problem in run(None, folder, "validate", "--offline").event("run_failed")["problems"]:
        assert screen.count(problem) == 1
        assert f"    {problem}" in lines
    assert "['" not in screen


def test_console_verify_drift_is_readable_lines(db: Db, migrations: Files,
                                                 tmp_path: Path) -> None:
    assert run(db.url, migrations({"1_a.sql": "CREATE TABLE a (id int NOT NULL);"})).code == 0
    snapshot = tmp_path / "schema.json"
    assert run(db.url, None, "verify", "--report-schema", "public",
               "--write", str(snapshot)).code == 0
    db.execute("ALTER TABLE a ALTER COLUMN id DROP NOT NULL; CREATE TABLE extra (n text)")
    code, screen = on_a_terminal(db, None, "verify", "--expect", str(snapshot))
    assert code == 5
    assert screen.count("~ column public.a.id: integer NOT NULL -> integer") == 1
    assert screen.count("+ table public.extra not in the snapshot (columns n text)") == 1
    assert "{'" not in screen and "['" not in screen
    assert "schema drift from" in screen


def test_console_status_shows_the_table_without_log_lines(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    code, screen = on_a_terminal(db, folder, "status")
    assert code == 0
    assert screen.splitlines()[0].split()[:3] == ["VERSION", "NAME", "STATE"]
    assert "db_connected" not in screen and "status_read" not in screen
    assert "history_format" not in screen
    # JSON logs, for machines, stay complete.
    assert run(db.url, folder, "status").names() == ["db_connected", "history_format",
                                                     "status_read"]
    _, debug = on_a_terminal(db, folder, "status", MIGRATE_LOG_LEVEL="debug")
    assert "db_connected" in debug


# --- 16: --help and the verify option ------------------------------------------------------


@pytest.mark.parametrize(("command", "own"), [("rollback", "--dry-run"),
                                              ("status", "--exit-code"),
                                              ("repair", "--mark-applied"),
                                              ("verify", "--report-schema")])
def test_help_shows_own_options_first_then_settings_with_defaults(
        command: str, own: str) -> None:
    result = run(None, None, command, "--help")
    assert result.code == 0
    text = result.stdout
    usage = text.split("\n\n")[0]
    assert own in usage and "--database-url" not in usage and usage.endswith("[SETTINGS]")
    settings = text.index("settings (each also an environment variable)")
    assert text.index(own) < settings < text.index("--database-url")
    assert "MIGRATE_WAIT_TIMEOUT, default 60s" in " ".join(text[settings:].split())
    assert "MIGRATE_SCHEMA, default public" in " ".join(text[settings:].split())


def test_verify_report_schema_and_its_old_name(db: Db) -> None:
    db.execute("CREATE SCHEMA app; CREATE TABLE app.t (id int); CREATE TABLE other (id int)")
    new = run(db.url, None, "verify", "--report-schema", "app")
    assert new.code == 0, new.stderr
    assert list(json.loads(new.stdout)["schemas"]) == ["app"]
    assert "--schema-name" not in run(None, None, "verify", "--help").stdout
    old = run(db.url, None, "verify", "--schema-name", "app")
    assert old.code == 0 and json.loads(old.stdout) == json.loads(new.stdout)
    assert old.event("option_renamed")["use"] == "--report-schema"


# --- 17: names as written, plurals ---------------------------------------------------------


def test_messages_name_versions_as_in_the_file(db: Db, migrations: Files) -> None:
    folder = migrations({"007_a.sql": "CREATE TABLE a (id int);",
                         "008_slow_backfill.sql": "-- migrate:no-transaction\n"
                                                  "CREATE INDEX CONCURRENTLY i ON a (nope);\n",
                         "009_c.sql": "CREATE TABLE c (id int);"})
    assert run(db.url, folder).code == 1
    refused = run(db.url, folder)
    assert refused.code == 5
    error = refused.event("run_failed")["error"]
    assert error.startswith("008_slow_backfill.sql: failed part-way")
    assert "8_slow" not in error.replace("008_slow", "")
    rollback = run(db.url, folder, "rollback")
    assert "008_slow_backfill.sql: failed part-way" in rollback.event("run_failed")["error"]

    (folder / "008_slow_backfill.sql").unlink()  # the file is gone: only the history's words
    gone = run(db.url, folder)
    assert "version 8 (slow_backfill): failed part-way" in gone.event("run_failed")["error"]
    status = json.loads(run(db.url, folder, "status", "--json").stdout)
    assert [m["name"] for m in status["migrations"] if m["version"] == 8] == [
        "version 8 (slow_backfill)"]
    cleared = run(db.url, folder, "repair", "--failed")
    assert cleared.code == 0, cleared.stderr
    assert cleared.event("failed_row_cleared")["name"] == "version 8 (slow_backfill)"


def test_messages_count_in_the_singular_when_there_is_one(
        db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "2_b.sql": "CREATE TABLE b (id int);"})
    assert run(None, folder, "validate", "--offline").stdout == (
        "ok: 2 migrations, 0 rollback files\n")
    plan = run(db.url, folder, "--dry-run", "--to", "1")
    assert plan.stdout.split() == ["1_a.sql", "transaction", "1", "statement"]
    assert run(db.url, folder, "--to", "1").code == 0
    (folder / "1_a.sql").rename(folder / "1_a.sql.off")  # v1 applied, no file; v2 pending
    divergent = run(db.url, folder)
    assert divergent.code == 5
    assert "version 1 is applied but has no file here" in divergent.event("run_failed")["error"]
    (folder / "2_b_rollback.sql").write_text("DROP TABLE b;")
    assert run(None, folder, "validate", "--offline").stdout == (
        "ok: 1 migration, 1 rollback file\n")
    baseline = run(db.url, folder, "baseline", "--to", "2")
    assert "already has 1 row (" in baseline.event("run_failed")["error"]
