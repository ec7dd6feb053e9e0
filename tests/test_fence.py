"""The lock is held whenever work commits, or the work stops (SPEC §10.1): the fence in each
migration's transaction, insert-only history rows, the watched lock connection, and the
runner's sessions never ended for being idle. Real runner processes, real backends killed."""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Db, Runner, login_role, run, wait_until

Files = Callable[[dict[str, str | bytes]], Path]
SQLX = {"MIGRATE_HISTORY_FORMAT": "sqlx"}


def at(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


def lock_pid(db: Db) -> int:
    """The backend holding a runner's session advisory lock on `db`: the idle one (a
    work session running a no-transaction file holds one too)."""
    pids: list[int] = []

    def found() -> bool:
        pids[:] = [r[0] for r in db.query(
            "SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.state <> 'active' "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = %s)", (db.name,))]
        return len(pids) == 1
    wait_until(found, what="one runner holding the advisory lock")
    return pids[0]


def terminate(db: Db, pid: int) -> None:
    """The backend ended and gone, its locks released: pg_terminate_backend only signals
    it unless given a timeout (ms, PostgreSQL 14+), then waits for it to exit."""
    assert db.scalar("SELECT pg_terminate_backend(%s, 30000)", (pid,))


def sleeping(db: Db, pattern: str = "SELECT pg_sleep%%") -> int:
    """The pid of the backend running a statement like `pattern`, once it runs."""
    sql = "SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND datname = %s"
    wait_until(lambda: db.scalar(sql, (pattern, db.name)) is not None,
               what="the slow statement running")
    return int(db.scalar(sql, (pattern, db.name)))


@contextmanager
def stopped(runner: Runner) -> Iterator[None]:
    """The runner's process frozen (a stalled pod): it can neither watch nor react."""
    os.kill(runner.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(runner.proc.pid, signal.SIGCONT)


def audit_log_files(n: int, sleep: str = "") -> dict[str, str | bytes]:
    """001 makes audit_log; 002.. insert their own version once each (002 after `sleep`)."""
    files: dict[str, str | bytes] = {"001_log.sql": "CREATE TABLE audit_log (version int);"}
    for v in range(2, n + 1):
        pause = sleep if v == 2 and sleep else ""
        files[f"{v:03d}_insert.sql"] = f"{pause}INSERT INTO audit_log VALUES ({v});\n"
    return files


def each_once(db: Db, n: int) -> None:
    assert db.query("SELECT version, count(*) FROM audit_log GROUP BY 1 ORDER BY 1") == [
        (v, 1) for v in range(2, n + 1)]


def test_lock_connection_killed_during_a_slow_file_the_next_runner_applies_only_the_rest(
        db: Db, migrations: Files) -> None:
    """The issue's case: A's lock connection terminated while 002 sleeps, B starts at once."""
    folder = migrations(audit_log_files(3, "SELECT pg_sleep(5);\n"))
    a = Runner(db.url, folder)
    sleeping(db)
    terminate(db, lock_pid(db))
    b = run(db.url, folder, MIGRATE_LOCK_TIMEOUT="60s")
    first = a.finish()
    assert first.code == 4, first.stderr
    assert first.event("lock_lost")["level"] == "error"
    assert "advisory lock lost" in first.event("run_failed")["error"]
    assert b.code == 0, b.stderr
    each_once(db, 3)
    assert db.query("SELECT version, status FROM migration_history ORDER BY 1") == [
        (1, "applied"), (2, "applied"), (3, "applied")]
    # A's 002 attempt is audited as failed; every success exactly once.
    assert db.query("SELECT version, count(*) FROM migration_audit WHERE success "
                    "GROUP BY 1 ORDER BY 1") == [(1, 1), (2, 1), (3, 1)]


@pytest.mark.parametrize("fmt", [{}, SQLX], ids=["native", "sqlx"])
def test_the_fence_refuses_the_commit_of_a_runner_that_lost_its_lock(
        db: Db, migrations: Files, fmt: dict[str, str]) -> None:
    """A frozen runner cannot notice anything: its transaction, already sent with its
    COMMIT, must still fail on the server once its lock is gone."""
    folder = migrations(audit_log_files(3, "SELECT pg_sleep(6);\n"))
    a = Runner(db.url, folder, **fmt)
    work = sleeping(db)
    with stopped(a):
        terminate(db, lock_pid(db))
        wait_until(lambda: db.scalar("SELECT state FROM pg_stat_activity WHERE pid = %s",
                                     (work,)) != "active", what="A's transaction to end")
        b = run(db.url, folder, **fmt)
        assert b.code == 0, b.stderr
        assert b.event("migrations_complete")["applied"] == 2  # 002 and 003: A's 002 not kept
    first = a.finish()
    assert first.code == 4, first.stderr
    assert "lock_lost" in first.names()
    each_once(db, 3)


def test_lock_connection_killed_between_short_files_stops_the_run(
        db: Db, migrations: Files) -> None:
    """Not only while a long statement runs: between short files the watch finds the
    lock connection dead within seconds and the run stops, nothing applied twice."""
    files = audit_log_files(12)
    for v in range(2, 13):
        files[f"{v:03d}_insert.sql"] = (f"SELECT pg_sleep(0.4);\n"
                                        f"INSERT INTO audit_log VALUES ({v});\n")
    folder = migrations(files)
    a = Runner(db.url, folder)
    a.wait_for_event("migration_applied")
    terminate(db, lock_pid(db))
    killed = datetime.datetime.now(datetime.UTC).timestamp()
    first = a.finish()
    assert first.code == 4, first.stderr
    assert at(first.event("lock_lost")) - killed < 10
    done = first.names().count("migration_applied")
    assert done < 12, "the run went on without its lock"
    b = run(db.url, folder)
    assert b.code == 0, b.stderr
    each_once(db, 12)


def test_lock_connection_killed_during_a_rollback_keeps_the_history_row(
        db: Db, migrations: Files) -> None:
    folder = migrations({
        "001_t.sql": "CREATE TABLE t (id int);",
        "001_t_rollback.sql": "SELECT pg_sleep(6);\nDROP TABLE t;",
    })
    assert run(db.url, folder).code == 0
    a = Runner(db.url, folder, "rollback")
    sleeping(db)
    terminate(db, lock_pid(db))
    result = a.finish()
    assert result.code == 4, result.stderr
    assert db.table_exists("public.t")
    assert db.query("SELECT version, status FROM migration_history") == [(1, "applied")]


@pytest.mark.parametrize("fmt", [{}, SQLX], ids=["native", "sqlx"])
def test_a_history_row_is_inserted_never_overwritten(
        db: Db, migrations: Files, fmt: dict[str, str]) -> None:
    """A second applier that slipped past the lock (here: a row written by hand while the
    runner's 002 runs) fails on the history's key and rolls back its whole file."""
    folder = migrations(audit_log_files(2, "SELECT pg_sleep(5);\n"))
    a = Runner(db.url, folder, **fmt)
    sleeping(db)
    if fmt:
        db.execute("INSERT INTO _sqlx_migrations (version, description, success, checksum, "
                   "execution_time) VALUES (2, 'insert', true, '\\x00', 1)")
    else:
        db.execute("INSERT INTO migration_history (version, description, checksum, status) "
                   "VALUES (2, 'insert', 'other', 'applied')")
    result = a.finish()
    assert result.code == 1, result.stderr
    assert result.event("migration_failed")["sqlstate"] == "23505"
    assert db.scalar("SELECT count(*) FROM audit_log") == 0


@pytest.mark.parametrize("where", ["role", "database"])
def test_idle_session_timeout_never_ends_the_runners_sessions(
        db: Db, migrations: Files, where: str) -> None:
    """The issue's case: idle_session_timeout=2s and nine 0.6 s files; before, the server
    ended the idle lock connection and a second runner applied the rest again."""
    files = audit_log_files(10)
    for v in range(2, 11):
        files[f"{v:03d}_insert.sql"] = (f"SELECT pg_sleep(0.6);\n"
                                        f"INSERT INTO audit_log VALUES ({v});\n")
    folder = migrations(files)
    if where == "role":
        url = login_role(db, idle_session_timeout="2s", idle_in_transaction_session_timeout="1s")
    else:
        db.execute(f"ALTER DATABASE \"{db.name}\" SET idle_session_timeout = '2s'")
        url = db.url
    a = Runner(url, folder)
    a.wait_for_event("lock_acquired")
    b = Runner(url, folder)
    first, second = a.finish(), b.finish()
    assert (first.code, second.code) == (0, 0), first.stderr + second.stderr
    each_once(db, 10)
    assert sum(r.event("migrations_complete")["applied"] for r in (first, second)) == 10


def no_transaction_files(fmt: dict[str, str]) -> dict[str, str | bytes]:
    directive = "-- no-transaction" if fmt else "-- migrate:no-transaction"
    return {"001_t.sql": "CREATE TABLE t (id int);",
            "002_build.sql": f"{directive}\nSELECT pg_sleep(20);\n",
            "003_more.sql": "INSERT INTO t VALUES (3);"}


@pytest.mark.parametrize("fmt", [{}, SQLX], ids=["native", "sqlx"])
def test_a_no_transaction_file_still_running_elsewhere_is_waited_for_not_repaired(
        db: Db, migrations: Files, fmt: dict[str, str]) -> None:
    """The issue's case: A's lock connection dies while A's no-transaction file runs (A is
    stalled, so its statement goes on). Before: B exited 5 "run repair --failed", which
    would start the same file twice."""
    folder = migrations(no_transaction_files(fmt))
    a = Runner(db.url, folder, **fmt)
    work = sleeping(db)
    with stopped(a):
        terminate(db, lock_pid(db))
        b = run(db.url, folder, **fmt)
        assert b.code == 4, b.stderr
        elsewhere = b.event("migration_running_elsewhere")
        assert (elsewhere["version"], elsewhere["pid"]) == (2, work)
        assert elsewhere["running_s"] >= 0
        assert f"backend pid {work}" in b.event("run_failed")["error"]
        assert "repair" in b.event("run_failed")["error"]  # says not to
        repair = run(db.url, folder, "repair", "--failed", **fmt)
        assert repair.code == 4, repair.stderr
        assert "migration_running_elsewhere" in repair.names()
        rollback = run(db.url, folder, "rollback", **fmt)
        assert rollback.code == 4, rollback.stderr
    first = a.finish()
    assert first.code == 4, first.stderr  # A resumes, finds its lock gone, cancels
    assert "lock_lost" in first.names()
    # A's session is gone: now the row is an ordinary failed one, for an operator.
    wait_until(lambda: db.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                 (work,)) == 0, what="A's work session to end")
    after = run(db.url, folder, **fmt)
    assert after.code == 5, after.stderr
    assert "migration_running_elsewhere" not in after.names()
    audit = db.scalar("SELECT error_message FROM migration_audit WHERE version = 2")
    assert f"backend pid {work}" in audit


def test_the_fence_expression_holds_only_while_the_lock_connection_holds_the_lock(
        db: Db) -> None:
    """The check every fenced write runs (baseline's and repair's rows too), against real
    sessions: true while the lock connection holds the lock; an error, which fails the
    transaction, once that connection is gone or on one connection once the lock was
    taken by another session in between."""
    from runner.session.lock import AdvisoryLock, is_fence_error

    with db.connect() as lock_conn, db.connect() as work:
        lock = AdvisoryLock(lock_conn, 4242)
        lock.acquire(5)
        assert work.execute("SELECT " + lock.fence()).fetchone() == (True,)
        assert work.execute("SELECT " + lock.fence_after_unlock()).fetchone() == (True,)
        terminate(db, lock.pid)
        with pytest.raises(psycopg.Error) as lost, work.transaction():
            work.execute("CREATE TABLE written (id int)")
            work.execute("SELECT " + lock.fence())
        assert is_fence_error(lost.value)
        assert not db.table_exists("public.written")
    with db.connect() as conn, db.connect() as other:
        single = AdvisoryLock(conn, 4343)
        single.acquire(5)
        single.single = True
        relocked = f"SELECT pg_advisory_unlock_all(), {single.fence_after_unlock()}"
        assert conn.execute(relocked).fetchone() == ("", True)  # void, then the relock
        assert conn.execute("SELECT " + single.fence()).fetchone() == (True,)
        conn.execute("SELECT pg_advisory_unlock_all()")  # as the reset does, then
        assert other.execute("SELECT pg_try_advisory_lock(4343)").fetchone() == (True,)
        with pytest.raises(psycopg.Error) as taken:
            conn.execute(relocked)
        assert is_fence_error(taken.value)
