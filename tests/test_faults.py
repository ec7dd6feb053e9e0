"""Faults with real processes: races, kills, signals, a late or absent server, lock waits."""

from __future__ import annotations

import datetime
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import PASSWORD, Db, Runner, run, wait_until
from tests.pg import Cluster, free_port

Files = Callable[[dict[str, str | bytes]], Path]


def at(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


def runner_backends(db: Db) -> int:
    return int(db.scalar("SELECT count(*) FROM pg_stat_activity "
                         "WHERE application_name = 'migration-runner' AND datname = %s",
                         (db.name,)))


def wait_for_sleeping_statement(db: Db) -> None:
    wait_until(lambda: bool(db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%' "
        "AND datname = %s", (db.name,))), what="the slow statement running")


def test_many_runners_at_once_apply_each_migration_exactly_once(
        db: Db, migrations: Files) -> None:
    content: dict[str, str | bytes] = {"001_log.sql": "CREATE TABLE applied_log (version int);"}
    for v in range(2, 21):
        content[f"{v:03d}_m.sql"] = (f"CREATE TABLE t{v} (id int);\n"
                                     f"INSERT INTO applied_log VALUES ({v});\n")
    folder = migrations(content)
    runners = [Runner(db.url, folder) for _ in range(12)]
    results = [r.finish(timeout=120) for r in runners]
    assert [r.code for r in results] == [0] * 12, [r.stderr for r in results if r.code]
    assert db.scalar("SELECT count(*), count(DISTINCT version) FROM applied_log") == 19
    assert db.query("SELECT count(*), count(DISTINCT version) FROM applied_log") == [(19, 19)]
    assert db.scalar("SELECT count(*) FROM migration_history WHERE status = 'applied'") == 20
    assert db.scalar("SELECT count(*) FROM migration_audit") == 20
    applied = sum(r.event("migrations_complete")["applied"] for r in results)
    assert applied == 20
    assert sum(1 for r in results if r.event("migrations_complete")["applied"] == 0) == 11


def test_lock_holder_killed_mid_migration_next_runner_finishes(
        db: Db, migrations: Files) -> None:
    # The test's own table sets how long 2_slow sleeps: long for the victim, not after.
    db.execute("CREATE TABLE sleep_control (seconds int); INSERT INTO sleep_control VALUES (60)")
    folder = migrations({
        "1_a.sql": "CREATE TABLE a (id int);",
        "2_slow.sql": "CREATE TABLE slow (id int);\n"
                      "SELECT pg_sleep(seconds) FROM sleep_control;\n",
        "3_c.sql": "CREATE TABLE c (id int);",
    })
    victim = Runner(db.url, folder)
    victim.wait_for_event("migration_started")  # 1_a
    wait_for_sleeping_statement(db)
    victim.proc.kill()
    victim.proc.wait()
    db.execute("UPDATE sleep_control SET seconds = 0")
    started = time.monotonic()
    result = run(db.url, folder, MIGRATE_LOCK_TIMEOUT="30s")
    assert result.code == 0, result.stderr
    # client_connection_check_interval lets the server notice the dead client quickly.
    assert time.monotonic() - started < 20, result.stderr
    assert db.query("SELECT version, status FROM migration_history ORDER BY 1") == [
        (1, "applied"), (2, "applied"), (3, "applied")]
    assert result.event("migrations_complete")["applied"] == 2


def test_sigterm_during_long_statement_rolls_back_and_exits_143(
        db: Db, migrations: Files) -> None:
    folder = migrations({
        "1_a.sql": "CREATE TABLE a (id int);",
        "2_slow.sql": "CREATE TABLE half (id int);\nSELECT pg_sleep(60);\n",
    })
    runner = Runner(db.url, folder)
    runner.wait_for_event("migration_started")
    wait_for_sleeping_statement(db)
    sent = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    result = runner.finish(timeout=30)
    assert result.code == 143, result.stderr
    assert time.monotonic() - sent < 5
    assert result.event("interrupted")["signal"] == "SIGTERM"
    assert not db.table_exists("half")
    assert db.query("SELECT version FROM migration_history") == [(1,)]
    assert db.query("SELECT version, success, error_message FROM migration_audit "
                    "WHERE NOT success") == [(2, False, "interrupted by signal 15")]
    wait_until(lambda: runner_backends(db) == 0, timeout=5, what="runner sessions gone")
    assert not db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")


