"""A network that stops forwarding outside a migration (SPEC §10.2): the first
connection's reads, the history format's and the history's reads, the bookkeeping
tables' creation, in every command. The run ends in bounded time as `connection_lost`
naming what it was doing, with nothing written and the lock released; a query that waits
for a lock another session holds is a wait, not a stall.

Each runner's query is held at a precise point by a lock the test holds (pg_stat_activity
shows it waiting), the proxy is stalled, then the lock is let go: the server answers, and
the answer never arrives."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Db, Runner, login_role, run, wait_until
from tests.proxy import Proxy

Files = Callable[[dict[str, str | bytes]], Path]
FILES: dict[str, str | bytes] = {
    "001_log.sql": "CREATE TABLE audit_log (n int);",
    "001_log_rollback.sql": "DROP TABLE audit_log;",
    "002_more.sql": "CREATE TABLE more_log (n int);",
    "002_more_rollback.sql": "DROP TABLE more_log;",
}
HISTORY_LOCKED = "LOCK TABLE migration_history IN ACCESS EXCLUSIVE MODE"
# CREATE TABLE in a schema locks the schema against a DROP; one not committed yet holds it.
SCHEMA_LOCKED = "DROP SCHEMA book"
READ_HISTORY = "SELECT version, description%"


@dataclass
class Case:
    args: tuple[str, ...]
    env: dict[str, str]
    applied: tuple[str, ...]  # applied before, by a runner on the direct connection
    hold: str  # what the test holds in an open transaction
    waiting: str  # the runner's statement, LIKE, that waits for it
    stage: str
    history: list[tuple[int]] = field(default_factory=list)  # afterwards


NATIVE = {"MIGRATE_HISTORY_FORMAT": "native"}
BOOK = {**NATIVE, "MIGRATE_SCHEMA": "book"}
CASES = {
    "migrate_reading_the_history": Case(
        (), NATIVE, ("001",), HISTORY_LOCKED, READ_HISTORY, "reading the history", [(1,)]),
    "migrate_creating_the_tables": Case(
        (), BOOK, (), SCHEMA_LOCKED, "%CREATE TABLE%", "creating the bookkeeping tables"),
    "status_choosing_the_format": Case(
        ("status",), {}, ("001",), HISTORY_LOCKED, "SELECT pg_catalog.count(*)%",
        "choosing the history format", [(1,)]),
    "rollback_reading_the_history": Case(
        ("rollback",), NATIVE, ("001", "002"), HISTORY_LOCKED, READ_HISTORY,
        "reading the history", [(1,), (2,)]),
    "baseline_creating_the_tables": Case(
        ("baseline", "--to", "1"), BOOK, (), SCHEMA_LOCKED, "%CREATE TABLE%",
        "creating the bookkeeping tables"),
}


def runner_waits(db: Db, like: str) -> None:
    """The runner's statement like `like` is in the server, waiting for a lock."""
    wait_until(lambda: bool(db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migration-runner' "
        "AND datname = %s AND wait_event_type = 'Lock' AND query LIKE %s",
        (db.name, like))), what=f"the runner's {like!r} waiting for the test's lock")


def nothing_left(db: Db, stderr: str) -> None:
    """No server process of the runner, no advisory lock: a retry starts at once."""
    wait_until(lambda: db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migration-runner' "
        "AND datname = %s", (db.name,)) == 0, what="the runner's sessions ended\n" + stderr
        + str(db.query("SELECT pid, state, query FROM pg_stat_activity WHERE datname = %s",
                       (db.name,))))
    assert db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


@pytest.mark.parametrize("name", list(CASES))
def test_proxy_that_stops_forwarding_outside_a_migration_is_connection_lost(
        db: Db, migrations: Files, proxy: Proxy, name: str) -> None:
    case = CASES[name]
    folder = migrations(FILES)
    if case.applied:
        only = int(case.applied[-1])
        assert run(db.url, folder, "--to", str(only), **case.env).code == 0
    if "MIGRATE_SCHEMA" in case.env:
        db.execute("CREATE SCHEMA book")
    with psycopg.connect(db.url) as holder:  # a transaction, open until rolled back
        holder.execute(case.hold)
        runner = Runner(proxy.url(db.name), folder, *case.args, **case.env)
        runner_waits(db, case.waiting)
        proxy.stall()
        stalled = time.monotonic()
        holder.rollback()  # the server answers the runner; the proxy keeps the answer
    result = runner.finish(timeout=45)
    elapsed = time.monotonic() - stalled
    print(f"stalled to exit: {elapsed:.1f}s")
    assert result.code == 3, result.stderr
    assert elapsed < 30, f"{elapsed:.0f}s"
    event = result.event("connection_lost")
    assert event["stage"] == case.stage, event
    assert "stalled" in event and case.stage in event["error"], event
    assert not {"migration_started", "rollback_started", "migration_baselined"} & set(
        result.names())
    nothing_left(db, result.stderr)
    if "MIGRATE_SCHEMA" in case.env:  # the tables' creation was rolled back whole
        assert not db.table_exists("book.migration_history")
        assert not db.table_exists("book.migration_audit")
    else:
        assert db.query("SELECT version FROM migration_history ORDER BY 1") == case.history
        assert db.scalar("SELECT count(*) FROM migration_audit WHERE direction <> 'up'") == 0
    assert db.table_exists("more_log") == (case.history == [(1,), (2,)])


@pytest.mark.parametrize("limit", [None, 1])
def test_query_waiting_for_a_lock_beyond_the_stall_limit_is_not_severed(
        db: Db, migrations: Files, limit: int | None) -> None:
    """An ALTER of the history table in another session: the runner's read shows
    `active` in the server for as long as it waits, so it waits, past the 10 s after which
    a silent connection is asked about, and then applies. With a connection limit of one
    the question is refused (53300): the server is alive, and the wait goes on."""
    folder = migrations(FILES)
    url = db.url if limit is None else login_role(db, connection_limit=limit)
    assert run(url, folder, "--to", "1", **NATIVE).code == 0
    with psycopg.connect(db.url) as holder:
        holder.execute(HISTORY_LOCKED)
        runner = Runner(url, folder, **NATIVE, MIGRATE_LOG_LEVEL="debug")
        runner_waits(db, READ_HISTORY)
        wait_until(lambda: db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s "
            "AND wait_event_type = 'Lock' AND clock_timestamp() - query_start > '13s'",
            (db.name, READ_HISTORY)) == 1, what="the runner waiting for 13 s")
        assert runner.proc.poll() is None
    result = runner.finish(timeout=30)
    assert result.code == 0, result.stderr
    assert "connection_lost" not in result.names()
    assert ("silence_ask_refused" in result.names()) == (limit is not None)
    assert db.query("SELECT version FROM migration_history ORDER BY 1") == [(1,), (2,)]
