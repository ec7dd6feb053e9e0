"""`migrate` against a real PostgreSQL: database state, exit codes and log events."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Db, run

Files = Callable[[dict[str, str | bytes]], Path]

THREE = {
    "001_create.sql": "-- purpose: table\nBEGIN;\nCREATE TABLE item (id int PRIMARY KEY);\n"
                      "COMMIT;\n",
    "001_create_rollback.sql": "DROP TABLE item;\n",
    "002_seed.sql": "INSERT INTO item VALUES (1), (2);\n",
    "003_index.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY item_id ON item (id);\n",
}


def user_tables(db: Db, schema: str = "public") -> set[str]:
    rows = db.query("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
    return {r[0] for r in rows} - {"migration_history", "migration_audit"}


def test_applies_in_order_records_history_and_audit_then_is_a_no_op(
        db: Db, migrations: Files) -> None:
    folder = migrations(THREE)
    first = run(db.url, folder)
    assert first.code == 0, first.stderr
    assert db.scalar("SELECT count(*) FROM item") == 2
    assert db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'item_id'::regclass")
    history = db.query("SELECT version, description, status, applied_by, length(checksum) "
                       "FROM migration_history ORDER BY version")
    assert history == [(1, "create", "applied", "postgres", 64),
                       (2, "seed", "applied", "postgres", 64),
                       (3, "index", "applied", "postgres", 64)]
    audit = db.query("SELECT version, direction, success, client_host IS NOT NULL "
                     "FROM migration_audit ORDER BY id")
    assert audit == [(1, "up", True, True), (2, "up", True, True), (3, "up", True, True)]
    applied = [e for e in first.events if e["event"] == "migration_applied"]
    assert [(e["version"], e["name"], e["file"]) for e in applied] == [
        (1, "001_create", "001_create.sql"), (2, "002_seed", "002_seed.sql"),
        (3, "003_index", "003_index.sql")]
    assert all(isinstance(e["duration_ms"], int) for e in applied)
    complete = first.event("migrations_complete")
    assert (complete["applied"], complete["pending_before"]) == (3, 3)
    for event in first.events:
        assert event["timestamp"].endswith("Z") and event["level"]
    assert first.stdout == ""  # stdout is for results only

    again = run(db.url, folder)
    assert again.code == 0, again.stderr
    assert "migration_applied" not in again.names()
    assert again.event("migrations_complete")["applied"] == 0
    assert db.scalar("SELECT count(*) FROM migration_audit") == 3
    # Nothing to do: the history is read on the lock connection, no work connection opens.
    assert [e["purpose"] for e in again.events if e["event"] == "db_connected"] == ["lock"]


def test_sql_error_mid_file_leaves_nothing_and_names_the_line(
        db: Db, migrations: Files, tmp_path: Path) -> None:
    term = tmp_path / "termination-log"
    folder = migrations({
        "001_ok.sql": "CREATE TABLE ok (id int);\n",
        "002_bad.sql": "BEGIN;\r\nCREATE TABLE half (id int);\r\nINSERT INTO half VALUES (1);\r\n"
                       "INSERT INTO half VALUES (1, 'x', missing_column);\r\nCOMMIT;\r\n",
        "003_later.sql": "CREATE TABLE later (id int);\n",
    })
    result = run(db.url, folder, MIGRATE_TERMINATION_LOG=str(term))
    assert result.code == 1
    assert user_tables(db) == {"ok"}
    assert db.query("SELECT version, status FROM migration_history") == [(1, "applied")]
    failed = result.event("migration_failed")
    assert (failed["file"], failed["line"], failed["sqlstate"]) == ("002_bad.sql", 4, "42703")
    assert failed["column"] == len("INSERT INTO half VALUES (1, 'x', ") + 1
    assert (failed["version"], failed["name"]) == (2, "002_bad")
    assert failed["message"] == 'column "missing_column" does not exist'
    assert db.query("SELECT version, success, error_message IS NOT NULL FROM migration_audit "
                    "WHERE NOT success") == [(2, False, True)]
    assert result.events[-1]["level"] == "error" and result.events[-1]["exit_code"] == 1
    message = term.read_text()
    assert message.startswith("002_bad.sql:4:") and message.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_runtime_error_without_position_reports_statement_line(db: Db, migrations: Files) -> None:
    folder = migrations({"001_div.sql": "CREATE TABLE a (id int);\n\n  SELECT 1 / 0;\n"})
    result = run(db.url, folder)
    assert result.code == 1
    failed = result.event("migration_failed")
    assert (failed["line"], failed["column"], failed["sqlstate"]) == (3, 3, "22012")
    assert user_tables(db) == set()


BAD_FILES: dict[str, dict[str, str | bytes]] = {
    "bad_name": {"1_ok.sql": "SELECT 1;", "initial.sql": "SELECT 1;"},
    "duplicate_version": {"1_a.sql": "SELECT 1;", "01_b.sql": "SELECT 1;"},
    "rollback_without_forward": {"1_ok.sql": "SELECT 1;", "2_gone_rollback.sql": "SELECT 1;"},
    "not_utf8": {"1_ok.sql": "SELECT 1;", "2_latin1.sql": b"SELECT 'caf\xe9';"},
    "empty": {"1_ok.sql": "SELECT 1;", "2_empty.sql": "\n  \n"},
    "comment_only": {"1_ok.sql": "SELECT 1;", "2_comment.sql": "-- TODO\n"},
    "commit_in_middle": {"1_ok.sql": "SELECT 1;", "2_mid.sql": "SELECT 1;\nCOMMIT;\nSELECT 2;"},
    "concurrently_in_transaction": {"1_ok.sql": "CREATE TABLE t (id int);",
                                    "2_cic.sql": "CREATE INDEX CONCURRENTLY i ON t (id);"},
    "syntax": {"1_ok.sql": "SELECT 1;", "2_syntax.sql": "CREATE TABLE (;"},
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_exit_5_name_the_file_and_apply_nothing(
        db: Db, migrations: Files, case: str) -> None:
    content = {"0_first.sql": "CREATE TABLE first (id int);", **BAD_FILES[case]}
    result = run(db.url, migrations(content))
    assert result.code == 5, result.stderr
    bad = [n for n in BAD_FILES[case] if not n.startswith("1_ok")]
    final = result.events[-1]
    assert final["event"] == "run_failed" and final["level"] == "error"
    assert any(bad[0] in p for p in final["problems"]), final
    assert user_tables(db) == set()
    if db.table_exists("migration_history"):
        assert db.scalar("SELECT count(*) FROM migration_history") == 0


def test_name_problems_are_found_before_connecting(migrations: Files) -> None:
    result = run("postgresql://nobody@127.0.0.1:1/none", migrations({"x.sql": "SELECT 1;"}),
                 MIGRATE_WAIT_TIMEOUT="0")
    assert result.code == 5
    assert "db_connected" not in result.names() and "db_wait_retry" not in result.names()


def test_changed_checksum_exit_5_shows_both(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    assert run(db.url, folder).code == 0
    old = db.scalar("SELECT checksum FROM migration_history")
    (folder / "1_a.sql").write_text("CREATE TABLE a (id bigint);")
    (folder / "2_b.sql").write_text("CREATE TABLE b (id int);")
    result = run(db.url, folder)
    assert result.code == 5
    problem = result.events[-1]["problems"][0]
    assert "1_a.sql: changed" in problem and old in problem
    assert not db.table_exists("b")


def test_crlf_checkout_is_not_an_edit(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);\nSELECT 1;\n"})
    assert run(db.url, folder).code == 0
    (folder / "1_a.sql").write_bytes(b"\xef\xbb\xbfCREATE TABLE a (id int);\r\nSELECT 1;\r\n")
    assert run(db.url, folder).code == 0


def test_database_ahead_warns_and_strict_refuses(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "2_b.sql": "CREATE TABLE b (id int);"})
    assert run(db.url, folder).code == 0
    (folder / "2_b.sql").unlink()  # an older image after a newer one ran
    result = run(db.url, folder)
    assert result.code == 0
    assert result.event("database_ahead")["versions"] == [2]
    assert run(db.url, folder, "--strict").code == 5
    assert run(db.url, folder, MIGRATE_STRICT="yes").code == 5


def test_divergent_history_exit_5(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "2_b.sql": "CREATE TABLE b (id int);"})
    assert run(db.url, folder).code == 0
    (folder / "2_b.sql").unlink()
    (folder / "3_c.sql").write_text("CREATE TABLE c (id int);")
    result = run(db.url, folder)
    assert result.code == 5
    assert "divergent" in result.events[-1]["error"]
    assert not db.table_exists("c")


def test_out_of_order_refused_unless_allowed(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "3_c.sql": "CREATE TABLE c (id int);"})
    assert run(db.url, folder).code == 0
    (folder / "2_b.sql").write_text("CREATE TABLE b (id int);")
    result = run(db.url, folder)
    assert result.code == 5
    assert "2_b.sql: pending but older than applied version 3" in result.events[-1]["error"]
    assert not db.table_exists("b")
    assert run(db.url, folder, "--allow-out-of-order").code == 0
    assert db.table_exists("b")


def test_failed_no_transaction_migration_blocks_later_runs(db: Db, migrations: Files) -> None:
    folder = migrations({
        "1_t.sql": "CREATE TABLE t (id int);",
        "2_idx.sql": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY t_a ON t (id);\n"
                     "CREATE INDEX CONCURRENTLY t_b ON t (nope);\n",
        "3_later.sql": "CREATE TABLE later (id int);",
    })
    result = run(db.url, folder)
    assert result.code == 1
    failed = result.event("migration_failed")
    assert (failed["file"], failed["line"], failed["partial"]) == ("2_idx.sql", 3, True)
    assert db.query("SELECT version, status FROM migration_history ORDER BY version") == [
        (1, "applied"), (2, "failed")]
    assert db.scalar("SELECT to_regclass('t_a') IS NOT NULL")  # part-way: the first index
    again = run(db.url, folder)
    assert again.code == 5
    assert "repair --failed" in again.events[-1]["error"]
    assert not db.table_exists("later")


def test_run_migrations_false_skips_without_connecting(migrations: Files) -> None:
    result = run("postgresql://nobody@127.0.0.1:1/none", migrations({"1_a.sql": "SELECT 1;"}),
                 RUN_MIGRATIONS="off")
    assert result.code == 0
    assert result.names() == ["migrations_skipped"]


def test_custom_schema_with_odd_name(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    result = run(db.url, folder, "--schema", 'Ops "Book"; x')
    assert result.code == 0, result.stderr
    assert db.scalar('SELECT count(*) FROM "Ops ""Book""; x".migration_history') == 1
    assert not db.table_exists("public.migration_history")


def test_dry_run_changes_nothing_and_prints_plan(db: Db, migrations: Files) -> None:
    folder = migrations(THREE)
    result = run(db.url, folder, "--dry-run")  # no command: migrate
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["001_create.sql", "transaction", "1", "statement"]
    assert lines[2].split() == ["003_index.sql", "no-transaction", "1", "statement"]
    assert not db.table_exists("migration_history") and user_tables(db) == set()


def test_to_stops_after_version(db: Db, migrations: Files) -> None:
    result = run(db.url, migrations(THREE), "migrate", "--to", "2")
    assert result.code == 0, result.stderr
    assert db.query("SELECT version FROM migration_history ORDER BY 1") == [(1,), (2,)]


@pytest.mark.parametrize(("env", "variable"), [
    ({"MIGRATE_WAIT_TIMEOUT": "soon"}, "MIGRATE_WAIT_TIMEOUT"),
    ({"MIGRATE_STRICT": "maybe"}, "MIGRATE_STRICT"),
    ({"MIGRATE_DDL_LOCK_RETRIES": "-1"}, "MIGRATE_DDL_LOCK_RETRIES"),
    ({"MIGRATE_LOG_LEVEL": "loud"}, "MIGRATE_LOG_LEVEL"),
    ({"DATABASE_URL_FILE": "/nonexistent/secret"}, "DATABASE_URL_FILE"),
    ({"DATABASE_URL": "postgresql://u:hunter2@h:notaport/db"}, "DATABASE_URL"),
])
def test_configuration_errors_exit_2_and_name_the_variable(
        migrations: Files, tmp_path: Path, env: dict[str, str], variable: str) -> None:
    term = tmp_path / "term"
    folder = migrations({"1_a.sql": "SELECT 1;"})
    result = run(None, folder, MIGRATE_TERMINATION_LOG=str(term), **env)
    assert result.code == 2, result.stderr
    assert variable in result.events[-1]["error"]
    assert variable in term.read_text()
    assert "hunter2" not in result.stderr + result.stdout + term.read_text()
    assert "Traceback" not in result.stderr


def test_bad_flag_is_a_usage_error(migrations: Files) -> None:
    result = run(None, migrations({"1_a.sql": "SELECT 1;"}), "migrate", "--frobnicate")
    assert result.code == 2
    assert "--frobnicate" in result.events[-1]["error"]


def test_flag_wins_over_environment_and_url_file_works(
        db: Db, migrations: Files, tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text(f"\n  {db.url}  \n")
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    result = run(None, tmp_path / "nowhere", "--dir", str(folder),
                 DATABASE_URL_FILE=str(secret), MIGRATE_LOG_LEVEL="info")
    assert result.code == 0, result.stderr
    assert db.table_exists("a")
    both = run(db.url, folder, DATABASE_URL_FILE=str(secret))
    assert both.code == 2


def test_password_never_logged(cluster_with_password: tuple[str, str], migrations: Files) -> None:
    url, password = cluster_with_password
    result = run(url, migrations({"1_a.sql": "CREATE TABLE a (id int);"}))
    assert result.code == 0, result.stderr
    assert password not in result.stderr + result.stdout
    assert result.event("db_connected")["target"].startswith("postgresql://app@127.0.0.1:")


def test_version_and_help() -> None:
    version = run(None, None, "--version")
    assert version.code == 0 and version.stdout.startswith("migration-runner ")
    for args in (["--help"], ["migrate", "--help"], ["validate", "--help"]):
        result = run(None, None, *args)
        assert result.code == 0 and "usage: migration-runner" in result.stdout