def test_sigint_while_waiting_for_lock_exits_130(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    with db.connect() as holder:
        from runner.session.lock import lock_key

        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(db.name, "public"),))
        runner = Runner(db.url, folder)
        waiting = runner.wait_for_event("lock_waiting")
        assert waiting["holder_pid"] == holder.info.backend_pid
        runner.proc.send_signal(signal.SIGINT)
        result = runner.finish(timeout=30)
    assert result.code == 130, result.stderr
    assert not db.table_exists("a")


def test_lock_timeout_exit_4_names_holder(db: Db, migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    with db.connect() as holder:
        from runner.session.lock import lock_key

        holder.execute("SET application_name = 'stuck-job'")
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(db.name, "public"),))
        result = run(db.url, folder, MIGRATE_LOCK_TIMEOUT="1s")
    assert result.code == 4
    waiting = result.event("lock_waiting")
    assert waiting["holder_application_name"] == "stuck-job"
    assert waiting["holder_client_addr"] == "127.0.0.1"
    assert not db.table_exists("a")


def test_a_waiting_runner_takes_over_as_the_holder_releases(db: Db, migrations: Files) -> None:
    folder = migrations({"1_slow.sql": "SELECT pg_sleep(4);\nCREATE TABLE a (id int);\n"})
    first = Runner(db.url, folder)
    first.wait_for_event("lock_acquired")
    second = Runner(db.url, folder)
    second.wait_for_event("lock_waiting")
    a, b = first.finish(), second.finish()
    assert (a.code, b.code) == (0, 0), a.stderr + b.stderr
    released = at(a.event("migrations_complete"))
    taken = at(b.event("lock_acquired"))
    # Woken by the holder's NOTIFY: after seconds of waiting its polls are 0.5-1.5 s apart.
    assert taken - released < 0.25, f"took over {taken - released:.3f} s after the release"
    assert b.event("migrations_complete")["applied"] == 0
    assert [e["purpose"] for e in b.events if e["event"] == "db_connected"] == ["lock"]


def test_server_started_late_runner_waits_then_succeeds(migrations: Files) -> None:
    late = Cluster()
    try:
        folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
        runner = Runner(late.url(), folder, MIGRATE_WAIT_TIMEOUT="60s")
        retry = runner.wait_for_event("db_wait_retry")
        assert retry["reason"] == "connection_refused" and retry["attempt"] == 1
        assert isinstance(retry["delay_s"], float)
        late.start()
        result = runner.finish(timeout=60)
        assert result.code == 0, result.stderr
        with late.connect() as conn:
            assert conn.execute("SELECT count(*) FROM migration_history").fetchone() == (1,)
    finally:
        late.destroy()


def test_sigterm_while_waiting_for_the_database_exits_143(
        migrations: Files, tmp_path: Path) -> None:
    term = tmp_path / "term"
    folder = migrations({"1_a.sql": "SELECT 1;"})
    runner = Runner(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", folder,
                    MIGRATE_WAIT_TIMEOUT="60s", MIGRATE_TERMINATION_LOG=str(term))
    runner.wait_for_event("db_wait_retry")
    sent = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    result = runner.finish(timeout=30)
    assert result.code == 143
    assert time.monotonic() - sent < 5
    assert result.events[-1]["event"] == "interrupted"
    assert result.events[-1]["level"] == "error"
    assert term.read_text() == "interrupted by SIGTERM\n"


def test_server_never_there_exit_3_within_wait_timeout(migrations: Files) -> None:
    folder = migrations({"1_a.sql": "SELECT 1;"})
    started = time.monotonic()
    result = run(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", folder,
                 MIGRATE_WAIT_TIMEOUT="2s")
    elapsed = time.monotonic() - started
    assert result.code == 3
    assert elapsed < 6
    assert len([e for e in result.events if e["event"] == "db_wait_retry"]) >= 2
    assert "not reachable within 2s" in result.events[-1]["error"]


def test_wrong_password_exit_3_at_once(
        cluster_with_password: tuple[str, str], migrations: Files) -> None:
    url, password = cluster_with_password
    bad = url.replace(password, "wrong-password")
    result = run(bad, migrations({"1_a.sql": "SELECT 1;"}), MIGRATE_WAIT_TIMEOUT="60s")
    assert result.code == 3
    assert "db_wait_retry" not in result.names()
    assert result.events[-1]["sqlstate"] == "28P01"
    assert "wrong-password" not in result.stderr
    # Not to be mistaken for nothing listening ("connection refused", retried).
    error = result.events[-1]["error"]
    assert "rejected the login: wrong password, or no such user" in error, error
    assert "refused the connection" not in error


