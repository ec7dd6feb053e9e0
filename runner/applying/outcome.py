"""What happened to a migration whose connection died under it (SPEC §10.2).

A server restart or failover, `pg_terminate_backend`, a reset, or a proxy that stopped
forwarding (severed by runner.applying.stall) ends the work connection mid-migration.
That is not the file's error: no line of it failed, and the server may well have
committed it just before the connection went. So the runner reconnects (waiting, as at
start, up to MIGRATE_WAIT_TIMEOUT) and asks:

1. Its old server process, if still there (the proxy holds its socket, or the server has
   not noticed yet), is ended with `pg_terminate_backend` and waited for: only once it is
   gone is its transaction's fate final (PostgreSQL commits atomically or not at all).
2. The migration's history row: there (`applied`), the connection died after COMMIT and
   `committed` is true; not there, the server rolled it back (a no-transaction file's
   `failed` row: it stopped part-way). A rollback file the other way round.
3. A failed attempt's audit row is written on that new connection (a committed one has
   its own, written with it).
4. When the lock connection was lost as well (a stalled proxy holds both), its old
   server process is ended too: it holds the advisory lock, and a retry would wait for
   it until the proxy lets go. Nothing of this run is running any more by then.

Then `connection_lost` (error) and exit 3: a retry can help. Its `sqlstate` is the one
the server sent, in the error or in the warning a server sends every session as it shuts
down (57P01 `admin_shutdown`, 57P02 `crash_shutdown`), which is why those warnings are
not the migration's `migration_notice`. psycopg cannot hand over the FATAL error of a
connection that closed during a pipeline (it raises "server closed the connection
unexpectedly" and drops the results read before), so a transactional migration's loss
often has none. A server that shuts down ends every session alike, and the lock
connection, idle, keeps its FATAL until asked: asked once (`probe`), it gives the
SQLSTATE of that shutdown. When neither has one (the work session alone was ended in a
pipeline), `sqlstate` is null, and `server_restarted` says whether the server went down.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import psycopg

from runner.errors import ConnectionLostError, RunnerError
from runner.folder.statements import Plan
from runner.histories.history import History, as_fields
from runner.output import log
from runner.session import database, deadline
from runner.session.database import Connection
from runner.settings import Settings

GONE_WAIT_S = 15.0  # for the old server process to exit once told to
PROBE_S = 5.0  # the lock connection's answer to one SELECT
_SHUTDOWN_CLASS = "57P"  # operator intervention: shutdown, crash, not accepting, dropped
_END_OLD = """
SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
WHERE pid = %s AND datname = pg_catalog.current_database()
"""
_OLD_THERE = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE pid = %s)
"""
# Measured on the server's clock: no skew between the runner's clock and the server's.
_RESTARTED = """
SELECT pg_catalog.pg_postmaster_start_time()
  > pg_catalog.now() - pg_catalog.make_interval(secs => %s)
"""


def is_shutdown(diag: psycopg.errors.Diagnostic) -> bool:
    """A notice that announces the end of the session (a server shutting down or
    restarting after a crash), not something a migration said."""
    return (diag.sqlstate or "").startswith(_SHUTDOWN_CLASS)


class LastWords:
    """The work connection's notice handler that keeps a shutdown warning's SQLSTATE and
    text, for the report of the loss that follows it."""

    def __init__(self) -> None:
        self.sqlstate: str | None = None
        self.message: str | None = None

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        if is_shutdown(diag):
            self.sqlstate, self.message = diag.sqlstate, diag.message_primary


def probe(lock: Connection, last_words: LastWords) -> None:
    """Ask the lock connection once (the caller owns it: the watch has stopped); when the
    server ended it as well, keep the SQLSTATE it sent there."""
    if lock.closed or lock.broken:
        return
    try:
        with deadline.within(lock, PROBE_S):
            lock.execute("SELECT 1")
    except psycopg.Error as exc:
        if (exc.sqlstate or "").startswith(_SHUTDOWN_CLASS):
            last_words.sqlstate = exc.sqlstate
            last_words.message = exc.diag.message_primary


def is_lost(exc: psycopg.Error, conn: Connection) -> bool:
    """The connection itself failed (closed, reset, terminated, severed), as opposed to
    a statement failing on a live one."""
    return (conn.closed or conn.broken
            or (exc.sqlstate or "").startswith(("08", _SHUTDOWN_CLASS)))


