"""A connection that dies or stalls mid-migration (SPEC §10.2): bounded waits, SIGTERM,
`connection_lost` with the truth learned by reconnecting."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Db, Runner, run, wait_until
from tests.pg import Cluster, _as_postgres
from tests.proxy import LOCK, WORK, Proxy

Files = Callable[[dict[str, str | bytes]], Path]


def wait_for_statement(db: Db, like: str) -> None:
    wait_until(lambda: bool(db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND datname = %s",
        (like, db.name))), what=f"a statement like {like!r} running")


def lost(result: Any) -> dict[str, Any]:
    event: dict[str, Any] = result.event("connection_lost")
    assert result.code == 3, result.stderr
    assert "SQLSTATE None" not in result.stderr
    assert "line" not in event and "column" not in event
    assert "migration_failed" not in result.names()
    return event


def test_proxy_that_stops_forwarding_after_the_commit_is_connection_lost_committed(
        db: Db, migrations: Files, proxy: Proxy) -> None:
    """Issue 18 B: the server commits 002, its answer never arrives."""
    folder = migrations({
        "001_log.sql": "CREATE TABLE audit_log (n int);",
        "002_seed.sql": "SELECT pg_sleep(2);\nINSERT INTO audit_log VALUES (2);\n",
        "003_more.sql": "INSERT INTO audit_log VALUES (3);",
    })
    term = folder / "term"
    runner = Runner(proxy.url(db.name), folder, MIGRATE_TERMINATION_LOG=str(term))
    wait_for_statement(db, "SELECT pg_sleep(2)%")
    proxy.stall()
    stalled = time.monotonic()
    result = runner.finish(timeout=120)
    elapsed = time.monotonic() - stalled
    event = lost(result)
    print(f"stalled to exit: {elapsed:.1f}s")
    assert elapsed < 60, f"{elapsed:.0f}s"
    assert (event["version"], event["committed"]) == (2, True), event
    assert "stalled" in event
    assert "002_seed.sql" in term.read_text() and "committed: true" in term.read_text()
    assert db.query("SELECT n FROM audit_log") == [(2,)]
    assert db.query("SELECT version FROM migration_history ORDER BY 1") == [(1,), (2,)]
    assert db.scalar("SELECT count(*) FROM migration_audit WHERE NOT success") == 0
    # Both old sessions were ended, though the proxy still holds their sockets: a
    # retry takes the lock at once.
    again = run(db.url, folder, MIGRATE_LOCK_TIMEOUT="0")
    assert again.code == 0, again.stderr
    assert db.query("SELECT n FROM audit_log ORDER BY 1") == [(2,), (3,)]


def test_proxy_that_stops_forwarding_mid_statement_is_rolled_back(
        db: Db, migrations: Files, proxy: Proxy) -> None:
    """Stalled while the statement still runs: the server process is ended before the
    history is read, so `committed: false` is the final word, not a guess."""
    db.execute("CREATE TABLE sleep_control (seconds int); INSERT INTO sleep_control VALUES (600)")
    folder = migrations({
        "001_log.sql": "CREATE TABLE audit_log (n int);",
        "002_slow.sql": "INSERT INTO audit_log VALUES (2);\n"
                        "SELECT pg_sleep(seconds) FROM sleep_control;\n",
    })
    runner = Runner(proxy.url(db.name), folder)
    wait_for_statement(db, "SELECT pg_sleep(seconds)%")
    proxy.stall()
    result = runner.finish(timeout=120)
    event = lost(result)
    assert (event["version"], event["committed"]) == (2, False), event
    assert db.query("SELECT n FROM audit_log") == []
    assert db.query("SELECT version FROM migration_history") == [(1,)]
    assert db.query("SELECT version, error_message LIKE 'connection lost: %%' "
                    "FROM migration_audit WHERE NOT success") == [(2, True)]


@pytest.mark.parametrize("kill", [False, True])
def test_work_connection_alone_stalled_after_commit_is_found_by_the_watch(
        db: Db, migrations: Files, proxy: Proxy, kill: bool) -> None:
    """The lock connection still answers: the watch sees the work backend idle since
    the COMMIT (or, killed after it, gone) while the runner waits for the answer."""
    folder = migrations({
        "001_log.sql": "CREATE TABLE audit_log (n int);",
        "002_seed.sql": "SELECT pg_sleep(2);\nINSERT INTO audit_log VALUES (2);\n",
    })
    runner = Runner(proxy.url(db.name), folder)
    wait_for_statement(db, "SELECT pg_sleep(2)%")
    proxy.stall(WORK)
    wait_until(lambda: db.scalar("SELECT count(*) FROM migration_history") == 2,
               what="002 committed")
    if kill:
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE query LIKE 'COMMIT%' AND datname = '{db.name}'")
    result = runner.finish(timeout=120)
    event = lost(result)
    assert (event["version"], event["committed"]) == (2, True), event
    assert ("gone" if kill else "idle") in event["stalled"]
    assert run(db.url, folder, MIGRATE_LOCK_TIMEOUT="0").code == 0  # the lock was released


def test_lock_connection_alone_stalled_does_not_hold_the_end_of_the_run(
        db: Db, migrations: Files, proxy: Proxy) -> None:
    """The watch's query on it and the unlock after the last file each have a deadline."""
    folder = migrations({
        "001_log.sql": "CREATE TABLE audit_log (n int);",
        "002_slow.sql": "SELECT pg_sleep(2);\nINSERT INTO audit_log VALUES (2);\n",
    })
    runner = Runner(proxy.url(db.name), folder)
    wait_for_statement(db, "SELECT pg_sleep(2)%")
    proxy.stall(LOCK)
    started = time.monotonic()
    result = runner.finish(timeout=120)
    assert time.monotonic() - started < 40, result.stderr
    # Whether a run whose lock connection stopped answering may finish is the lock's
    # rules' to say (0, or 4 once it is noticed); it ends, and applies each file once.
    assert result.code in (0, 4), result.stderr
    assert db.query("SELECT n FROM audit_log") == [(2,)]


