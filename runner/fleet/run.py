"""Fleet `migrate` (SPEC §11): one shard's targets, MIGRATE_CONCURRENCY at a time.

Each target runs `runner.commands.migrate` with its own Settings in a thread of its own
(psycopg is synchronous), after a read-only pre-check that ends an up-to-date target with
one read: no lock, no DDL, one connection. The main thread schedules: at most
MIGRATE_CONCURRENCY targets in flight, MIGRATE_SERVER_CONCURRENCY per host:port; a target
whose advisory lock is taken gives its slot back and waits at the end of the queue
(`target_deferred`) until MIGRATE_LOCK_TIMEOUT from its first try; transient failures
(exit 3 or 4) are tried again once the queue is empty, MIGRATE_TARGET_RETRIES times.

Signals reach the main thread only. On SIGTERM or SIGINT it raises the same interruption
in every target thread that is inside the single-database path, which then does what
SPEC §3 says one run does (psycopg cancels the statement, the transaction rolls back,
the audit row is written, the lock released), and reports the targets not yet started
as `not_started`. An exception raised into a thread arrives at its next Python bytecode,
and psycopg's default wait (`wait_c`) stays in C for the whole query; so fleet mode uses
psycopg's `wait_poll` (what PSYCOPG_WAIT_FUNC selects), which returns to Python every
0.1 s of a wait.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import psycopg.waiting
import structlog

from runner.commands import history_for, open_connection, settle, settled_files
from runner.errors import LOCK_TIMEOUT, UNREACHABLE, Interrupted, LockTimeoutError, RunnerError
from runner.fleet.targets import Selection, Target
from runner.folder.files import Migration
from runner.histories.history import History, compare
from runner.output import log, metrics
from runner.session import database
from runner.session.database import Connection
from runner.settings import Settings

OK = ("up_to_date", "applied", "ahead", "done")  # done: rollback, baseline, repair
TRANSIENT = (UNREACHABLE, LOCK_TIMEOUT)
# Refused for good (SPEC §3: credentials, no such database, no CONNECT): a retry of the
# target meets the same answer, so it is no transient failure whatever its exit code.
REFUSED = ("28P01", "28000", "3D000", "42501")
_DEFER_FIRST_S, _DEFER_MAX_S = 0.5, 10.0
_GRACE_S = 25.0  # in-flight targets stopping after a signal, inside Kubernetes' 30 s
_CANCEL_AFTER_S = 1.0  # then their statements are cancelled from here


@dataclass
class Outcome:
    target: Target
    status: str = "not_started"  # OK, failed, interrupted, not_started
    exit_code: int | None = None
    version_before: int | None = None
    version_after: int | None = None
    applied: int = 0
    pending: int | None = None
    duration_ms: int = 0
    error: dict[str, Any] | None = None  # file, line, column, sqlstate, message
    tries: int = 0
    recorder: metrics.Recorder = field(default_factory=metrics.Recorder)

    @property
    def transient(self) -> bool:
        return (self.status == "failed" and self.exit_code in TRANSIENT
                and (self.error or {}).get("sqlstate") not in REFUSED)


@dataclass
class Job:
    outcome: Outcome
    ready_at: float = 0.0
    first_try: float | None = None  # of this round: the lock deadline counts from it
    delay: float = _DEFER_FIRST_S
    thread: threading.Thread | None = None
    guard: threading.Lock = field(default_factory=threading.Lock)
    interruptible: bool = False
    conns: list[psycopg.Connection[Any]] = field(default_factory=list)  # opened by the target


@dataclass(frozen=True)
class Check:
    up_to_date: bool
    version_before: int | None
    pending: int
    ahead: bool


def precheck(conn: Connection, history: History, migrations: list[Migration],
             to: int | None) -> Check:
    """One read of the history in a read-only transaction, without the lock: up to date
    when every file is applied with its checksum and nothing is failed, pending or
    missing. Raises what the history read raises."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        applied = history.read_checked(conn, "migrate")
    comparison = compare(migrations, applied, history.eol_only)
    pending = [m for m in comparison.pending if to is None or m.version <= to]
    clean = not (comparison.changed or comparison.failed or comparison.missing
                 or comparison.out_of_order or comparison.eol_only)
    return Check(bool(applied) and clean and not pending, max(applied, default=None),
                 len(pending), bool(comparison.missing))


def error_of(exc: RunnerError) -> dict[str, Any]:
    """The summary's `error` of a target's failure: where (when a file's) and what."""
    message = exc.message
    if exc.fields.get("sqlstate") == "3D000":
        message += ("; fleet mode never creates databases: create it, or take it off the "
                    "target list")
    return plain_error(message, exc.fields.get("sqlstate"), file=exc.fields.get("file"),
                       line=exc.fields.get("line"), column=exc.fields.get("column"))


