"""One history wherever the app keeps it (SPEC §8): MIGRATE_HISTORY_FORMAT=auto, sqlx's
table found through the search_path, sqlx's session parameters, sqlx's down files, and
advice in sqlx's spelling. The app is tests/sqlx_oracle.py, as in test_sqlx.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests import sqlx_oracle as oracle
from tests.conftest import Db, Result, run
from tests.pg import Cluster
from tests.test_sqlx import APP

Files = Callable[[dict[str, str | bytes]], Path]
NATIVE = {"MIGRATE_HISTORY_FORMAT": "native"}
SQLX = {"MIGRATE_HISTORY_FORMAT": "sqlx"}
FIRST = {"001_users.up.sql": "CREATE TABLE users (id int PRIMARY KEY);\n",
         "001_users.down.sql": "DROP TABLE users;\n"}
SECOND = {"002_posts.up.sql": "CREATE TABLE posts (id int PRIMARY KEY);\n",
          "002_posts.down.sql": "DROP TABLE posts;\n"}


@pytest.fixture
def db2(cluster: Cluster, db: Db) -> Db:
    name = db.name + "_b"
    with cluster.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return Db(cluster, name)


def applied(result: Result) -> list[int]:
    return [e["version"] for e in result.events if e["event"] == "migration_applied"]


def sqlx_tables(db: Db) -> list[str]:
    return [r[0] for r in db.query("SELECT relnamespace::regnamespace::text FROM pg_class "
                                   "WHERE relname = '_sqlx_migrations' ORDER BY 1")]


def relations(db: Db) -> set[str]:
    return {r[0] for r in db.query("SELECT oid::regclass::text FROM pg_class WHERE relkind = "
                                   "'r' AND relnamespace <> 'pg_catalog'::regnamespace "
                                   "AND relnamespace <> 'information_schema'::regnamespace")}


# --- A: auto ----------------------------------------------------------------------------


def test_forgetting_the_setting_on_an_empty_database_starts_the_apps_history(
        db: Db, migrations: Files) -> None:
    folder = migrations(APP)
    result = run(db.url, folder)
    assert result.code == 0, result.stderr
    chosen = result.event("history_format")
    assert chosen["format"] == "sqlx" and ".up.sql / .down.sql" in chosen["reason"]
    assert not db.table_exists("public.migration_history")
    assert db.scalar("SELECT count(*) FROM _sqlx_migrations") == 4
    assert oracle.run(db.url, folder) == []  # the app re-applies nothing


def test_a_plain_folder_follows_the_history_the_database_holds(
        db: Db, db2: Db, migrations: Files) -> None:
    """Plain `.sql` files are read by both formats: the app's history decides, and on an
    empty database the native one."""
    folder = migrations({"1_users.sql": "CREATE TABLE users (id int);\n"})
    assert oracle.run(db.url, folder) == [1]
    (folder / "2_posts.sql").write_text("CREATE TABLE posts (id int);\n")
    result = run(db.url, folder)
    assert result.code == 0, result.stderr
    assert result.event("history_format")["format"] == "sqlx"
    assert applied(result) == [2]
    assert not db.table_exists("public.migration_history")
    assert oracle.run(db.url, folder) == []

    fresh = run(db2.url, folder)
    assert fresh.code == 0, fresh.stderr
    assert fresh.event("history_format")["format"] == "native"
    assert db2.scalar("SELECT count(*) FROM migration_history") == 2


def _native_history_and_up_files(db: Db, folder: Path) -> None:
    assert run(db.url, folder, **NATIVE).code == 0


def _both_histories(db: Db, folder: Path) -> None:
    assert run(db.url, folder, **NATIVE).code == 0
    db.execute("CREATE SCHEMA app")
    db.execute("ALTER DATABASE " + db.name + " SET search_path = app, public")
    assert oracle.run(db.url, folder) != []


def _app_history_and_rollback_files(db: Db, folder: Path) -> None:
    assert oracle.run(db.url, folder) == [1, 2]
    for version, name in ((1, "users"), (2, "posts")):
        (folder / f"00{version}_{name}.down.sql").rename(
            folder / f"00{version}_{name}_rollback.sql")
        (folder / f"00{version}_{name}.up.sql").rename(folder / f"00{version}_{name}.sql")


@pytest.mark.parametrize("setup", [_native_history_and_up_files, _both_histories,
                                   _app_history_and_rollback_files],
                         ids=["native history, .up.sql files", "both histories",
                              "app history, _rollback.sql files"])
def test_auto_refuses_what_it_cannot_decide(db: Db, migrations: Files,
                                            setup: Callable[[Db, Path], None]) -> None:
    folder = migrations({**FIRST, **SECOND})
    setup(db, folder)
    before = relations(db)
    for command in (["migrate"], ["status"], ["validate"], ["rollback"],
                    ["baseline", "--to", "1"]):
        result = run(db.url, folder, *command)
        assert result.code == 5, (command, result.stderr)
        error = result.event("run_failed")["error"]
        assert "history format refused" in error and "MIGRATE_HISTORY_FORMAT" in error
        assert "history_format" not in result.names()
    assert relations(db) == before


def test_the_fix_for_a_native_history_under_up_files_works_when_followed(
        db: Db, migrations: Files) -> None:
    folder = migrations({**FIRST, **SECOND})
    _native_history_and_up_files(db, folder)
    refused = run(db.url, folder)
    fix = "migration-runner baseline --to 2 --history-format sqlx"
    assert f"`{fix}`" in refused.event("run_failed")["error"]
    assert run(db.url, folder, *fix.split()[1:]).code == 0
    after = run(db.url, folder)
    assert after.code == 0, after.stderr
    assert after.event("history_format")["format"] == "sqlx" and applied(after) == []
    assert oracle.run(db.url, folder) == []


def test_offline_commands_decide_from_the_folder(migrations: Files) -> None:
    folder = migrations({**FIRST})
    checked = run(None, folder, "validate", "--offline")
    assert checked.code == 0, checked.stderr
    assert checked.event("history_format")["format"] == "sqlx"
    # sqlx's own rules apply: a `_rollback.sql` file would be a second migration.
    (folder / "001_users.up.sql").rename(folder / "001_users.sql")
    (folder / "001_users.down.sql").rename(folder / "001_users_rollback.sql")
    native = run(None, folder, "validate", "--offline")
    assert native.code == 0 and native.event("history_format")["format"] == "native"
    refused = run(None, folder, "validate", "--offline", **SQLX)
    assert refused.code == 5 and "001_users_rollback.sql: sqlx applies it" in refused.stdout


def test_new_writes_the_apps_layout_in_an_empty_folder_when_told_sqlx(
        migrations: Files) -> None:
    folder = migrations({})
    made = run(None, folder, "new", "add_users", **SQLX)
    assert made.code == 0, made.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["001_add_users.down.sql",
                                                        "001_add_users.up.sql"]


# --- B: where the app's search_path finds its table ----------------------------------------


def _role(db: Db, path: str) -> tuple[str, str]:
    """A login role whose session's search_path is set as `path` says; (role, schema the
    app's table lands in)."""
    role = f"app_{db.name}"
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    if path == "role":
        db.execute(f'CREATE SCHEMA pacs AUTHORIZATION "{role}"')
        db.execute(f'ALTER ROLE "{role}" SET search_path = pacs')
        return role, "pacs"
    if path == "database":
        db.execute(f'CREATE SCHEMA pacs AUTHORIZATION "{role}"')
        db.execute(f'ALTER DATABASE "{db.name}" SET search_path = pacs, public')
        return role, "pacs"
    db.execute(f'CREATE SCHEMA "{role}" AUTHORIZATION "{role}"')  # "$user", public
    return role, role


