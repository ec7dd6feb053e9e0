"""Every server field that locates an error is used or passed on; a position is reported
only when it is real (issue 10 B)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import Db, run

Files = Callable[[dict[str, str | bytes]], Path]


def test_do_block_error_points_into_the_body_with_context_and_internal_query(
        db: Db, migrations: Files) -> None:
    folder = migrations({"001_items.sql": (
        "CREATE TABLE item (id int, qty int);\n"
        "\n"
        "DO $$\n"
        "BEGIN\n"
        "    INSERT INTO item VALUES (1, 1);\n"
        "    INSERT INTO item VALUES (2, 2);\n"
        "    INSERT INTO itme VALUES (3, 3);\n"
        "END $$;\n")})
    result = run(db.url, folder)
    assert result.code == 1
    failed = result.event("migration_failed")
    assert (failed["sqlstate"], failed["line"], failed["column"]) == ("42P01", 7, 17)
    assert failed["at"] == "statement"
    assert failed["internal_query"] == "INSERT INTO itme VALUES (3, 3)"
    assert "PL/pgSQL" in failed["context"] and "line 5" in failed["context"]
    assert "001_items.sql:7:17:" in result.event("run_failed")["error"]
    assert not db.table_exists("item")


def test_raise_in_a_do_block_points_at_its_plpgsql_line(db: Db, migrations: Files) -> None:
    folder = migrations({"001_check.sql": (
        "DO $$\n"
        "DECLARE n int := 0;\n"
        "BEGIN\n"
        "    IF n = 0 THEN\n"
        "        RAISE EXCEPTION 'nothing to migrate';\n"
        "    END IF;\n"
        "END $$;\n")})
    failed = run(db.url, folder).event("migration_failed")
    assert (failed["sqlstate"], failed["line"], failed["column"]) == ("P0001", 5, 9)
    assert "line 5 at RAISE" in failed["context"]


def test_sql_function_body_error_points_into_the_body(db: Db, migrations: Files) -> None:
    folder = migrations({"001_fn.sql": (
        "CREATE TABLE item (id int);\n"
        "CREATE FUNCTION item_count() RETURNS bigint LANGUAGE sql AS $$\n"
        "    SELECT count(*) FROM items\n"
        "$$;\n")})
    failed = run(db.url, folder).event("migration_failed")
    assert (failed["sqlstate"], failed["line"], failed["column"]) == ("42P01", 3, 26)


def test_plpgsql_syntax_error_points_into_the_function_body(db: Db, migrations: Files) -> None:
    folder = migrations({"001_fn.sql": (
        "CREATE FUNCTION touch() RETURNS void LANGUAGE plpgsql AS $body$\n"
        "BEGIN\n"
        "    PERFORM 1\n"
        "    PERFORM 2;\n"
        "END $body$;\n")})
    failed = run(db.url, folder).event("migration_failed")
    # At "2": the server reads `1\n    PERFORM` as a column and its alias.
    assert (failed["sqlstate"], failed["line"], failed["column"]) == ("42601", 4, 13)


def test_deferred_foreign_key_fails_at_commit_with_no_made_up_position(
        db: Db, migrations: Files) -> None:
    folder = migrations({"001_links.sql": (
        "CREATE TABLE parent (id int PRIMARY KEY);\n"
        "CREATE TABLE child (id int, parent_id int REFERENCES parent\n"
        "    DEFERRABLE INITIALLY DEFERRED);\n"
        "INSERT INTO parent VALUES (1);\n"
        "INSERT INTO child VALUES (1, 1);\n"
        "INSERT INTO child VALUES (2, 99);\n"
        "INSERT INTO child VALUES (3, 1);\n")})
    result = run(db.url, folder)
    assert result.code == 1
    failed = result.event("migration_failed")
    assert failed["sqlstate"] == "23503"
    assert (failed["at"], failed["line"], failed["column"]) == ("commit", None, None)
    assert "(parent_id)=(99)" in failed["detail"]
    assert (failed["table_name"], failed["constraint_name"]) == ("child", "child_parent_id_fkey")
    assert "001_links.sql (at commit):" in result.event("run_failed")["error"]
    assert not db.table_exists("child")
    assert db.query("SELECT success FROM migration_audit") == [(False,)]


def test_failure_in_the_runners_own_rows_is_bookkeeping_not_a_line_of_the_file(
        db: Db, migrations: Files) -> None:
    folder = migrations({"001_guard.sql": (
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN RAISE EXCEPTION 'history is read-only'; END $$;\n"
        "CREATE TRIGGER refuse BEFORE INSERT ON public.migration_history\n"
        "    FOR EACH ROW EXECUTE FUNCTION public.refuse();\n")})
    result = run(db.url, folder)
    assert result.code == 1
    failed = result.event("migration_failed")
    assert (failed["at"], failed["line"], failed["column"]) == ("bookkeeping", None, None)
    assert failed["message"] == "history is read-only"
    assert not db.scalar("SELECT count(*) FROM pg_trigger WHERE tgname = 'refuse'")


def test_unique_violation_names_constraint_table_and_detail(db: Db, migrations: Files) -> None:
    folder = migrations({"001_seed.sql": (
        "CREATE TABLE tag (name text CONSTRAINT tag_name_key UNIQUE);\n"
        "INSERT INTO tag VALUES ('a');\n"
        "  INSERT INTO tag VALUES ('a');\n")})
    failed = run(db.url, folder).event("migration_failed")
    assert (failed["sqlstate"], failed["line"], failed["column"]) == ("23505", 3, 3)
    assert (failed["schema_name"], failed["table_name"], failed["constraint_name"]) == (
        "public", "tag", "tag_name_key")
    assert "(name)=(a)" in failed["detail"]


def _initial_schema_shape() -> str:
    """A file shaped like the PACS 001 migration: 19 header lines, `CREATE SCHEMA
    security;` on line 20, then a long run of DDL, so that the server's error comes back
    while the runner is still sending the statements after it."""
    header = "".join(f"-- header line {i}\n" for i in range(1, 19)) + "\n"
    body = ["CREATE SCHEMA security;", "CREATE SCHEMA viewer;", "CREATE SCHEMA annotation;"]
    for i in range(200):
        body.append(f"-- table {i}\nCREATE TABLE security.t{i} (\n    id bigint PRIMARY KEY,\n"
                    f"    name text NOT NULL,\n    created_at timestamptz NOT NULL "
                    f"DEFAULT now()\n);\nCOMMENT ON TABLE security.t{i} IS 'table {i}';")
    return header + "\n".join(body) + "\n"


def test_error_while_the_pipeline_is_still_being_sent_maps_to_its_statement(
        db: Db, migrations: Files) -> None:
    text = _initial_schema_shape()
    assert text.splitlines()[19] == "CREATE SCHEMA security;"
    folder = migrations({"001_initial_schema.sql": text})
    db.execute("CREATE SCHEMA security")  # applied by psql before the runner came
    places = []
    for _ in range(20):
        failed = run(db.url, folder).event("migration_failed")
        assert failed["sqlstate"] == "42P06"
        places.append((failed["line"], failed["column"]))
    assert places == [(20, 1)] * 20