def _terminated_within_10s(runner: Runner) -> None:
    sent = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    result = runner.finish(timeout=60)
    assert time.monotonic() - sent < 10
    assert result.code == 143, result.stderr
    assert result.events[-1]["event"] == "interrupted"


def test_sigterm_while_the_network_is_stalled_ends_within_10s(
        db: Db, migrations: Files, proxy: Proxy) -> None:
    folder = migrations({
        "001_log.sql": "CREATE TABLE audit_log (n int);",
        "002_slow.sql": "SELECT pg_sleep(600);",
    })
    runner = Runner(proxy.url(db.name), folder)
    wait_for_statement(db, "SELECT pg_sleep(600)%")
    proxy.stall()
    _terminated_within_10s(runner)


def test_sigterm_while_the_lock_connection_is_stalled_between_files_ends_within_10s(
        db: Db, migrations: Files, proxy: Proxy) -> None:
    """The watch's query on the stalled lock connection, and the unlock after it."""
    folder = migrations({
        "001_log.sql": "CREATE TABLE audit_log (n int);",
        "002_slow.sql": "SELECT pg_sleep(3);",
    })
    runner = Runner(proxy.url(db.name), folder)
    wait_for_statement(db, "SELECT pg_sleep(3)%")
    proxy.stall()
    # The server finishes 002; the runner waits for an answer and its watch queries hang.
    wait_until(lambda: not db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%%' "
        "AND state = 'active' AND datname = %s", (db.name,)), what="002 finished")
    _terminated_within_10s(runner)


def test_work_connection_terminated_during_a_sleep_is_connection_lost(
        db: Db, migrations: Files) -> None:
    folder = migrations({
        "001_log.sql": "CREATE TABLE audit_log (n int);",
        "002_slow.sql": "INSERT INTO audit_log VALUES (2);\nSELECT pg_sleep(600);\n",
    })
    runner = Runner(db.url, folder)
    wait_for_statement(db, "SELECT pg_sleep(600)%")
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               f"WHERE query LIKE 'SELECT pg_sleep(600)%' AND datname = '{db.name}'")
    result = runner.finish(timeout=60)
    event = lost(result)
    assert (event["version"], event["committed"], event["server_restarted"]) == (
        2, False, False), event
    assert db.query("SELECT n FROM audit_log") == []
    assert db.query("SELECT version, success FROM migration_audit ORDER BY id") == [
        (1, True), (2, False)]