def server_message(exc: psycopg.Error, last_words: LastWords) -> tuple[str | None, str]:
    """(SQLSTATE, message): the server's error, else its shutdown warning, else libpq's
    words for what it saw."""
    if exc.sqlstate:
        return exc.sqlstate, exc.diag.message_primary or str(exc).strip()
    if last_words.sqlstate:
        return last_words.sqlstate, last_words.message or ""
    # libpq's first line ("server closed the connection unexpectedly"); the rest is its
    # guess at why, which the reconnect replaces with facts.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return None, text.removeprefix("consuming input failed: ")


def _end_old_session(conn: Connection, pid: int) -> bool:
    """End the old server process if it is still there; True once it is gone."""
    conn.execute(_END_OLD, (pid,))
    until = time.monotonic() + GONE_WAIT_S
    while True:
        row = conn.execute(_OLD_THERE, (pid,)).fetchone()
        if not (row and row[0]):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(0.1)


def _committed(tables: History, conn: Connection, plan: Plan, up: bool) -> bool:
    """True: committed; False: not (or, no-transaction, stopped part-way)."""
    row = tables.read(conn).get(plan.migration.version)
    if up:
        return row is not None and row.status == "applied"
    return row is None


def settle(settings: Settings, tables: History, plan: Plan, direction: str,
           exc: psycopg.Error, *, pid: int, started: float, ms: int,
           last_words: LastWords, stalled: dict[str, Any], partial: str | None,
           lock_pid: int | None = None) -> NoReturn:
    """Reconnect, learn whether the migration committed, write the failed attempt's
    audit row, log `connection_lost`, raise ConnectionLostError (exit 3).

    `direction`: `up` or `down`; `pid`: the lost connection's server process; `started`:
    time.monotonic() when the migration began; `ms`: its duration so far; `stalled`: the
    watch's reason when it severed the connection; `partial`: for a no-transaction file,
    what the operator does when it stopped part-way; `lock_pid`: the lock connection's
    server process when that connection was lost too."""
    logger = log.get()
    m = plan.migration
    up = direction == "up"
    sqlstate, message = server_message(exc, last_words)
    if stalled:  # severed by the watch: what libpq saw is our own doing
        message = f"stalled: {stalled['stalled']}"
    fields: dict[str, Any] = {**as_fields(m), "direction": direction, "sqlstate": sqlstate,
                              "message": message, "transactional": plan.transactional,
                              **stalled}
    committed: bool | None = None
    unknown = ""
    try:
        with database.connect(settings, "recheck") as conn:
            row = conn.execute(_RESTARTED, (time.monotonic() - started,)).fetchone()
            fields["server_restarted"] = bool(row and row[0])
            if not _end_old_session(conn, pid):
                unknown = (f"its old server process {pid} did not exit within "
                           f"{GONE_WAIT_S:g}s")
            else:
                committed = _committed(tables, conn, plan, up)
                if not committed:
                    tables.audit_row(conn, m, direction, ms, False,
                                     f"connection lost: {message}")
                if lock_pid is not None:
                    _end_old_session(conn, lock_pid)
    except (RunnerError, psycopg.Error) as err:
        unknown = f"reconnecting failed: {getattr(err, 'message', None) or str(err).strip()}"
    fields["committed"] = committed
    action = "applying" if up else "running the rollback file"
    text = f"connection to the database lost while {action} {m.file}: {message}"
    if sqlstate:
        text += f" (SQLSTATE {sqlstate})"
    if committed is None:
        verdict = (f"whether it committed is unknown: {unknown}; `status` tells once the "
                   "database is reachable")
    elif committed:
        verdict = ("reconnected: it had committed before the connection was lost "
                   "(committed: true); run migrate again for the rest")
    elif plan.transactional or partial is None:
        verdict = ("reconnected: the server rolled it back, nothing of it remains "
                   "(committed: false); a retry can help")
    else:
        verdict = f"reconnected: it stopped part-way (committed: false); {partial}"
    logger.error("connection_lost", **fields)
    raise ConnectionLostError(f"{text}; {verdict}", **fields)
