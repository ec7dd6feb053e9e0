"""The advisory lock that makes one runner at a time work on a database (SPEC §3).

Session-level, on a connection of its own, taken with `pg_try_advisory_lock` in a backoff
loop: a blocking `pg_advisory_lock` would leave a waiting backend whose snapshot deadlocks
the holder's CREATE INDEX CONCURRENTLY. Waiters LISTEN and the holder NOTIFYs as it
releases, so the next one starts at once rather than at its next poll. The lock dies with
its session, so a killed runner leaves nothing to clean up by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from typing import Any

import psycopg
from psycopg import sql

from runner.errors import ConfigError, LockTimeoutError
from runner.output import log
from runner.session import deadline
from runner.session.database import Connection, backend_pid

REPORT_EVERY_S = 10.0
# A poll answers in milliseconds; one this late is from a peer that stopped answering.
ANSWER_S = 10.0
POOLER_MESSAGE = (
    "the database session changes between transactions: a transaction-pooling proxy "
    "(PgBouncer pool_mode=transaction) stands between the runner and PostgreSQL, and a "
    "session lock guards nothing there; point DATABASE_URL at PostgreSQL directly or at a "
    "session-mode pool")
# Waiters are woken by a NOTIFY at every release; polling only covers a holder that died
# (its lock goes with its session, and nobody notifies).
_MAX_POLL_S = 1.0

_HOLDER = """
SELECT a.pid, a.application_name, host(a.client_addr)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %(hi)s AND l.objid = %(lo)s
  AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
# The fence (SPEC §10.1): an expression that is true while the lock connection's backend
# holds the lock, and otherwise fails its statement, and with it the transaction that
# would have committed without the lock. current_setting() of a name nobody sets raises
# 42704 naming it, so the server's log says what happened too.
#
# The lock connection takes, right after the lock, a second session lock on a key of its
# own run (`AdvisoryLock.fence_key`, random: no other session ever asks for it), and lets
# it go first. A work session's tries for both keys, shared and for its transaction, fail
# exactly while someone holds the lock and the lock connection's backend lives and holds
# its locks: that is, while the lock connection holds the lock. A backend that died, was
# ended for being idle, or was handed back to a pool (whose reset releases its locks)
# lets a try succeed, and the fence fails. The lock server's answer, not a flag of ours;
# and two look-ups of one key, where pg_locks copies the server's whole lock table,
# taking every lock partition (every migration's transaction pays for the fence: that
# was ~13% of applying small files; the two look-ups, ~6%).
LOST_SETTING = "migration_runner.advisory_lock_lost"
_FENCE = ("(CASE WHEN {held} THEN true ELSE "
          "pg_catalog.current_setting('" + LOST_SETTING + "')::bool END)")
_HELD_BY_LOCK_CONNECTION = ("NOT pg_catalog.pg_try_advisory_xact_lock_shared({key}) AND "
                            "NOT pg_catalog.pg_try_advisory_xact_lock_shared({fence_key})")
# On a single connection, which would get its own lock again, the catalog is asked.
_HELD_BY = """EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory'
  AND granted AND pid = {pid} AND classid = {hi} AND objid = {lo} AND objsubid = 1
  AND database = (SELECT oid FROM pg_catalog.pg_database
                  WHERE datname = pg_catalog.current_database()))"""
_HELD_BY_ME = """
SELECT pg_backend_pid(), EXISTS (
  SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
    AND classid = %(hi)s AND objid = %(lo)s AND objsubid = 1),
  pg_try_advisory_lock(%(fence_key)s)
"""