@pytest.mark.parametrize("setting", [{}, SQLX], ids=["auto", "sqlx"])
@pytest.mark.parametrize("path", ["role", "database", "$user"])
def test_the_runner_finds_the_apps_table_through_the_search_path(
        db: Db, migrations: Files, path: str, setting: dict[str, str]) -> None:
    role, schema = _role(db, path)
    url = db.cluster.url(db.name, user=role)
    folder = migrations({**FIRST})
    assert oracle.run(url, folder) == [1]
    migrations({**SECOND})

    status = run(url, folder, "status", "--json", **setting)
    assert status.code == 0, status.stderr
    assert '"applied": 1' in status.stdout and '"pending": 1' in status.stdout
    result = run(url, folder, **setting)
    assert result.code == 0, result.stderr
    assert applied(result) == [2]
    chosen = result.event("history_format")
    assert (chosen["format"], chosen["schema"]) == ("sqlx", schema)
    assert sqlx_tables(db) == [schema]
    assert oracle.run(url, folder) == []
    assert db.scalar(f'SELECT count(*) FROM "{schema}".posts') == 0


def test_a_history_behind_the_first_schema_of_the_path_is_used_and_warned(
        db: Db, migrations: Files) -> None:
    """The app migrated into public; later a schema first in the path appeared. The
    runner reads the app's rows where the path finds them, and warns: the app's own
    unqualified CREATE TABLE IF NOT EXISTS would start a second history in that schema."""
    folder = migrations({**FIRST})
    assert oracle.run(db.url, folder) == [1]
    db.execute("CREATE SCHEMA pacs")
    db.execute(f'ALTER DATABASE "{db.name}" SET search_path = pacs, public')
    migrations({**SECOND})
    result = run(db.url, folder)
    assert result.code == 0, result.stderr
    assert applied(result) == [2]
    warned = result.event("sqlx_history_shadowed")
    assert (warned["schema"], warned["current_schema"]) == ("public", "pacs")
    assert sqlx_tables(db) == ["public"]


