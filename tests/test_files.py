"""Reading and lexing migration files, without a database (SPEC §2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.errors import ValidationError
from runner.folder import files, statements


def write(folder: Path, content: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in content.items():
        path = folder / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    return folder


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(ValidationError) as info:
        statements.plan(files.load(folder))
    return info.value.problems


def test_versions_sort_as_integers_and_non_sql_is_ignored(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {
        "9_nine.sql": "SELECT 9;", "010_ten.sql": "SELECT 10;", "README.md": "# guide",
        ".hidden.sql": "garbage", "010_ten_rollback.sql": "SELECT 0;",
    })
    (folder / "sub").mkdir()
    (folder / "sub" / "001_x.sql").write_text("SELECT 1;")
    found = files.load(folder)
    assert [(m.version, m.name) for m in found] == [(9, "9_nine"), (10, "010_ten")]
    assert found[1].rollback == folder / "010_ten_rollback.sql"


def test_sqlx_up_down_pair(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"20260101_add.up.sql": "SELECT 1;",
                                    "20260101_add.down.sql": "SELECT 2;"})
    (m,) = files.load(folder)
    assert (m.version, m.name, m.description) == (20260101, "20260101_add", "add")
    assert m.rollback is not None and m.rollback.name == "20260101_add.down.sql"


def test_configmap_layout_with_dot_dot_data_symlinks(tmp_path: Path) -> None:
    """A mounted ConfigMap: files are symlinks into `..data`, itself a symlink."""
    folder = tmp_path / "m"
    real = write(folder / "..2026_11_26_08_00_00.123", {"001_a.sql": "SELECT 1;"})
    os.symlink(real.name, folder / "..data")
    os.symlink("..data/001_a.sql", folder / "001_a.sql")
    (m,) = files.load(folder)
    assert m.file == "001_a.sql" and m.text == "SELECT 1;"


def test_every_name_problem_is_reported_at_once(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {
        "001_a.sql": "SELECT 1;", "001_b.sql": "SELECT 2;", "initial.sql": "SELECT 3;",
        "002_x_rollback.sql": "SELECT 4;", "003_bad.sql": b"SELECT '\xff';",
        "004_empty.sql": "  \n\n", "1234567890123456789_long.sql": "SELECT 5;",
        "005_sp ace.sql": "SELECT 6;",
    })
    with pytest.raises(ValidationError) as info:
        files.load(folder)
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 7, text
    for needle in ("001_a.sql, 001_b.sql", "initial.sql: name", "002_x_rollback.sql: rollback",
                   "003_bad.sql:1: not valid UTF-8", "004_empty.sql: file is empty",
                   "1234567890123456789_long.sql: name", "005_sp ace.sql: name"):
        assert needle in text


def test_checksum_ignores_bom_and_crlf(tmp_path: Path) -> None:
    lf = write(tmp_path / "lf", {"001_a.sql": "CREATE TABLE t (id int);\nSELECT 1;\n"})
    crlf = write(tmp_path / "crlf",
                 {"001_a.sql": b"\xef\xbb\xbfCREATE TABLE t (id int);\r\nSELECT 1;\r\n"})
    (a,), (b,) = files.load(lf), files.load(crlf)
    assert a.checksum == b.checksum
    assert len(a.checksum) == 64
    assert b.text.startswith("CREATE")  # BOM dropped, CRLF kept for line numbers


def test_lexer_handles_dollar_quotes_e_strings_nested_comments_and_atomic(
        tmp_path: Path) -> None:
    sql = """
/* outer /* nested; */ still; comment */
CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  RETURN 'a;b'; -- COMMIT;
END;
$body$;
SELECT E'it\\'s; fine', $$COMMIT;$$;
CREATE FUNCTION g() RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT 1;
  SELECT 2;