def lock_key(database: str, schema: str, table: str = "migration_history") -> int:
    """The native format's key, a signed 64-bit integer: one lock per bookkeeping table,
    not one per server. (The sqlx format uses sqlx's key: runner.histories.sqlx.lock_key.)"""
    digest = hashlib.sha256(f"{database}\0{schema}\0{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _halves(key: int) -> dict[str, int]:
    """pg_locks shows a bigint key as two unsigned 32-bit halves."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}


def _holder(conn: Connection, key: int) -> dict[str, Any]:
    row = conn.execute(_HOLDER, _halves(key)).fetchone()
    if row is None:
        return {"holder_pid": None, "holder_application_name": None, "holder_client_addr": None}
    return {"holder_pid": row[0], "holder_application_name": row[1],
            "holder_client_addr": row[2]}


# Who runs a no-transaction migration (SPEC §10.1): its work session holds a second
# session lock, one per version, from its `failed` marker until it ends; the lock dies
# with the session, so a `failed` row whose lock is held is being applied right now.
_OWNERS = """
SELECT v.version, a.pid, a.application_name, host(a.client_addr)
FROM ROWS FROM (pg_catalog.unnest(%(versions)s::int8[]), pg_catalog.unnest(%(hi)s::int8[]),
               pg_catalog.unnest(%(lo)s::int8[])) AS v(version, hi, lo)
JOIN pg_catalog.pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid::int8 = v.hi AND l.objid::int8 = v.lo
  AND l.database = (SELECT oid FROM pg_catalog.pg_database
                    WHERE datname = pg_catalog.current_database())
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
"""


def owner_key(key: int, version: int) -> int:
    """The session lock a no-transaction migration's work session holds while it runs."""
    digest = hashlib.sha256(f"{key}\0{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def owners(conn: Connection, key: int, versions: list[int]) -> dict[int, dict[str, Any]]:
    """For each of `versions` being applied by a live session now: its pid,
    application_name and client_addr."""
    if not versions:
        return {}
    halves = [_halves(owner_key(key, v)) for v in versions]
    rows = conn.execute(_OWNERS, {"versions": versions, "hi": [h["hi"] for h in halves],
                                  "lo": [h["lo"] for h in halves]}).fetchall()
    return {r[0]: {"pid": r[1], "application_name": r[2], "client_addr": r[3]} for r in rows}


def is_fence_error(exc: psycopg.Error) -> bool:
    """Whether `exc` is the fence's: the lock was not held when a write was to commit."""
    return exc.sqlstate == "42704" and LOST_SETTING in str(exc)


class AdvisoryLock:
    def __init__(self, conn: Connection, key: int) -> None:
        """`key`: the history format's advisory lock key (History.lock_key)."""
        self.conn = conn
        self.key = key
        self.held = False
        # The migrations run on the lock connection itself (SPEC §10.3, a connection limit
        # of one): see `fence` and `relock`.
        self.single = False
        self.pid = 0  # this session's backend, once acquire() has asked
        self.fence_key = int.from_bytes(os.urandom(8), "big", signed=True)  # see _FENCE
        self.channel = f"migration_runner_{self.key & 0xFFFFFFFFFFFFFFFF:016x}"

    def acquire(self, timeout: float) -> None:
        """Poll with pg_try_advisory_lock until held, or LockTimeoutError after `timeout`
        seconds. Each poll's answer is awaited ANSWER_S at most: a connection whose peer
        stopped answering while we wait (a proxy that holds the socket) is severed, and
        the wait ends in psycopg's OperationalError, a lost connection (SPEC §10.2)."""
        logger = log.get()
        self.pid = pid = backend_pid(self.conn)
        started = time.monotonic()
        next_report = started
        delay = 0.05
        listening = False
        while not self._try():
            now = time.monotonic()
            waited = now - started
            if now >= next_report:
                with deadline.within(self.conn, ANSWER_S):
                    holder = _holder(self.conn, self.key)
                logger.info("lock_waiting", waited_s=round(waited, 1), lock_key=self.key,
                            **holder)
                next_report = now + REPORT_EVERY_S
            if waited >= timeout:
                with deadline.within(self.conn, ANSWER_S):
                    holder = _holder(self.conn, self.key)
                raise LockTimeoutError(
                    f"advisory lock not acquired within {timeout:g}s: another runner holds it "
                    "(see lock_waiting for its pid); raise MIGRATE_LOCK_TIMEOUT or stop it",
                    **holder)
            if not listening:  # then try once more: a release in between is not missed
                with deadline.within(self.conn, ANSWER_S):
                    self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                listening = True
                continue
            pause = min(delay * random.uniform(0.5, 1.5), timeout - waited)
            for _ in self.conn.notifies(timeout=max(pause, 0.0), stop_after=1):
                pass  # a release: try again now
            delay = min(delay * 2, _MAX_POLL_S)
        self.held = True
        self._check_same_session(pid)
        logger.info("lock_acquired", waited_ms=round((time.monotonic() - started) * 1000),
                    lock_key=self.key)

    def fence(self) -> str:
        """An SQL expression, true while this runner holds the lock and an error (42704,
        `is_fence_error`) otherwise, for a statement inside every transaction that writes
        a migration's or the history's rows, before its COMMIT."""
        if self.single:
            return _FENCE.format(held=_HELD_BY.format(pid=self.pid, **_halves(self.key)))
        return _FENCE.format(held=_HELD_BY_LOCK_CONNECTION.format(key=self.key,
                                                                  fence_key=self.fence_key))

    def fence_after_unlock(self) -> str:
        """The fence right after the session reset's pg_advisory_unlock_all(): on one
        connection, where that just dropped the lock itself, it takes the lock again, and
        fails when a runner took it in between; on two, `fence`."""
        if self.single:
            return _FENCE.format(held=self.relock())
        return self.fence()

    def claim(self, version: int) -> str:
        """A statement taking the session lock that says this session runs `version`, a
        no-transaction migration (`owners`); the session reset's pg_advisory_unlock_all()
        releases it when the file is done or failed."""
        return f"SELECT pg_catalog.pg_try_advisory_lock({owner_key(self.key, version)})"

    def relock(self) -> str:
        """On one connection, the expression that takes the lock again after
        pg_advisory_unlock_all() (true when it did); on two, nothing to do."""
        return f"pg_catalog.pg_try_advisory_lock({self.key})" if self.single else "true"

    def _try(self) -> bool:
        with deadline.within(self.conn, ANSWER_S):
            row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        return bool(row and row[0])

    def _check_same_session(self, pid: int) -> None:
        """Behind a transaction-pooling proxy each statement may land on another backend,
        and a session lock then guards nothing. Takes the fence's key too."""
        row = self.conn.execute(_HELD_BY_ME, {**_halves(self.key),
                                              "fence_key": self.fence_key}).fetchone()
        if row is None or row[0] != pid or not row[1]:
            raise ConfigError(POOLER_MESSAGE)
        if not row[2]:  # a random 64-bit key already taken: never seen, but never assumed
            raise ConfigError(f"advisory lock {self.fence_key}, the run's own, is held by "
                              "another session; run again")

    def release(self) -> None:
        """Never raises: it runs on every exit path, including after a lost connection."""
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(psycopg.Error):  # the session is gone, and the lock with it
            self.conn.execute("SELECT pg_advisory_unlock(%s), pg_advisory_unlock(%s), "
                              "pg_notify(%s, '')", (self.fence_key, self.key, self.channel))
