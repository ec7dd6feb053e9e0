"""`new`: it never writes a name that `validate` and `migrate` refuse, follows the folder's
layout, and keeps the kustomization's file list in step (issue 10 F, issue 13 item 3).
No database needed."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.folder import files, kustomization
from tests.conftest import ROOT, Db, run

Files = Callable[..., Path]
KUSTOMIZATION = """\
# a comment that must survive
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
configMapGenerator:
  - name: pacs-migrations
    files:
      - 001_a.down.sql
      - 001_a.up.sql  # the first
      # a comment line inside the list
      - 003_c.down.sql
      - 003_c.up.sql
    options:
      labels:
        app: x
"""


def listed(folder: Path) -> list[str]:
    return kustomization.parse((folder / "kustomization.yaml").read_text())[0]


@pytest.mark.parametrize(("existing", "args"), [
    ({"999999999999999999_last.sql": "SELECT 1;"}, ["add_tag"]),
    ({"999999999999999999_last.up.sql": "SELECT 1;",
      "999999999999999999_last.down.sql": "SELECT 1;"}, ["add_tag"]),
    ({"1_a.sql": "SELECT 1;"}, ["--number", "1000000000000000000", "add_tag"]),
    ({"1_a.sql": "SELECT 1;"}, ["--number", "-3", "add_tag"]),
])
def test_new_refuses_a_version_no_file_name_can_carry(
        migrations: Files, existing: dict[str, str], args: list[str]) -> None:
    folder = migrations(existing)
    result = run(None, folder, "new", *args)
    assert result.code == 2, result.stdout + result.stderr
    error = result.events[-1]["error"]
    assert "1 to 18 digits" in error and "999999999999999999" in error, error
    assert sorted(p.name for p in folder.iterdir()) == sorted(existing), "nothing written"
    assert result.stdout == ""


@pytest.mark.parametrize("existing", [
    {},
    {"0001_a.sql": "SELECT 1;", "0001_a_rollback.sql": "SELECT 1;"},
    {"001_a.up.sql": "SELECT 1;", "001_a.down.sql": "SELECT 1;"},
    {"999999999999999998_a.sql": "SELECT 1;"},
    {"7_x.sql": "SELECT 1;", "12_y.up.sql": "SELECT 1;", "12_y.down.sql": "SELECT 1;"},
])
@pytest.mark.parametrize("description", ["add_tag", "b-c_2", "X"])
def test_what_new_writes_reads_back_under_the_folder_rules(
        migrations: Files, existing: dict[str, str], description: str) -> None:
    folder = migrations(existing)
    result = run(None, folder, "new", description)
    assert result.code == 0, result.stderr
    written = [Path(p) for p in result.stdout.split()]
    assert len(written) == 2 and all(p.parent == folder for p in written)
    for path in written:
        parts = files.split_name(path.name)
        assert parts is not None and parts[1] == description, path.name
        path.write_text("SELECT 1;\n")  # its SQL, written
    report = run(None, folder, "validate", "--offline")
    assert report.code == 0, report.stdout


@pytest.mark.parametrize("description", ["add users", "add;drop", "undo_rollback", "ünï",
                                         "x.up", "a" * 201])
def test_new_refuses_a_description_the_folder_rules_would_read_otherwise(
        migrations: Files, description: str) -> None:
    folder = migrations({"1_a.sql": "SELECT 1;"})
    result = run(None, folder, "new", description)
    assert result.code == 2, result.stderr
    assert [p.name for p in folder.iterdir()] == ["1_a.sql"]


def test_new_follows_the_sqlx_layout_of_the_folder(migrations: Files) -> None:
    folder = migrations({"001_a.up.sql": "SELECT 1;", "001_a.down.sql": "SELECT 1;"})
    result = run(None, folder, "new", "add_notes")
    assert result.code == 0, result.stderr
    assert [Path(p).name for p in result.stdout.split()] == ["002_add_notes.up.sql",
                                                             "002_add_notes.down.sql"]
    up = (folder / "002_add_notes.up.sql").read_text()
    assert "-- Rollback:   002_add_notes.down.sql" in up
    assert "-- Depends on: 001_a.up.sql" in up
    # sqlx honours its directive only as the file's first bytes, in this one spelling.
    assert "--   -- no-transaction\n" in up and "migrate:no-transaction" not in up
    assert "undo 002_add_notes.up.sql" in (folder / "002_add_notes.down.sql").read_text()


def test_new_adds_both_files_to_the_kustomization_in_order(migrations: Files) -> None:
    folder = migrations({"001_a.up.sql": "SELECT 1;", "001_a.down.sql": "SELECT 1;",
                         "003_c.up.sql": "SELECT 1;", "003_c.down.sql": "SELECT 1;",
                         "kustomization.yaml": KUSTOMIZATION})
    result = run(None, folder, "new", "--number", "2", "b")
    assert result.code == 0, result.stderr
    assert result.stdout.split() == [str(folder / "002_b.up.sql"),
                                     str(folder / "002_b.down.sql")]
    assert result.event("migration_created")["kustomization"] == "kustomization.yaml"
    assert listed(folder) == ["001_a.down.sql", "001_a.up.sql", "002_b.down.sql",
                              "002_b.up.sql", "003_c.down.sql", "003_c.up.sql"]
    text = (folder / "kustomization.yaml").read_text()
    assert text == KUSTOMIZATION.replace(
        "      # a comment line inside the list\n",
        "      # a comment line inside the list\n      - 002_b.down.sql\n      - 002_b.up.sql\n",
    ), "only the two lines are added; comments and the rest stay"

    result = run(None, folder, "new", "d")
    assert result.code == 0, result.stderr
    assert listed(folder)[-2:] == ["004_d.down.sql", "004_d.up.sql"]
    assert (folder / "kustomization.yaml").read_text().endswith(
        "      - 004_d.up.sql\n    options:\n      labels:\n        app: x\n")
    for name in ("002_b.up.sql", "002_b.down.sql", "004_d.up.sql", "004_d.down.sql"):
        (folder / name).write_text("SELECT 1;\n")
    assert run(None, folder, "validate", "--offline").code == 0


def test_new_on_the_shipped_folder_keeps_validate_passing(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", folder)
    result = run(None, folder, "new", "add_study_notes")
    assert result.code == 0, result.stderr
    assert "004_add_study_notes.up.sql" in listed(folder)
    assert "004_add_study_notes.down.sql" in listed(folder)
    for name in ("004_add_study_notes.up.sql", "004_add_study_notes.down.sql"):
        (folder / name).write_text("SELECT 1;\n")
    report = run(None, folder, "validate", "--offline")
    assert report.code == 0, report.stdout


def test_new_writes_nothing_when_the_kustomization_has_no_block_list(migrations: Files) -> None:
    folder = migrations({"1_a.sql": "SELECT 1;", "kustomization.yaml":
                         "configMapGenerator:\n  - name: m\n    files: [1_a.sql]\n"})
    result = run(None, folder, "new", "b")
    assert result.code == 5
    assert "kustomization.yaml" in result.events[-1]["error"]
    assert sorted(p.name for p in folder.iterdir()) == ["1_a.sql", "kustomization.yaml"]


def test_rollback_help_says_what_happens_to_a_version_0() -> None:
    result = run(None, None, "rollback", "--help")
    assert result.code == 0
    text = " ".join(result.stdout.split())
    assert "0: all" not in text
    assert "--to 0 rolls back all but a version 0" in text, text


@pytest.mark.parametrize(("existing", "directive"), [
    ({"001_a.up.sql": "SELECT 1;", "001_a.down.sql": "SELECT 1;"}, "-- no-transaction\n"),
    ({"001_a.sql": "SELECT 1;", "001_a_rollback.sql": "SELECT 1;"},
     "-- migrate:no-transaction\n"),
])
def test_new_no_transaction_writes_the_folders_directive_first_and_says_so(
        db: Db, migrations: Files, existing: dict[str, str], directive: str) -> None:
    folder = migrations(existing)
    result = run(None, folder, "new", "--no-transaction", "index_t")
    assert result.code == 0, result.stderr
    forward, rollback = (Path(p) for p in result.stdout.split())
    assert result.event("migration_created")["no_transaction"] is True
    for path in (forward, rollback):
        assert path.read_bytes().startswith(directive.encode()), path.name  # sqlx: byte 0
    header = forward.read_text()
    assert "Runs outside a transaction" in header
    assert "Runs in one transaction" not in header
    forward.write_text(header + "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_t ON t (id);\n")
    rollback.write_text(rollback.read_text() + "DROP INDEX CONCURRENTLY IF EXISTS ix_t;\n")
    assert run(None, folder, "validate", "--offline").code == 0
    # A CONCURRENTLY in a transaction would fail with 25001: it ran outside one.
    db.execute("CREATE TABLE t (id int)")
    assert run(db.url, folder, "migrate").code == 0
    assert db.scalar("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_t'") == 1
    assert run(db.url, folder, "rollback", "--steps", "1").code == 0
    assert db.scalar("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_t'") == 0


def test_without_no_transaction_the_header_says_one_transaction(migrations: Files) -> None:
    folder = migrations({"001_a.up.sql": "SELECT 1;", "001_a.down.sql": "SELECT 1;"})
    forward = Path(run(None, folder, "new", "b").stdout.split()[0])
    assert forward.read_text().startswith("-- 002_b.up.sql\n")
    assert "Runs in one transaction" in forward.read_text()


def test_news_down_stub_filled_with_drops_passes_the_guides_squawk(tmp_path: Path) -> None:
    from tests.test_docs import squawk

    folder = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", folder)
    result = run(None, folder, "new", "add_study_notes")
    forward, rollback = (Path(p) for p in result.stdout.split())
    forward.write_text(forward.read_text() + "ALTER TABLE annotation.masks ADD COLUMN note text;\n"
                       "CREATE TABLE annotation.notes (id bigint GENERATED ALWAYS AS IDENTITY "
                       "PRIMARY KEY, body text);\n")
    rollback.write_text(rollback.read_text() + "DROP TABLE annotation.notes;\n"
                        "ALTER TABLE annotation.masks DROP COLUMN note;\n")
    checked = squawk(tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "squawk-ignore-file ban-drop-column," in rollback.read_text()
