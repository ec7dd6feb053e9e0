"""Watching a running migration from the lock connection (SPEC §9).

While a migration runs, the lock connection sits idle: it only holds the advisory lock.
A thread samples the work connection's backend from it about once a second, once the
migration has run for a second (a run of short migrations sends no watch query at all):
`pg_stat_activity` for its state, wait event and current statement, `pg_blocking_pids()`
and the blockers' rows, `pg_stat_progress_create_index` for an index build. From these it
logs `migration_blocked` (when the statement waits on a lock, and again when the
blockers change: pid, application_name, user, client_addr, state, transaction age, never
a query text, which may carry patient data) and `migration_progress` every
MIGRATE_PROGRESS_INTERVAL. Server notices of the work connection become
`migration_notice` as they arrive (psycopg calls the notice handler while it reads the
pipeline's results, so a NOTICE raised mid-statement is logged mid-statement).

One thread per connection. psycopg connections must be used from one thread at a time:
between `start()` and `stop()` the lock connection belongs to the watch thread alone
(the main thread only applies, on the work connection), and `stop()` joins the thread
before it returns, so the main thread has it back before it releases the lock; every
exit path (success, SQL error, SIGTERM / SIGINT, lost connection) leaves the `with`
block of `Session.watching`, which calls `stop()`; it waits for the thread no longer
than a watch query may take (`deadline.within` severs a lock connection that stopped
answering), so a stalled network cannot hold the exit (§10.2). Signals are delivered to
the main thread only, so the watch thread is never interrupted mid-query. The main thread
tells the watch which migration runs by swapping one attribute (`begin`/`end`); the
watch logs only while the migration it sampled is still the current one, checked under
a lock held for no more than that check and one log line.

The watch also finds a work connection whose answer is lost on the way (a proxy that
stopped forwarding) and severs it: runner.applying.stall. A server's shutdown warning
(57P01, 57P02) is the connection's end, not the migration's notice.

The watch never slows or blocks the migration: its queries read statistics views on
another backend, take no lock on anything the migration touches, and run with a short
statement_timeout and lock_timeout of their own; a failed watch query is logged at debug
and the watch goes on; nothing it does changes an exit code, but one thing: the lock
connection found dead. The watch asks it something every tick (a sample, or `SELECT 1`
between samples and migrations), so a lock connection killed, ended for being idle or
dropped by the network is found within seconds wherever the run is (SPEC §10.1): it
logs `lock_lost`, sets `lost` and cancels the work connection's statement; the main
thread then stops with exit 4. (The fence in each migration's transaction refuses the
COMMIT anyway: the watch makes the run stop at once rather than at its next commit.)
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from runner.applying.outcome import is_shutdown
from runner.applying.stall import Stall
from runner.folder.statements import Plan, line_col
from runner.histories.history import as_fields
from runner.output import log
from runner.session import deadline
from runner.session.database import Connection
from runner.session.silence import STALL_S

TICK_S = 1.0
_SAMPLE = """
SELECT a.state, a.wait_event_type, a.wait_event, a.query, {waited} AS waited_s,
  (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
      'pid', b.pid, 'application_name', b.application_name, 'user', b.usename,
      'client_addr', pg_catalog.host(b.client_addr), 'state', b.state,
      'xact_age_s', pg_catalog.round(extract(
          epoch FROM pg_catalog.clock_timestamp() - b.xact_start)::numeric, 1))
      ORDER BY b.pid)::text
   FROM pg_catalog.pg_stat_activity b
   WHERE b.pid = ANY (pg_catalog.pg_blocking_pids(a.pid))) AS blocked_by,
  p.phase, p.blocks_done, p.blocks_total
