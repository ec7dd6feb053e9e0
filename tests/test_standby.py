"""A standby, or a read-only session (SPEC §10.3): found right after connecting, before the
lock; the read-only commands work there, the writing ones wait for a primary until
MIGRATE_WAIT_TIMEOUT, then exit 3 naming the standby. A real hot standby, made by
`pg_basebackup -R` from a cluster of this module, and promoted in one test."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Db, Runner, run
from tests.pg import Cluster, _as_postgres, free_port

Files = Callable[[dict[str, str | bytes]], Path]
FILES: dict[str, str | bytes] = {
    "001_study.sql": "CREATE TABLE study (id int);",
    "001_study_rollback.sql": "DROP TABLE study;",
    "002_study_note.sql": "ALTER TABLE study ADD COLUMN note text;",
    "002_study_note_rollback.sql": "ALTER TABLE study DROP COLUMN note;",
}


class Standby(Cluster):
    """A hot standby of `primary`, streaming from it (`pg_basebackup -R`)."""

    def __init__(self, primary: Cluster) -> None:  # no initdb: a base backup
        self.bin = primary.bin
        self.settings = {"hot_standby": "on"}
        self.tmp = Path(primary.tmp.parent / f"{primary.tmp.name}-standby{free_port()}")
        self.tmp.mkdir()
        self.data = self.tmp / "data"
        self.port = free_port()
        self.password = None
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres")
        subprocess.run(_as_postgres([
            str(self.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
            "-U", "postgres", "-D", str(self.data), "-R", "-X", "stream", "-c", "fast",
            "--no-sync"]),
            check=True, capture_output=True)


@pytest.fixture(scope="module")
def primary() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    with c.connect() as conn:
        conn.execute("CREATE DATABASE pacs")
    yield c
    c.destroy()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("standby") / "migrations"
    path.mkdir()
    for name, text in FILES.items():
        (path / name).write_text(str(text))
    return path


@pytest.fixture(scope="module")
def standby(primary: Cluster, folder: Path) -> Iterator[Cluster]:
    """A standby of a primary where 001 is applied and 002 pending."""
    result = run(primary.url("pacs"), folder, "migrate", "--to", "1")
    assert result.code == 0, result.stderr
    s = Standby(primary)
    s.start()
    yield s
    s.destroy()


def test_migrate_on_a_standby_waits_then_exits_3_naming_it(
        standby: Cluster, folder: Path) -> None:
    """The issue's case. Before: 25006 blamed on 002_study_note.sql:2:1, exit 1, the lock
    taken on the standby, "standby" never said."""
    result = run(standby.url("pacs"), folder, MIGRATE_WAIT_TIMEOUT="3s")
    assert result.code == 3, result.stderr
    error = result.event("run_failed")["error"]
    assert "standby" in error and "pg_is_in_recovery" in error
    retries = [e for e in result.events if e["event"] == "db_wait_retry"]
    assert retries and {e["reason"] for e in retries} == {"standby"}
    assert "lock_acquired" not in result.names()
    assert "migration_failed" not in result.names()


@pytest.mark.parametrize("command", [["rollback"], ["baseline", "--to", "1"],
                                     ["repair", "--failed"]])
def test_every_writing_command_refuses_a_standby(
        standby: Cluster, folder: Path, command: list[str]) -> None:
    result = run(standby.url("pacs"), folder, *command, MIGRATE_WAIT_TIMEOUT="0")
    assert result.code == 3, result.stderr
    assert "standby" in result.event("run_failed")["error"]


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["validate"],
                                     ["migrate", "--dry-run"], ["rollback", "--dry-run"]])
def test_read_only_commands_work_on_a_standby(
        standby: Cluster, folder: Path, command: list[str]) -> None:
    result = run(standby.url("pacs"), folder, *command)
    assert result.code == 0, result.stderr
    if command == ["migrate", "--dry-run"]:
        assert "002_study_note.sql" in result.stdout


def test_a_standby_promoted_during_the_wait_is_migrated(
        primary: Cluster, folder: Path) -> None:
    """An RDS failover: the endpoint answers as a standby, then as the new primary."""
    s = Standby(primary)
    s.start()
    try:
        runner = Runner(s.url("pacs"), folder, MIGRATE_WAIT_TIMEOUT="120s")
        retry = runner.wait_for_event("db_wait_retry")
        assert retry["reason"] == "standby"
        s.promote()
        result = runner.finish(timeout=120)
        assert result.code == 0, result.stderr
        with s.connect("pacs") as conn:
            rows = conn.execute("SELECT version FROM migration_history ORDER BY 1").fetchall()
        assert rows == [(1,), (2,)]
    finally:
        s.destroy()


def test_a_read_only_role_is_refused_like_a_standby(db: Db, migrations: Files) -> None:
    db.execute(f"ALTER DATABASE \"{db.name}\" SET default_transaction_read_only = on")
    folder = migrations({"001_t.sql": "CREATE TABLE t (id int);"})
    result = run(db.url, folder, MIGRATE_WAIT_TIMEOUT="1s")
    assert result.code == 3, result.stderr
    assert "read-only session" in result.event("run_failed")["error"]
    assert run(db.url, folder, "status").code == 0