END;
"""
    folder = write(tmp_path / "m", {"001_a.sql": sql})
    (plan,) = statements.plan(files.load(folder))
    assert plan.transactional
    assert len(plan.statements) == 3
    assert plan.statements[0].sql.startswith("CREATE FUNCTION f()")
    assert plan.statements[2].sql.rstrip().endswith("END")


def test_begin_commit_wrapper_is_dropped(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "-- header\nBEGIN;\nCREATE TABLE t (id int);\n"
                                                 "INSERT INTO t VALUES (1);\nCOMMIT;\n"})
    (plan,) = statements.plan(files.load(folder))
    assert [s.sql for s in plan.statements] == ["CREATE TABLE t (id int)",
                                                "INSERT INTO t VALUES (1)"]
    assert statements.line_col(plan.migration.text, plan.statements[1].offset) == (4, 1)


@pytest.mark.parametrize("directive", ["-- migrate:no-transaction", "-- no-transaction"])
def test_no_transaction_directive(tmp_path: Path, directive: str) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": f"-- purpose: index\n{directive}\n"
                                                 "CREATE INDEX CONCURRENTLY i ON t (id);\n"
                                                 "VACUUM t;\n"})
    (plan,) = statements.plan(files.load(folder))
    assert not plan.transactional
    assert len(plan.statements) == 2


def test_directive_after_sql_does_not_count(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "SELECT 1;\n-- migrate:no-transaction\n"})
    (plan,) = statements.plan(files.load(folder))
    assert plan.transactional


def test_lexical_problems_name_file_line_and_fix(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {
        "001_mid.sql": "CREATE TABLE a (id int);\nCOMMIT;\nCREATE TABLE b (id int);\n",
        "002_cic.sql": "CREATE TABLE c (id int);\n\nCREATE INDEX CONCURRENTLY i ON c (id);\n",
        "003_comments.sql": "-- only a comment\n/* and another */\n",
        "004_vacuum.sql": "BEGIN;\nVACUUM a;\nCOMMIT;\n",
        "005_syntax.sql": "SELECT 1;\nSELEC 2;\n",
        "006_notx_begin.sql": "-- migrate:no-transaction\nBEGIN;\nSELECT 1;\nCOMMIT;\n",
        "007_db.sql": "CREATE DATABASE x;\nALTER SYSTEM SET work_mem = '1MB';\n",
    })
    found = problems_of(folder)
    text = "\n".join(found)
    assert "001_mid.sql:2:1: transaction control (COMMIT)" in text
    assert "002_cic.sql:3:1: CREATE INDEX CONCURRENTLY cannot run inside a transaction" in text
    assert "-- migrate:no-transaction" in text
    assert "003_comments.sql: contains no SQL statement" in text
    assert "004_vacuum.sql:2:1: VACUUM" in text
    assert "005_syntax.sql:2:1: syntax error" in text
    assert "006_notx_begin.sql:2:1: transaction control (BEGIN)" in text
    assert "007_db.sql:1:1: CREATE DATABASE" in text and "007_db.sql:2:1: ALTER SYSTEM" in text


def test_line_col_counts_characters_and_crlf() -> None:
    text = "é;\r\nSELECT x;"
    assert statements.line_col(text, text.index("x")) == (2, 8)
    assert statements.line_col(text, 0) == (1, 1)


def test_statement_offsets_are_characters_in_non_ascii_files(tmp_path: Path) -> None:
    """The parser counts bytes; a slice of the text must still be the statement."""
    folder = write(tmp_path / "m", {"001_a.sql": "-- Größe\nBEGIN;\nCREATE TABLE straße (ü int);\n"
                                                 "INSERT INTO straße VALUES (1);\nCOMMIT;\n"})
    (plan,) = statements.plan(files.load(folder))
    assert [s.sql for s in plan.statements] == ["CREATE TABLE straße (ü int)",
                                                "INSERT INTO straße VALUES (1)"]
    assert statements.line_col(plan.migration.text, plan.statements[1].offset) == (4, 1)
