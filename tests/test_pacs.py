"""The PACS Extension Server migrations shipped in migrations/ (SPEC §7)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests import sqlx_oracle as oracle
from tests.conftest import ROOT, Db, run
from tests.pg import bindir

PACS = ROOT / "migrations"
SCHEMAS = ("security", "viewer", "annotation")


def pacs_objects(db: Db) -> int:
    return int(db.scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s)", (list(SCHEMAS),)))


def test_pacs_set_applies_on_empty_database_and_rollbacks_remove_everything(db: Db) -> None:
    result = run(db.url, PACS)
    assert result.code == 0, result.stderr
    assert result.event("migrations_complete")["applied"] == 3
    roles = db.query("SELECT name FROM security.roles ORDER BY name")
    assert [r[0] for r in roles] == sorted(
        ["SUPER_ADMIN", "PROJECT_ADMIN", "RESEARCHER", "VIEWER", "ANNOTATOR"])
    permissions = {r[0] for r in db.query("SELECT name FROM security.permissions")}
    assert permissions == {"USER", "PROJECT", "STUDY", "SERIES", "INSTANCE", "ANNOTATION",
                           "MASK", "HANGING_PROTOCOL"}
    for table in ("security.users", "security.projects", "security.user_project",
                  "security.project_role", "security.role_permission",
                  "annotation.mask_groups", "annotation.masks"):
        assert db.table_exists(table), table
    assert pacs_objects(db) > 20

    rollbacks = sorted(PACS.glob("*.down.sql"), reverse=True)
    assert [p.name[:3] for p in rollbacks] == ["003", "002", "001"]
    for path in rollbacks:
        psql(db, path)
    assert pacs_objects(db) == 0
    assert not db.query("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                        (list(SCHEMAS),))


def psql(db: Db, path: Path) -> None:
    # -1: one transaction, as the runner and sqlx run each file (the files carry no
    # BEGIN/COMMIT of their own).
    subprocess.run([str(bindir() / "psql"), "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1",
                    "-d", db.url, "-f", str(path)], check=True, capture_output=True, text=True)


SQLX = {"MIGRATE_HISTORY_FORMAT": "sqlx"}


def sqlx_rows(db: Db) -> list[tuple[object, ...]]:
    return db.query("SELECT version, description, success, checksum "
                    "FROM public._sqlx_migrations ORDER BY version")


def test_the_app_migrates_pacs_and_the_runner_agrees_then_rolls_everything_back(
        db: Db) -> None:
    """The app (sqlx, re-enacted by tests/sqlx_oracle.py) applies the shipped folder; the
    runner in sqlx format finds nothing to do, and its rollback undoes all of it."""
    assert oracle.run(db.url, PACS) == [1, 2, 3]
    rows = sqlx_rows(db)
    assert [r[:3] for r in rows] == [(1, "initial schema", True), (2, "initial seed data", True),
                                     (3, "add mask tables", True)]

    again = run(db.url, PACS, **SQLX)
    assert again.code == 0, again.stderr
    assert again.event("migrations_complete")["applied"] == 0
    status = run(db.url, PACS, "status", "--json", **SQLX)
    assert status.code == 0, status.stderr
    assert '"applied": 3' in status.stdout and '"pending": 0' in status.stdout

    back = run(db.url, PACS, "rollback", "--to", "0", **SQLX)
    assert back.code == 0, back.stderr
    assert pacs_objects(db) == 0
    assert sqlx_rows(db) == []
    assert oracle.run(db.url, PACS) == [1, 2, 3]  # the app can start over


def test_the_runner_migrates_pacs_and_the_app_agrees_then_undoes_it(db: Db) -> None:
    result = run(db.url, PACS, **SQLX)
    assert result.code == 0, result.stderr
    assert result.event("migrations_complete")["applied"] == 3
    expected = [(m.version, m.description, True, m.checksum)
                for m in oracle.resolve(PACS) if m.kind != "down"]
    assert [(v, d, s, bytes(c)) for v, d, s, c in sqlx_rows(db)] == expected
    assert oracle.run(db.url, PACS) == []  # no VersionMismatch, nothing to apply
    assert oracle.undo(db.url, PACS, 0) == [3, 2, 1]
    assert pacs_objects(db) == 0
