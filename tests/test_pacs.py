"""The PACS Extension Server migrations shipped in migrations/ (SPEC §7)."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