def plain_error(message: str, sqlstate: str | None = None, **where: Any) -> dict[str, Any]:
    return {"file": where.get("file"), "line": where.get("line"),
            "column": where.get("column"), "sqlstate": sqlstate, "message": message}


class Fleet:
    def __init__(self, settings: Settings, selection: Selection,
                 migrations: list[Migration], to: int | None) -> None:
        self.settings = settings
        self.selection = selection
        self.migrations = migrations  # as the folder's format reads them (history_for)
        self.folder_history = history_for(settings)
        self.to = to
        local = [m.version for m in migrations if to is None or m.version <= to]
        self.newest_local = max(local, default=None)
        self.outcomes = [Outcome(t) for t in selection.targets]
        self.cond = threading.Condition()
        self.running: dict[int, Job] = {}
        self.servers: Counter[str] = Counter()
        self.stopping = False
        self.log = log.get()

    # --- one target, in its own thread ------------------------------------------------

    def _attempt(self, job: Job) -> None:
        o, t = job.outcome, job.outcome.target
        structlog.contextvars.bind_contextvars(target=t.name, shard=self.selection.index)
        metrics.TARGET.set(o.recorder)
        database.OPENED.set(job.conns.append)
        o.tries += 1
        started = time.monotonic()
        deferred = False
        try:
            self.log.info("target_started", key=t.key, attempt=o.tries)
            with job.guard:
                job.interruptible = True
            try:
                deferred = self._migrate(job)
            finally:
                with job.guard:
                    job.interruptible = False
        except Interrupted as exc:
            o.status, o.exit_code = "interrupted", exc.exit_code
            o.error = plain_error(f"interrupted by signal {exc.signum}")
        except Exception as exc:  # a bug: this target fails, the fleet goes on
            o.status, o.exit_code = "failed", 1
            o.error = plain_error(f"internal error: {exc!r}")
            self.log.exception("target_internal_error")
        o.duration_ms += round((time.monotonic() - started) * 1000)
        if not deferred:
            self._report(o)
        with self.cond:
            self.running.pop(id(job), None)
            self.servers[t.server] -= 1
            if deferred:
                self.queue.append(job)
            elif o.status == "failed" and self._final(o) and self.settings.on_error == "stop":
                self.stopping = True
            self.cond.notify_all()

    def _migrate(self, job: Job) -> bool:
        """The target's run; True when it was deferred (lock taken, time left)."""
        from runner.commands.migrate import migrate

        o, t = job.outcome, job.outcome.target
        settings = t.settings(self.settings)
        now = time.monotonic()
        job.first_try = job.first_try if job.first_try is not None else now
        try:
            # The pre-check reads on what becomes the lock connection: an up-to-date target
            # costs one connection and one read, and the fleet never holds more than two.
            conn = open_connection(settings, "lock", primary=True)
            try:
                history = settle(settings, conn)
                migrations = settled_files(history, self.folder_history, self.migrations,
                                           settings)
                check = precheck(conn, history, migrations, self.to)
            except BaseException:
                conn.close()
                raise
            o.version_before, o.pending = check.version_before, check.pending
            if check.up_to_date:
                conn.close()
                o.status, o.exit_code, o.version_after = "up_to_date", 0, check.version_before
                return False
            applied_before = sum(1 for _, outcome in o.recorder.durations
                                 if outcome == "success")
            # The lock is tried once: a target whose lock is taken waits off its slot.
            migrate(replace(settings, lock_timeout=0), to=self.to, migrations=self.migrations,
                    conn=conn, settled=history)
        except LockTimeoutError as exc:
            waited = time.monotonic() - job.first_try
            if waited < self.settings.lock_timeout:
                retry_in = min(job.delay, self.settings.lock_timeout - waited)
                job.ready_at, job.delay = time.monotonic() + retry_in, min(job.delay * 2,
                                                                           _DEFER_MAX_S)
                self.log.info("target_deferred", reason="lock_taken", waited_s=round(waited, 1),
                              retry_in_s=round(retry_in, 2), **{
                                  k: v for k, v in exc.fields.items() if k.startswith("holder")})
                return True
            o.status, o.exit_code, o.error = "failed", exc.exit_code, error_of(exc)
            o.error["message"] = (f"advisory lock not acquired within "
                                  f"{self.settings.lock_timeout:g}s of the first try")
            return False
        except RunnerError as exc:
            o.status, o.exit_code, o.error = "failed", exc.exit_code, error_of(exc)
            return False
        except psycopg.OperationalError as exc:  # the connection went away mid-run
            o.status, o.exit_code = "failed", UNREACHABLE
            o.error = plain_error(f"database error: {str(exc).strip()}", exc.sqlstate)
            return False
        except psycopg.Error as exc:
            o.status, o.exit_code = "failed", 1
            o.error = plain_error(f"database error: {str(exc).strip()}", exc.sqlstate)
            return False
        o.applied += sum(1 for _, outcome in o.recorder.durations
                         if outcome == "success") - applied_before
        o.status, o.exit_code, o.error = ("ahead" if check.ahead else "applied"), 0, None
        o.version_after = max((v for v in (check.version_before, self.newest_local)
                               if v is not None), default=None)
        o.pending = 0
        return False

    def _final(self, o: Outcome) -> bool:
        return not o.transient or o.tries > self.settings.target_retries

    def _report(self, o: Outcome) -> None:
        if o.status in OK:
            self.log.info("target_done", status=o.status, exit_code=o.exit_code,
                          version_before=o.version_before, version_after=o.version_after,
                          applied=o.applied, duration_ms=o.duration_ms)
            return
        error = o.error or {}
        self.log.error("target_failed", status=o.status, exit_code=o.exit_code,
                       will_retry=o.status == "failed" and not self._final(o), **error)

    # --- the schedule, in the main thread -------------------------------------------

    def _fits(self, job: Job, now: float) -> bool:
        cap = self.settings.server_concurrency
        return job.ready_at <= now and (cap is None
                                        or self.servers[job.outcome.target.server] < cap)

    def _start(self, job: Job) -> None:
        self.queue.remove(job)
        self.servers[job.outcome.target.server] += 1
        self.running[id(job)] = job
        job.thread = threading.Thread(target=self._attempt, args=(job,),
                                      name=f"target {job.outcome.target.name}", daemon=True)
        job.thread.start()

    def _drain(self) -> None:
        """Run the queue until it is empty and nothing runs, or until a stop and the
        in-flight targets finished."""
        with self.cond:
            while True:
                now = time.monotonic()
                if not self.stopping and len(self.running) < self.settings.concurrency:
                    job = next((j for j in self.queue if self._fits(j, now)), None)
                    if job is not None:
                        self._start(job)
                        continue
                if not self.running and (self.stopping or not self.queue):
                    return
                waits = [j.ready_at - now for j in self.queue if j.ready_at > now]
                self.cond.wait(min([0.5, *waits]))

    def run(self) -> list[Outcome]:
        """Every target of the shard tried, transient failures again at the end. Raises
        Interrupted after the in-flight targets stopped (their outcomes recorded)."""
        self.queue: deque[Job] = deque(Job(o) for o in self.outcomes)
        psycopg.waiting.wait = psycopg.waiting.wait_poll
        try:
            self._drain()
            for _ in range(self.settings.target_retries):
                again = [o for o in self.outcomes if o.transient]
                if self.stopping or not again:
                    break
                self.queue = deque(Job(o) for o in again)
                self._drain()
        except Interrupted as exc:
            self._interrupt(exc)
            raise
        return self.outcomes

    def _interrupt(self, exc: Interrupted) -> None:
        """Raise `exc`'s signal in each target thread inside the single-database path, and
        wait (bounded) for them to stop."""
        signum = exc.signum

        class Stop(Interrupted):
            def __init__(self) -> None:
                super().__init__(signum)

        with self.cond:
            self.stopping = True
            jobs = list(self.running.values())
        for job in jobs:
            with job.guard:
                if job.interruptible and job.thread is not None and job.thread.ident:
                    # The only way into a thread blocked in psycopg's wait: an exception at
                    # its next bytecode (psycopg polls every 0.1 s), which psycopg answers
                    # by cancelling the statement on the server, as for Ctrl-C.
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(job.thread.ident), ctypes.py_object(Stop))
        deadline = time.monotonic() + _GRACE_S
        self._join(jobs, min(deadline, time.monotonic() + _CANCEL_AFTER_S))
        # An exception that arrived outside psycopg's wait cancelled nothing, and the
        # rollback then waits for the statement: cancel it on the server.
        for job in jobs:
            if job.thread is not None and job.thread.is_alive():
                for conn in job.conns:
                    with contextlib.suppress(psycopg.Error):
                        if not conn.closed:
                            conn.cancel_safe(timeout=2)
        self._join(jobs, deadline)

    @staticmethod
    def _join(jobs: list[Job], deadline: float) -> None:
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))