def test_an_explicit_schema_is_the_only_place_looked_at(db: Db, migrations: Files,
                                                        tmp_path: Path) -> None:
    """A second project in the PACS database keeps its own native history in its own
    schema; the app's `public._sqlx_migrations` is not its business."""
    pacs = migrations(APP)
    assert len(oracle.run(db.url, pacs)) == 4
    reporting = tmp_path / "reporting"
    reporting.mkdir()
    (reporting / "1_totals.sql").write_text("CREATE TABLE reporting.totals (n int);\n")
    (reporting / "1_totals_rollback.sql").write_text("DROP TABLE reporting.totals;\n")
    for setting in (NATIVE, {}):
        result = run(db.url, reporting, "--schema", "reporting", **setting)
        assert result.code == 0, result.stderr
        assert result.event("history_format")["format"] == "native"
    assert db.scalar("SELECT count(*) FROM reporting.migration_history") == 1
    assert sqlx_tables(db) == ["public"]

    # The guard still holds in that schema, and its advice works where followed.
    other = tmp_path / "other"
    other.mkdir()
    (other / "1_x.up.sql").write_text("CREATE TABLE other_x (id int);\n")
    (other / "1_x.down.sql").write_text("DROP TABLE other_x;\n")
    assert run(db.url, other, "--schema", "other", **SQLX).code == 0
    refused = run(db.url, other, "--schema", "other", **NATIVE)
    assert refused.code == 5
    error = refused.event("run_failed")["error"]
    assert '"other"."_sqlx_migrations" holds 1 row' in error
    assert "set MIGRATE_HISTORY_FORMAT=sqlx" in error
    followed = run(db.url, other, "--schema", "other", **SQLX)
    assert followed.code == 0 and applied(followed) == []
    assert sqlx_tables(db) == ["other", "public"]


# --- C: sqlx's session parameters ---------------------------------------------------------


SESSION_CASES = {
    "TimeZone": ("timezone", "'America/Los_Angeles'",
                 "CREATE TABLE t (v timestamptz DEFAULT '2026-01-01 00:00');\n"
                 "INSERT INTO t DEFAULT VALUES;\n",
                 "SELECT extract(epoch FROM v)::bigint FROM t"),
    "DateStyle": ("datestyle", "'ISO, DMY'",
                  "CREATE TABLE t (v date DEFAULT '01/02/2026');\n"
                  "INSERT INTO t DEFAULT VALUES;\n",
                  "SELECT v - DATE '2026-01-01' FROM t"),
    "extra_float_digits": ("extra_float_digits", "0",
                           "CREATE TABLE t AS SELECT (1.0 / 3)::float8::text AS v;\n",
                           "SELECT v FROM t"),
}


@pytest.mark.parametrize("case", sorted(SESSION_CASES))
def test_a_file_builds_under_the_runner_what_it_builds_under_the_app(
        db: Db, db2: Db, migrations: Files, case: str) -> None:
    name, value, body, query = SESSION_CASES[case]
    for target in (db, db2):
        target.execute(f'ALTER DATABASE "{target.name}" SET {name} = {value}')
    folder = migrations({"001_a.up.sql": "CREATE TABLE a (id int);\n",
                         "001_a.down.sql": "DROP TABLE a;\n",
                         "002_b.up.sql": body, "002_b.down.sql": "DROP TABLE t;\n"})
    result = run(db.url, folder, **SQLX)
    assert result.code == 0, result.stderr
    assert oracle.run(db2.url, folder) == [1, 2]
    assert db.query(query) == db2.query(query)


