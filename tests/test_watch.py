"""While a migration runs: who blocks it, how far it got, what it says (SPEC §9, issue 12)."""

from __future__ import annotations

import datetime
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, Db, Runner, run, runner_cmd, runner_env, wait_until

Files = Callable[[dict[str, str | bytes]], Path]
MARKER = "PATIENT-MARKER-7f3a"  # stands for patient data in a blocker's query


def at(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


@pytest.fixture
def blocker(db: Db) -> Iterator[psycopg.Connection[Any]]:
    """A session left `idle in transaction` holding a lock on table `busy`, its query
    carrying a marker that must never reach the log."""
    db.execute("CREATE TABLE busy (id int, note text)")
    conn = psycopg.connect(db.url, application_name="pacs-server-test")
    conn.execute(f"SELECT count(*), '{MARKER}' FROM busy")  # opens the transaction
    yield conn
    conn.close()


def test_blocked_alter_names_the_blocker_and_never_its_query(
        db: Db, migrations: Files, blocker: psycopg.Connection[Any]) -> None:
    folder = migrations({"001_alter.sql": "-- waits for the report\n"
                                          "ALTER TABLE busy ADD COLUMN flag int;\n"})
    runner = Runner(db.url, folder, MIGRATE_DDL_LOCK_TIMEOUT="0")
    started = runner.wait_for_event("migration_started")
    blocked = runner.wait_for_event("migration_blocked", timeout=15)
    assert at(blocked) - at(started) < 3.5
    assert (blocked["version"], blocked["line"], blocked["statement"]) == (1, 2, 1)
    assert blocked["waited_s"] > 0
    (who,) = blocked["blocked_by"]
    assert who["pid"] == blocker.info.backend_pid
    assert (who["application_name"], who["state"]) == ("pacs-server-test", "idle in transaction")
    assert who["user"] == "postgres" and who["xact_age_s"] >= 0
    assert "query" not in who
    blocker.commit()
    result = runner.finish(timeout=30)
    assert result.code == 0, result.stderr
    assert MARKER not in result.stderr
    assert db.scalar("SELECT count(*) FROM information_schema.columns "
                     "WHERE table_name = 'busy' AND column_name = 'flag'") == 1


def test_lock_timeout_failure_and_termination_message_name_the_blocker(
        db: Db, migrations: Files, blocker: psycopg.Connection[Any], tmp_path: Path) -> None:
    folder = migrations({"001_alter.sql": "ALTER TABLE busy ADD COLUMN flag int;\n"})
    termination = tmp_path / "termination-log"
    result = run(db.url, folder, MIGRATE_DDL_LOCK_TIMEOUT="2500ms",
                 MIGRATE_DDL_LOCK_RETRIES="0", MIGRATE_TERMINATION_LOG=str(termination))
    assert result.code == 1
    failed = result.event("migration_failed")
    assert failed["sqlstate"] == "55P03"
    assert [b["pid"] for b in failed["blocked_by"]] == [blocker.info.backend_pid]
    pid = blocker.info.backend_pid
    assert f"blocked by pid {pid} (pacs-server-test, idle in transaction for " in (
        termination.read_text())
    assert ("gave up after 1 attempt of MIGRATE_DDL_LOCK_TIMEOUT=2.5s: end that session or "
            "wait for it to finish, then run again, or raise MIGRATE_DDL_LOCK_RETRIES (now 0)"
            ) in termination.read_text()
    assert MARKER not in result.stderr and MARKER not in termination.read_text()


def test_lock_retry_carries_the_blocker(
        db: Db, migrations: Files, blocker: psycopg.Connection[Any]) -> None:
    folder = migrations({"001_alter.sql": "ALTER TABLE busy ADD COLUMN flag int;\n"})
    runner = Runner(db.url, folder, MIGRATE_DDL_LOCK_TIMEOUT="2s", MIGRATE_DDL_LOCK_RETRIES="3")
    retry = runner.wait_for_event("migration_lock_retry", timeout=20)
    blocker.commit()
    assert [b["pid"] for b in retry["blocked_by"]] == [blocker.info.backend_pid]
    assert runner.finish(timeout=60).code == 0


def test_progress_every_interval_with_the_running_line(db: Db, migrations: Files) -> None:
    folder = migrations({"001_slow.sql": "CREATE TABLE a (id int);\n\n"
                                         "SELECT pg_sleep(3.5);\n"})
    result = run(db.url, folder, MIGRATE_PROGRESS_INTERVAL="1s")
    assert result.code == 0, result.stderr
    progress = [e for e in result.events if e["event"] == "migration_progress"]
    assert len(progress) >= 2, result.stderr
    elapsed = [e["elapsed_s"] for e in progress]
    assert elapsed == sorted(elapsed) and len(set(elapsed)) == len(elapsed)
    assert {(e["line"], e["statement"]) for e in progress} == {(3, 2)}
    assert all(e["wait_event"] == "PgSleep" and e["version"] == 1 for e in progress)


def test_progress_interval_zero_logs_no_progress(db: Db, migrations: Files) -> None:
    folder = migrations({"001_slow.sql": "SELECT pg_sleep(2.2);\n"})
    result = run(db.url, folder, MIGRATE_PROGRESS_INTERVAL="0")
    assert result.code == 0, result.stderr
    assert "migration_progress" not in result.names()


def test_index_build_progress_has_phase_and_blocks(db: Db, migrations: Files) -> None:
    # A slow index build: an expression index on a function that sleeps per row.
    db.execute("CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 40) g; "
               "CREATE FUNCTION slow_id(int) RETURNS int IMMUTABLE LANGUAGE sql "
               "AS 'SELECT $1 + 0 FROM pg_sleep(0.1)'")
    folder = migrations({"001_idx.sql": "CREATE INDEX big_slow_idx ON big (slow_id(id));\n"})
    result = run(db.url, folder, MIGRATE_PROGRESS_INTERVAL="1s")
    assert result.code == 0, result.stderr
    progress = [e for e in result.events if e["event"] == "migration_progress"]
    assert progress and all("phase" in e and "blocks_total" in e for e in progress), (
        result.stderr)


def test_notices_are_logged_as_they_arrive(db: Db, migrations: Files) -> None:
    folder = migrations({"001_batches.sql": (
        "DO $$\nBEGIN\n"
        "    RAISE NOTICE 'processed % of % rows', 500, 1000;\n"
        "    PERFORM pg_sleep(2);\n"
        "    RAISE WARNING 'processed % of % rows', 1000, 1000;\n"
        "END $$;\n")})
    result = run(db.url, folder)
    assert result.code == 0, result.stderr
    notices = [e for e in result.events if e["event"] == "migration_notice"]
    assert [(e["severity"], e["message"], e["level"]) for e in notices] == [
        ("NOTICE", "processed 500 of 1000 rows", "info"),
        ("WARNING", "processed 1000 of 1000 rows", "warning")]
    assert at(result.event("migration_applied")) - at(notices[0]) >= 1.5
    assert notices[0]["file"] == "001_batches.sql"


def _lock_released(db: Db) -> bool:
    return not db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")


def test_sigterm_while_the_watch_runs_exits_143_and_releases_the_lock(
        db: Db, migrations: Files) -> None:
    folder = migrations({"001_slow.sql": "CREATE TABLE half (id int);\nSELECT pg_sleep(60);\n"})
    runner = Runner(db.url, folder, MIGRATE_PROGRESS_INTERVAL="1s")
    runner.wait_for_event("migration_progress", timeout=15)
    sent = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    result = runner.finish(timeout=30)
    assert result.code == 143, result.stderr
    assert time.monotonic() - sent < 5
    assert result.names()[-1] == "interrupted"
    assert not db.table_exists("half")
    wait_until(lambda: _lock_released(db), timeout=5, what="advisory lock released")


def test_sigterm_in_process_leaves_no_watch_thread(
        db: Db, migrations: Files, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from runner import cli

    folder = migrations({"001_slow.sql": "SELECT pg_sleep(60);\n"})
    for key, value in runner_env(db.url, folder, MIGRATE_PROGRESS_INTERVAL="1s").items():
        monkeypatch.setenv(key, value)

    def terminate_once_watched() -> None:
        wait_until(lambda: any(t.name == "migration-watch" for t in threading.enumerate()),
                   what="the watch thread")
        wait_until(lambda: bool(db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%' "
            "AND datname = %s", (db.name,))), what="the slow statement")
        time.sleep(1.5)  # let the watch take a sample: SIGTERM lands while it is active
        os.kill(os.getpid(), signal.SIGTERM)

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    killer = threading.Thread(target=terminate_once_watched, daemon=True)
    killer.start()
    try:
        code = cli.main(["migrate"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    killer.join(timeout=5)
    assert code == 143, capsys.readouterr().err
    assert not [t for t in threading.enumerate() if t.name == "migration-watch"]
    assert "migration_progress" in capsys.readouterr().err
    wait_until(lambda: _lock_released(db), timeout=5, what="advisory lock released")


def _on_a_terminal(db: Db, folder: Path, log_format: str, **extra: str) -> str:
    """Run with stderr on a pseudo-terminal; everything it showed there."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, cols
    env = runner_env(db.url, folder, MIGRATE_LOG_FORMAT=log_format, TERM="xterm", **extra)
    proc = subprocess.Popen(runner_cmd(), env=env, stdout=subprocess.DEVNULL,
                            stderr=secondary, cwd=ROOT)
    os.close(secondary)
    shown = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(primary)
    assert proc.wait(timeout=10) == 0, shown.decode(errors="replace")
    # Without the terminal's control sequences (colours, cursor moves): the text shown.
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))


def test_live_status_line_on_a_terminal_in_console_format_only(
        db: Db, migrations: Files) -> None:
    folder = migrations({"001_slow.sql": "SELECT pg_sleep(2.5);\n"})
    shown = _on_a_terminal(db, folder, "console")
    assert "applying 001_slow.sql" in shown
    assert "migration_applied" in shown
    db.execute("DROP TABLE migration_history, migration_audit")
    shown = _on_a_terminal(db, folder, "json")
    assert "applying" not in shown and '"event": "migration_applied"' in shown


@pytest.mark.parametrize("width", [80, 60, 40])
def test_live_status_line_keeps_the_blockers_pids_within_the_terminal_width(width: int) -> None:
    """An 80-column terminal cut the line after the first blocker's description: the pids
    of the others, the ones to look up, were lost."""
    from types import SimpleNamespace

    from runner.applying.live import status
    from runner.applying.watch import Running, describe_blockers

    blockers = [{"pid": 4242 + i, "application_name": "pacs-server-reporting-worker",
                 "state": "idle in transaction", "xact_age_s": 192.0} for i in range(3)]
    running = Running(plan=SimpleNamespace(migration=SimpleNamespace(  # type: ignore[arg-type]
        file="004_add_masks_project_id.up.sql")), started=time.monotonic(), next_progress=0)
    running.blocked_by = blockers
    running.waiting = f"lock (relation), blocked by {describe_blockers(blockers)}"
    watch = SimpleNamespace(running=running)
    assert len(status(watch)) > 160, "unbounded: the whole description"  # type: ignore[arg-type]
    line = status(watch, width)  # type: ignore[arg-type]
    assert len(line) <= width or line.startswith("blocked by pid 4242, 4243, 4244"), line
    assert "blocked by pid 4242, 4243, 4244" in line[:width], line
    running.waiting = "IO: DataFileRead"  # not a lock: nothing to shorten
    assert status(watch, width).endswith("waiting: IO: DataFileRead")  # type: ignore[arg-type]