def test_no_transaction_file_terminated_part_way_names_57p01_and_the_repair(
        db: Db, migrations: Files) -> None:
    """Outside a pipeline psycopg has the server's FATAL: its SQLSTATE is reported."""
    folder = migrations({
        "001_log.sql": "CREATE TABLE audit_log (n int);",
        "002_slow.sql": "-- migrate:no-transaction\nINSERT INTO audit_log VALUES (2);\n"
                        "SELECT pg_sleep(600);\nINSERT INTO audit_log VALUES (3);\n",
    })
    runner = Runner(db.url, folder, MIGRATE_TERMINATION_LOG=str(folder / "term"))
    wait_for_statement(db, "SELECT pg_sleep(600)%")
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               f"WHERE query LIKE 'SELECT pg_sleep(600)%' AND datname = '{db.name}'")
    result = runner.finish(timeout=60)
    event = lost(result)
    assert (event["sqlstate"], event["committed"]) == ("57P01", False), event
    term = (folder / "term").read_text()
    assert "(SQLSTATE 57P01)" in term and "1 of 3" in term and "repair --failed" in term
    assert db.query("SELECT version, status FROM migration_history ORDER BY 1") == [
        (1, "applied"), (2, "failed")]


def _restart(cluster: Cluster, mode: str) -> None:
    subprocess.run(_as_postgres([str(cluster.bin / "pg_ctl"), "-D", str(cluster.data), "-w",
                                 "-m", mode, "stop"]), check=True, capture_output=True)
    cluster.start()


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    yield c
    c.destroy()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_during_a_migration_reconnects_and_audits(
        own_cluster: Cluster, migrations: Files, mode: str) -> None:
    folder = migrations({
        "001_log.sql": "CREATE TABLE audit_log (n int);",
        "002_seed.sql": "CREATE TABLE half (id int);\nINSERT INTO audit_log VALUES (2);\n"
                        "SELECT pg_sleep(600);\n",
    })
    db = Db(own_cluster, "postgres")
    runner = Runner(db.url, folder, MIGRATE_WAIT_TIMEOUT="60s")
    wait_for_statement(db, "SELECT pg_sleep(600)%")
    _restart(own_cluster, mode)
    result = runner.finish(timeout=120)
    event = lost(result)
    assert (event["version"], event["committed"], event["server_restarted"]) == (
        2, False, True), event
    # fast: the FATAL the lock connection got; immediate: the WARNING each session got.
    assert event["sqlstate"] == "57P01"
    assert "migration_notice" not in result.names()
    assert not db.table_exists("half")
    assert db.query("SELECT version, success, error_message LIKE 'connection lost: %%' "
                    "FROM migration_audit ORDER BY id") == [(1, True, None), (2, False, True)]


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
def test_sockets_give_up_on_a_dead_peer_within_60s(db: Db) -> None:
    """Keepalives bound an idle wait, tcp_user_timeout a wait with data unacknowledged
    (packets dropped): both set on the socket itself, not only asked for."""
    import os

    from runner.session.database import connect
    from runner.settings import resolve

    with connect(resolve({}, {"DATABASE_URL": db.url}), "test") as conn, \
            socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        def option(name: str) -> int:
            return sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))

        user_timeout_s = option("TCP_USER_TIMEOUT") / 1000
        keepalive_s = option("TCP_KEEPIDLE") + option("TCP_KEEPINTVL") * option("TCP_KEEPCNT")
    assert 0 < user_timeout_s <= 60 and 0 < keepalive_s <= 60


def test_proxy_that_stops_forwarding_while_the_runner_waits_for_the_lock(
        db: Db, migrations: Files, proxy: Proxy) -> None:
    """Before any migration: the lock's poll gets no answer. The wait ends within the
    poll's bound as a lost connection, not at MIGRATE_LOCK_TIMEOUT, and not never."""
    folder = migrations({"001_slow.sql": "SELECT pg_sleep(60);\n"})
    holder = Runner(db.url, folder)
    try:
        wait_for_statement(db, "SELECT pg_sleep(60)%")
        waiting = Runner(proxy.url(db.name), folder, MIGRATE_LOCK_TIMEOUT="600",
                         MIGRATE_WAIT_TIMEOUT="5")
        waiting.wait_for_event("lock_waiting")
        proxy.stall()
        stalled = time.monotonic()
        result = waiting.finish(timeout=90)
        assert result.code == 3, result.stderr
        assert time.monotonic() - stalled < 40
        assert "connection_lost" in result.names(), result.stderr
        assert "migration_started" not in result.names()
    finally:
        holder.proc.send_signal(signal.SIGTERM)
        holder.finish(timeout=30)