def test_a_role_that_may_not_log_in_is_not_a_wrong_password(
        password_cluster: Cluster, migrations: Files) -> None:
    with password_cluster.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS nologin_role")
        conn.execute(f"CREATE ROLE nologin_role NOLOGIN PASSWORD '{PASSWORD}'")
    url = password_cluster.url("app", user="nologin_role")
    result = run(url, migrations({"1_a.sql": "SELECT 1;"}), MIGRATE_WAIT_TIMEOUT="60s")
    assert result.code == 3
    assert result.events[-1]["sqlstate"] == "28000"
    error = result.events[-1]["error"]
    assert "rejected the login: no pg_hba.conf entry allows" in error, error
    assert "the role may not log in" in error and "wrong password" not in error


def test_missing_database_exit_3_at_once(cluster: Cluster, migrations: Files) -> None:
    result = run(cluster.url("no_such_db"), migrations({"1_a.sql": "SELECT 1;"}))
    assert result.code == 3
    assert result.events[-1]["sqlstate"] == "3D000"
    assert "db_wait_retry" not in result.names()
    assert "has no such database" in result.events[-1]["error"]


def _blocker(db: Db) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(db.url)
    conn.execute("LOCK TABLE busy IN ACCESS SHARE MODE")  # open transaction keeps it
    return conn


def test_ddl_lock_timeout_retried_until_the_other_session_lets_go(
        db: Db, migrations: Files) -> None:
    db.execute("CREATE TABLE busy (id int)")
    folder = migrations({"1_alter.sql": "ALTER TABLE busy ADD COLUMN note text;"})
    blocker = _blocker(db)
    try:
        runner = Runner(db.url, folder, MIGRATE_DDL_LOCK_TIMEOUT="200ms",
                        MIGRATE_DDL_LOCK_RETRIES="8")
        retry = runner.wait_for_event("migration_lock_retry")
        assert (retry["sqlstate"], retry["attempt"], retry["version"]) == ("55P03", 1, 1)
    finally:
        blocker.rollback()
        blocker.close()
    result = runner.finish(timeout=60)
    assert result.code == 0, result.stderr
    assert db.scalar("SELECT count(*) FROM information_schema.columns "
                     "WHERE table_name = 'busy' AND column_name = 'note'") == 1
    attempts = db.query("SELECT success FROM migration_audit ORDER BY id")
    assert attempts[-1] == (True,) and (False,) in attempts


def test_ddl_lock_retries_used_up_exit_1(db: Db, migrations: Files) -> None:
    db.execute("CREATE TABLE busy (id int)")
    folder = migrations({"1_alter.sql": "ALTER TABLE busy ADD COLUMN note text;"})
    blocker = _blocker(db)
    try:
        result = run(db.url, folder, MIGRATE_DDL_LOCK_TIMEOUT="100ms",
                     MIGRATE_DDL_LOCK_RETRIES="1")
    finally:
        blocker.close()
    assert result.code == 1
    assert result.event("migration_failed")["sqlstate"] == "55P03"
    # The last word says what to do (too short a wait for the watch to name the blocker,
    # whom tests/test_watch.py sees named): find it, or raise the two settings.
    error = result.event("run_failed")["error"]
    assert "gave up after 2 attempts of MIGRATE_DDL_LOCK_TIMEOUT=0.1s" in error, error
    assert "find the session holding the lock (pg_stat_activity)" in error, error
    assert "MIGRATE_DDL_LOCK_RETRIES (now 1) or MIGRATE_DDL_LOCK_TIMEOUT" in error, error
    assert db.scalar("SELECT count(*) FROM migration_audit WHERE NOT success") == 2
    assert not db.scalar("SELECT count(*) FROM migration_history")


def test_statement_timeout_fails_the_migration(db: Db, migrations: Files) -> None:
    folder = migrations({"1_slow.sql": "SELECT pg_sleep(10);"})
    result = run(db.url, folder, MIGRATE_STATEMENT_TIMEOUT="300ms")
    assert result.code == 1
    assert result.event("migration_failed")["sqlstate"] == "57014"
    # The last word names the limit and what to do about it.
    error = result.event("run_failed")["error"]
    assert "MIGRATE_STATEMENT_TIMEOUT=0.3s: raise it, or set 0 for none" in error, error


def test_session_settings_application_name_and_keepalives(db: Db, migrations: Files) -> None:
    folder = migrations({"1_look.sql": (
        "CREATE TABLE seen AS SELECT current_setting('application_name') AS app, "
        "current_setting('tcp_keepalives_idle') AS idle, "
        "current_setting('client_connection_check_interval') AS check_interval;")})
    assert run(db.url, folder).code == 0
    assert db.query("SELECT app, idle, check_interval FROM seen") == [
        ("migration-runner", "10", "2s")]