FROM pg_catalog.pg_stat_activity a
LEFT JOIN pg_catalog.pg_stat_progress_create_index p ON p.pid = a.pid
WHERE a.pid = %s
"""
# pg_locks.waitstart: PostgreSQL 14+.
_WAITED_14 = """(SELECT extract(epoch FROM pg_catalog.clock_timestamp()
   - pg_catalog.min(l.waitstart))::float8 FROM pg_catalog.pg_locks l
   WHERE l.pid = a.pid AND NOT l.granted)"""
# The watch's own limits, set on the lock connection before its first sample and reset
# when it stops: a watch query may fail, never wait.
_LIMITS = ("SET statement_timeout = '500ms'", "SET lock_timeout = '100ms'")
_UNLIMIT = ("RESET statement_timeout", "RESET lock_timeout")


@dataclass
class Running:
    """The migration running now, as the watch and a live status line see it."""

    plan: Plan
    started: float  # time.monotonic()
    next_progress: float
    statement: int | None = None  # index into plan.statements of the running one
    waiting: str | None = None  # what it waits on, for a person reading a status line
    percent: float | None = None  # an index build's blocks done / total
    blocked_pids: list[int] | None = None
    blocked_by: list[dict[str, Any]] = field(default_factory=list)  # the last seen


def describe_blockers(blocked_by: list[dict[str, Any]]) -> str:
    """`pid 4242 (pacs-server, idle in transaction for 3m12s)`, for a termination message."""
    parts = []
    for b in blocked_by:
        age = b.get("xact_age_s")
        since = f" for {_duration(float(age))}" if age is not None else ""
        name = b.get("application_name") or b.get("user") or "?"
        parts.append(f"pid {b['pid']} ({name}, {b.get('state') or 'state unknown'}{since})")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Watch:
    def __init__(self, conn: Connection, work_pid: int, progress_interval: float,
                 cancel: Callable[[], None] | None = None,
                 work: Connection | None = None) -> None:
        """`conn`: the lock connection, idle while migrations run; `work_pid`: the backend
        to watch; `progress_interval`: seconds between `migration_progress` (0: none);
        `cancel`: cancels the work connection's statement when the lock is lost; `work`:
        the work connection, severed when its answer is lost (stall.py)."""
        self.conn = conn
        self.cancel = cancel
        # Why the lock is gone, once the lock connection was found dead (SPEC §10.1); set
        # before `cancel` is called, so the main thread sees it with the cancelled error.
        self.lost: str | None = None
        self.lock_pid = conn.info.backend_pid  # libpq says 0 once the connection is lost
        self.work_pid = work_pid
        self.stall = Stall(conn, work, work_pid) if work is not None else None
        self.progress_interval = progress_interval
        self.tick = min(TICK_S, progress_interval) if progress_interval > 0 else TICK_S
        self.running: Running | None = None
        # Called in the watch thread at every tick while a migration runs (a live status
        # line redraws itself); set before start(), or from the main thread.
        self.on_tick: Callable[[], None] | None = None
        self.log = log.get()
        self._log_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._limited = False
        waited = _WAITED_14 if conn.info.server_version >= 140000 else "NULL::float8"
        self._sample_sql = _SAMPLE.format(waited=waited)

    def start(self) -> None:
        # In the caller's context: its log fields (fleet mode's `target`) go on its events.
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._loop,), name="migration-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it: the lock connection is the caller's again.
        Returns within one watch query's statement_timeout on a live network, within
        STALL_S (seconds) on a stalled one; a thread still running then has its lock
        connection severed, so it cannot hold the caller's next query on it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STALL_S + 1)
            if self._thread.is_alive():
                deadline.handle(self.conn).sever()
                self._thread.join(timeout=1)
            self._thread = None

    def begin(self, plan: Plan) -> None:
        now = time.monotonic()
        self.running = Running(plan, now, now + self.progress_interval)

    def end(self) -> list[dict[str, Any]]:
        """The migration ended (or is about to be reported failed): the watch says nothing
        more about it. Returns the last `blocked_by` it saw."""
        with self._log_lock:
            running, self.running = self.running, None
        return running.blocked_by if running else []

    def blocked_by(self) -> list[dict[str, Any]]:
        running = self.running
        return running.blocked_by if running else []

    def notice(self, diag: psycopg.errors.Diagnostic) -> None:
        """psycopg's notice handler of the work connection (called in the main thread)."""
        running = self.running
        if running is None or is_shutdown(diag):
            return
        severity = diag.severity_nonlocalized or diag.severity or "NOTICE"
        emit = self.log.warning if severity == "WARNING" else self.log.info
        detail = {"detail": diag.message_detail} if diag.message_detail else {}
        emit("migration_notice", **as_fields(running.plan.migration), severity=severity,
             message=diag.message_primary, **detail)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.tick):
                if self.stall is not None:
                    self.stall.tick(time.monotonic())
                running = self.running
                if running is not None and (on_tick := self.on_tick) is not None:
                    on_tick()
                if self.conn.closed or self.conn.broken:
                    continue  # lost, and said so once; the stall check above goes on
                try:
                    with deadline.within(self.conn, STALL_S):
                        if (running is None
                                or time.monotonic() - running.started < 0.9 * self.tick):
                            # Between and during short migrations the lock connection is
                            # still asked every tick: a dead one is found within seconds.
                            self.conn.execute("SELECT 1")
                            continue
                        row = self._sample()
                except psycopg.Error as exc:
                    if self.conn.broken or self.conn.closed:
                        self._lose(exc, running)
                        if self.stall is not None:
                            self.stall.lock_lost(time.monotonic())
                        continue
                    self.log.debug("watch_failed", message=str(exc).strip())
                    continue
                if row is not None:
                    self._report(running, row)
        finally:
            if self._limited and not (self.conn.closed or self.conn.broken):
                try:
                    with deadline.within(self.conn, STALL_S):
                        for statement in _UNLIMIT:
                            self.conn.execute(statement)
                except psycopg.Error as exc:
                    self.log.debug("watch_failed", message=str(exc).strip())

    def _lose(self, exc: psycopg.Error, running: Running | None) -> None:
        """The lock connection died, and the lock with it: `lock_lost`, and the running
        migration cancelled, since it may no longer commit (SPEC §10.1)."""
        message = " ".join(str(exc).split()) or exc.__class__.__name__
        self.lost = f"the lock connection ended ({message})"
        fields = as_fields(running.plan.migration) if running else {}
        with self._log_lock:
            self.log.error("lock_lost", reason=self.lost, sqlstate=exc.sqlstate, **fields)
        if self.cancel is not None:
            try:
                self.cancel()
            except psycopg.Error as cancel_exc:  # the fence still refuses its COMMIT
                self.log.debug("watch_failed", message=str(cancel_exc).strip())

    def _sample(self) -> tuple[Any, ...] | None:
        if not self._limited:
            for statement in _LIMITS:
                self.conn.execute(statement)
            self._limited = True
        return self.conn.execute(self._sample_sql, (self.work_pid,)).fetchone()

    def _report(self, running: Running, row: tuple[Any, ...]) -> None:
        state, wait_type, wait_event, query, waited, blockers, phase, done, total = row
        plan = running.plan
        running.statement = _statement_index(plan, query, running.statement)
        line = (line_col(plan.migration.text, plan.statements[running.statement].offset)[0]
                if running.statement is not None else None)
        where = {"line": line, "statement": (running.statement + 1
                                              if running.statement is not None else None)}
        blocked_by = json.loads(blockers) if blockers and wait_type == "Lock" else []
        now = time.monotonic()
        running.percent = round(100 * done / total, 1) if total else None
        running.waiting = (f"lock ({wait_event}), blocked by {describe_blockers(blocked_by)}"
                           if blocked_by else
                           f"{wait_type}: {wait_event}" if wait_type else None)
        with self._log_lock:
            if self.running is not running:
                return  # it ended while we asked
            if blocked_by:
                running.blocked_by = blocked_by
                pids = [b["pid"] for b in blocked_by]
                # A wait that began just now is reported at the next tick, if it lasts.
                if pids != running.blocked_pids and (waited is None or waited >= 0.5):
                    running.blocked_pids = pids
                    self.log.warning("migration_blocked", **as_fields(plan.migration), **where,
                                     waited_s=round(waited if waited is not None
                                                    else now - running.started, 1),
                                     blocked_by=blocked_by)
            else:
                running.blocked_pids = None
            if self.progress_interval > 0 and now >= running.next_progress:
                running.next_progress += self.progress_interval * (
                    1 + int((now - running.next_progress) // self.progress_interval))
                index = {"phase": phase, "blocks_done": done, "blocks_total": total} \
                    if phase else {}
                self.log.info("migration_progress", **as_fields(plan.migration),
                              elapsed_s=round(now - running.started, 1), **where,
                              state=state, wait_event_type=wait_type, wait_event=wait_event,
                              **index)


def _statement_index(plan: Plan, query: str | None, last: int | None) -> int | None:
    """Which of the plan's statements the backend runs: its text as `pg_stat_activity`
    shows it (cut at track_activity_query_size), the first match from the last one seen
    on (a file may repeat a statement). None while the runner's own statements run."""
    if not query:
        return last
    start = last or 0
    count = len(plan.statements)
    for i in range(start, start + count):
        text = plan.statements[i % count].sql
        if text == query or (len(query) >= 1000 and text.startswith(query)):
            return i % count
    return None