# --- D: sqlx's down template ----------------------------------------------------------------


DOWN_TEMPLATES = {"001_users.up.sql": "CREATE TABLE users (id int);\n",
                  "001_users.down.sql": "-- Add down migration script here\n",
                  "002_posts.up.sql": "CREATE TABLE posts (id int);\n",
                  "002_posts.down.sql": ""}


def test_comment_only_and_empty_down_files_roll_back_as_sqlx_reverts(
        db: Db, db2: Db, migrations: Files) -> None:
    folder = migrations(DOWN_TEMPLATES)
    checked = run(db.url, folder, "validate")
    assert checked.code == 0, checked.stdout
    assert sorted(e["file"] for e in checked.events if e["event"] == "empty_rollback") == [
        "001_users.down.sql", "002_posts.down.sql"]
    assert run(db.url, folder).code == 0
    back = run(db.url, folder, "rollback", "--to", "0")
    assert back.code == 0, back.stderr
    assert [e["file"] for e in back.events if e["event"] == "empty_rollback"] == [
        "002_posts.down.sql", "001_users.down.sql"]
    assert db.scalar("SELECT count(*) FROM _sqlx_migrations") == 0
    assert db.table_exists("users") and db.table_exists("posts")

    assert oracle.run(db2.url, folder) == [1, 2]
    assert oracle.undo(db2.url, folder, 0) == [2, 1]
    assert db2.scalar("SELECT count(*) FROM _sqlx_migrations") == 0


def test_native_format_keeps_refusing_an_empty_rollback(db: Db, migrations: Files) -> None:
    folder = migrations(DOWN_TEMPLATES)
    assert run(db.url, folder, "validate", **NATIVE).code == 5
    assert run(db.url, folder, **NATIVE).code == 0
    refused = run(db.url, folder, "rollback", **NATIVE)
    assert refused.code == 5
    assert "002_posts.down.sql" in refused.event("run_failed")["error"]
    assert db.scalar("SELECT count(*) FROM migration_history") == 2


def test_a_down_file_new_wrote_is_not_an_empty_rollback(db: Db, migrations: Files) -> None:
    folder = migrations({**FIRST})
    assert run(None, folder, "new", "add_notes").code == 0
    (folder / "002_add_notes.up.sql").write_text("CREATE TABLE notes (id int);\n")
    checked = run(None, folder, "validate", "--offline")
    assert checked.code == 5
    assert "002_add_notes.down.sql: still only the header `new` wrote" in checked.stdout


# --- E: sqlx's spelling ---------------------------------------------------------------------


def test_draft_rollback_of_a_plain_file_in_sqlx_format_writes_a_down_file(
        migrations: Files) -> None:
    folder = migrations({**FIRST, "002_idx.sql":
                         "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON users (id);\n"})
    drafted = run(None, folder, "draft-rollback", "2", **SQLX)
    assert drafted.code == 0, drafted.stderr
    written = Path(drafted.stdout.strip())
    assert written.name == "002_idx.down.sql"
    assert written.read_text().startswith("-- no-transaction\n")
    assert run(None, folder, "validate", "--offline", **SQLX).code == 0


@pytest.mark.parametrize("text", [
    "CREATE TABLE a (id int);\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n",
    "-- +goose NO TRANSACTION\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n",
])
def test_advice_in_sqlx_format_names_sqlx_spelling_and_works_when_followed(
        migrations: Files, text: str) -> None:
    folder = migrations({"001_a.up.sql": "CREATE TABLE a (id int);\n",
                         "001_a.down.sql": "DROP TABLE a;\n",
                         "002_a_idx.up.sql": text,
                         "002_a_idx.down.sql": "DROP INDEX a_idx;\n"})
    advised = run(None, folder, "validate", "--offline")
    assert advised.code == 5
    assert "`-- no-transaction`" in advised.stdout
    assert "migrate:no-transaction" not in advised.stdout
    assert "_rollback.sql" not in advised.stdout
    # Followed: the statement alone in a file that starts with sqlx's directive.
    (folder / "002_a_idx.up.sql").write_text(
        "-- no-transaction\nCREATE INDEX CONCURRENTLY a_idx ON a (id);\n")
    assert run(None, folder, "validate", "--offline").code == 0
