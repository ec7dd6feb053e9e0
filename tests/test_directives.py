"""Other migration tools' directives and psql meta-commands in a migration file
(runner/directives.py): validation errors naming the tool, or psql, and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import ValidationError
from runner.folder import directives, files, statements

# (directive as its tool's documentation writes it, tool): each changes what runs or how.
FOREIGN = [
    ("-- migrate:down", "dbmate"),
    ("-- migrate:up transaction:false", "dbmate"),
    ("-- +goose Down", "goose"),
    ("-- +goose NO TRANSACTION", "goose"),
    ("-- +goose ENVSUB ON", "goose"),
    ("-- +migrate Down", "sql-migrate"),
    ("-- +migrate Up notransaction", "sql-migrate"),
    ("-- atlas:txmode none", "Atlas"),
    ("-- atlas:delimiter -- end", "Atlas"),
    ("--! no-transaction", "graphile-migrate"),
    ("--! include functions/add.sql", "graphile-migrate"),
    ("-- transactional: false", "yoyo"),
    ("-- depends: 0001_create_users", "yoyo"),
    ("--changeset alice:1 runInTransaction:false", "Liquibase"),
    ("--precondition-sql-check expectedResult:0 SELECT count(*) FROM item", "Liquibase"),
    ("-- Down Migration", "node-pg-migrate"),
    ("---- create above / drop below ----", "tern"),
    ("---- tern: disable-tx ----", "tern"),
    ("-- postgres-migrations disable-transaction", "postgres-migrations"),
    ("-- ==== DOWN ====", "shmig"),
]

# Comments that look alike but change nothing here: ours, sqlx's, markers whose tool
# would run the file as this runner does, and plain prose.
HARMLESS = [
    "-- migrate:no-transaction", "-- no-transaction", "-- migrate:up", "-- +goose Up",
    "-- +goose StatementBegin", "-- +goose StatementEnd", "-- +migrate Up",
    "-- atlas:txmode file", "--! Previous: sha1:0123456789abcdef", "--! Message: add item",
    "-- Depends on: nothing (first migration).", "-- Down Migration for users table",
    "-- Up Migration", "-- ====  UP  ====", "-- liquibase formatted sql",
    "--changeset alice:1", "-- rollback: 001_item_rollback.sql",
]


def problems(tmp_path: Path, text: str) -> list[str]:
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "001_x.sql").write_text(text)
    try:
        statements.plan(files.load(folder))
    except ValidationError as exc:
        return exc.problems
    return []


def test_every_documented_directive_has_an_example() -> None:
    hit = {id(directives.foreign(comment)) for comment, _ in FOREIGN}
    assert hit == {id(rule) for rule in directives.FOREIGN}


@pytest.mark.parametrize(("comment", "tool"), FOREIGN)
def test_foreign_directive_is_refused_naming_tool_line_and_fix(
        tmp_path: Path, comment: str, tool: str) -> None:
    found = problems(tmp_path, f"CREATE TABLE item (id int);\n{comment}\nSELECT 1;\n")
    assert len(found) == 1, found
    assert found[0].startswith(f"001_x.sql:2:1: `{comment}` is a {tool} directive: it ")
    fix = found[0].rsplit("; ", 1)[1]
    assert any(word in fix for word in ("-- migrate:no-transaction", ".up.sql", "write",
                                        "remove", "put")), found[0]


@pytest.mark.parametrize("comment", HARMLESS)
def test_comments_that_change_nothing_are_left_alone(tmp_path: Path, comment: str) -> None:
    assert problems(tmp_path, f"{comment}\nCREATE TABLE item (id int);\n") == []


def test_a_directive_inside_a_string_or_body_is_no_directive(tmp_path: Path) -> None:
    text = ("SELECT '-- migrate:down';\n"
            "DO $$ BEGIN\n-- +goose NO TRANSACTION\nPERFORM 1; END $$;\n"
            "/* -- atlas:txmode none */ SELECT 2;\n")
    assert problems(tmp_path, text) == []


def test_every_directive_of_a_file_is_reported(tmp_path: Path) -> None:
    text = ("-- +goose NO TRANSACTION\n-- +goose Up\nCREATE INDEX CONCURRENTLY i ON t (id);\n"
            "-- +goose Down\nDROP INDEX i;\n")
    found = problems(tmp_path, text)
    assert [p.split(": ", 1)[0] for p in found] == ["001_x.sql:1:1", "001_x.sql:4:1",
                                                    "001_x.sql:3:1"], found


@pytest.mark.parametrize(("line", "fix"), [
    ("\\connect pacs", "the database DATABASE_URL names"),
    ("\\c pacs", "the database DATABASE_URL names"),
    ("\\i 002_seed.sql", "put that file's SQL here"),
    ("\\ir seed/roles.sql", "put that file's SQL here"),
    ("\\set ON_ERROR_STOP on", "write the value into the SQL"),
    ("\\copy item FROM 'item.csv' CSV", "COPY from a file on the database server"),
    ("\\echo done", "remove it"),
])
def test_psql_meta_command_is_named_not_a_syntax_error(
        tmp_path: Path, line: str, fix: str) -> None:
    found = problems(tmp_path, f"CREATE TABLE item (id int);\n  {line}\nSELECT 1;\n")
    word = line.split()[0]
    assert found == [f"001_x.sql:2:3: `{word}` is a psql meta-command; the runner sends SQL "
                     f"to the server only, without psql: {found[0].rsplit(': ', 1)[1]}"]
    assert fix in found[0]
    assert "syntax error" not in found[0]


def test_every_meta_command_of_a_file_is_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, "\\set ON_ERROR_STOP on\n\\connect pacs\nSELECT 1 \\gset\n")
    assert [p.split(": ", 1)[0] for p in found] == ["001_x.sql:1:1", "001_x.sql:2:1",
                                                    "001_x.sql:3:10"], found


@pytest.mark.parametrize("use", [":owner", ":'owner'", ':"owner"'])
def test_psql_variable_is_named(tmp_path: Path, use: str) -> None:
    found = problems(tmp_path, f"SELECT 1;\nGRANT USAGE ON SCHEMA public TO {use};\n")
    assert len(found) == 1 and found[0].startswith("001_x.sql:2:33: a psql variable"), found


def test_a_syntax_error_that_is_not_psql_stays_a_syntax_error(tmp_path: Path) -> None:
    found = problems(tmp_path, "SELECT 1;\nSELEC 2;\nSELECT a[1:2] FROM t;\n")
    assert len(found) == 1 and found[0].startswith("001_x.sql:2:1: syntax error"), found


@pytest.mark.parametrize(("up", "down"), [
    ("002_note.up.sql", "002_note.down.sql"), ("002_note.sql", "002_note_rollback.sql")])
def test_a_split_dbmate_file_keeps_its_markers_at_the_head(
        tmp_path: Path, up: str, down: str) -> None:
    """The fix the dbmate message gives: each half in its own file, markers and all."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / up).write_text("-- migrate:up\nCREATE TABLE note (id int);\n")
    (folder / down).write_text("-- migrate:down\nDROP TABLE note;\n")
    migrations = files.load(folder)
    assert statements.lex(migrations)[1] == []
    assert statements.lex_rollbacks(migrations)[1] == []
    # ...but below a statement, even in a rollback file, it still starts a second part.
    (folder / down).write_text("DROP TABLE note;\n-- +goose Down\nCREATE TABLE note (id int);\n")
    (problem,) = statements.lex_rollbacks(files.load(folder))[1]
    assert problem.startswith(f"{down}:2:1: `-- +goose Down` is a goose directive")


def test_offsets_count_characters_in_non_ascii_files(tmp_path: Path) -> None:
    found = problems(tmp_path, "-- Größe, 寸法\nSELECT 'é';\n-- migrate:down\n"
                               "SELECT 'ü'; \\i x.sql\n")
    assert [p.split(": ", 1)[0] for p in found] == ["001_x.sql:3:1", "001_x.sql:4:13"], found
