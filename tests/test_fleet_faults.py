"""Fleet mode on a hostile day (SPEC §11): a held lock, SIGTERM mid-fleet, the server's
connection budget."""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.histories.sqlx import lock_key
from tests.conftest import Runner, wait_until
from tests.fleet import Sites, make_sites
from tests.pg import Cluster


@pytest.fixture
def sites(cluster: Cluster, tmp_path: Path) -> Iterator[Sites]:
    found = make_sites(cluster, tmp_path, 6)
    yield found
    found.drop()


def start(sites: Sites, **env: str) -> Runner:
    env.setdefault("MIGRATE_TARGETS", ",".join(sites.names))
    env.setdefault("MIGRATE_WAIT_TIMEOUT", "5")
    return Runner(sites.base, sites.folder, "migrate", **env)


def wait_for_count(runner: Runner, name: str, count: int, timeout: float = 60,
                   **match: Any) -> list[dict[str, Any]]:
    """Read the log until `count` events `name` (with the `match` fields) were logged."""
    deadline = time.monotonic() + timeout

    def found() -> list[dict[str, Any]]:
        return [e for e in runner.events if e.get("event") == name
                and all(e.get(k) == v for k, v in match.items())]

    while len(found()) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            line = runner._queue.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            runner._queue.put(None)
            break
        runner._record(line)
    events = found()
    assert len(events) >= count, f"{len(events)} {name} events:\n{''.join(runner.lines)}"
    return events


def test_locked_site_is_deferred_without_holding_a_slot(sites: Sites, tmp_path: Path) -> None:
    locked = sites.names[0]  # first in key order, and one slot only
    holder = sites.db(locked).connect()
    holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(locked),))
    out = tmp_path / "summary.json"
    runner = start(sites, MIGRATE_CONCURRENCY="1", MIGRATE_LOCK_TIMEOUT="120",
                   MIGRATE_SUMMARY_FILE=str(out))
    try:
        assert wait_for_count(runner, "target_deferred", 1)[0]["target"] == locked
        # Every other site is done while the first one still waits for its lock.
        done = wait_for_count(runner, "target_done", 5)
        assert locked not in {e["target"] for e in done}
    finally:
        holder.close()  # the lock goes with the session
    result = runner.finish(timeout=60)
    assert result.code == 0, result.stderr
    assert sites.versions() == {n: 3 for n in sites.names}
    assert json.loads(out.read_text())["summary"]["applied"] == 6


def test_lock_never_released_fails_with_4(sites: Sites, tmp_path: Path) -> None:
    locked = sites.names[3]
    holder = sites.db(locked).connect()
    holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(locked),))
    out = tmp_path / "summary.json"
    try:
        result = start(sites, MIGRATE_LOCK_TIMEOUT="1", MIGRATE_TARGET_RETRIES="0",
                       MIGRATE_SUMMARY_FILE=str(out)).finish(timeout=60)
    finally:
        holder.close()
    assert result.code == 4, result.stderr  # every failure was the lock: a retry can help
    entry = {t["target"]: t for t in json.loads(out.read_text())["targets"]}[locked]
    assert (entry["status"], entry["exit_code"]) == ("failed", 4)
    assert sites.versions() == {n: (2 if n == locked else 3) for n in sites.names}


def test_sigterm_mid_fleet(sites: Sites, tmp_path: Path) -> None:
    """In-flight sites stop as one run does on SIGTERM (statement cancelled, rolled back,
    audit row, lock released); the rest are not started; the summary is written; 143."""
    (sites.folder / "004_slow.up.sql").write_text("SELECT pg_sleep(120);\n")
    out = tmp_path / "summary.json"
    runner = start(sites, MIGRATE_CONCURRENCY="2", MIGRATE_SUMMARY_FILE=str(out))
    started = wait_for_count(runner, "migration_started", 2, version=4)
    in_flight = {e["target"] for e in started}
    wait_until(lambda: sites.db(sites.names[0]).scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%'") == 2,
        what="both sites' 004 running on the server")
    runner.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    result = runner.finish(timeout=30)
    assert result.code == 143, result.stderr
    assert time.monotonic() - sent < 10
    statuses = {t["target"]: t["status"] for t in json.loads(out.read_text())["targets"]}
    assert {n for n, s in statuses.items() if s == "interrupted"} == in_flight
    assert {n for n, s in statuses.items() if s == "not_started"} == set(sites.names) - in_flight
    for name in in_flight:
        db = sites.db(name)
        assert db.scalar("SELECT count(*) FROM _sqlx_migrations WHERE version = 4") == 0
        assert db.scalar("SELECT count(*) FROM migration_audit WHERE version = 4 "
                         "AND NOT success") == 1
    assert sites.db(sites.names[0]).scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' "
        "AND pid <> pg_backend_pid()") == 0
    assert sites.db(sites.names[0]).scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    assert result.event("fleet_complete")["interrupted"] == 2


def test_connections_stay_within_the_budget(cluster: Cluster, tmp_path: Path) -> None:
    sites = make_sites(cluster, tmp_path, 12)
    seen: list[int] = []
    done = threading.Event()

    def poll() -> None:
        with cluster.connect() as conn:
            while not done.is_set():
                row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                   "WHERE application_name = 'migration-runner'").fetchone()
                seen.append(int(row[0]) if row else 0)
                time.sleep(0.005)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        result = start(sites, MIGRATE_CONCURRENCY="3").finish(timeout=120)
    finally:
        done.set()
        watcher.join(10)
    assert result.code == 0, result.stderr
    assert 0 < max(seen) <= 6, seen
    assert sites.versions() == {n: 3 for n in sites.names}
    sites.drop()


def test_role_connection_limit_below_the_need_still_finishes(
        cluster: Cluster, migrations: Any) -> None:
    """Concurrency 2 needs 4 connections; the role may open 3. Refused connections
    (53300) wait, as SPEC §3 says, and every site is migrated."""
    role = f"fleet_limited_{id(migrations) % 100000}"
    names = [f"{role}_site_{i}" for i in range(6)]
    with cluster.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 3")
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {role}')
    folder = migrations({"001_sites.sql": "CREATE TABLE site_notes (id int);\n"})
    base = cluster.url("postgres", user=role)
    result = Runner(base, folder, "migrate", MIGRATE_TARGETS=",".join(names),
                    MIGRATE_CONCURRENCY="2", MIGRATE_WAIT_TIMEOUT="60").finish(timeout=120)
    assert result.code == 0, result.stderr
    for name in names:
        with cluster.connect(name) as conn:
            row = conn.execute("SELECT count(*) FROM migration_history").fetchone()
            assert row is not None and row[0] == 1
    with cluster.connect() as conn:
        for name in names:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_no_live_status_line_for_concurrent_targets(sites: Sites) -> None:
    """The live line is one run's; on a terminal the fleet's console lines, each
    prefixed with its site, say what runs."""
    from tests.test_watch import _on_a_terminal

    (sites.folder / "004_slow.up.sql").write_text("SELECT pg_sleep(1.5);\n")
    two = sites.names[:2]
    shown = _on_a_terminal(sites.db("postgres"), sites.folder, "console",
                           MIGRATE_TARGETS=",".join(two))
    assert "applying 004_slow" not in shown
    assert all(f"[{name}] migration_applied" in shown for name in two), shown
