"""Applying one migration, or its rollback file (SPEC §3, §4).

Transactional: BEGIN; SET LOCAL timeouts; the statements; history and audit rows; COMMIT,
retried when it lost a lock race (55P03) or a deadlock (40P01). No-transaction: a `failed`
history row first, the statements one by one, then `applied` (or, for a rollback, the row
deleted); a crash part-way leaves the `failed` row for an operator.

Between files the work session is put back to the state the first file started from,
and nothing commits without the advisory lock held: runner.applying.reset.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from runner.applying import indexes, outcome
from runner.applying.reset import LEFTOVERS, RESET_AFTER, session_reset
from runner.applying.sqlerror import AT_BOOKKEEPING, AT_COMMIT, sql_error, where
from runner.errors import Interrupted, LockLostError, MigrationError
from runner.folder.statements import Plan, Statement
from runner.histories.history import History, as_fields
from runner.output import log
from runner.session.database import Connection
from runner.session.lock import AdvisoryLock, is_fence_error
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.applying.watch import Watch

RETRYABLE = {"55P03": "lock_not_available", "40P01": "deadlock_detected"}
# SPEC §10.4: a pipeline's statements wait in psycopg's queue and libpq's buffer until
# the server reads them; past this many bytes a Sync waits for the server to catch up (in
# the file's transaction: a Sync ends no transaction block that BEGIN opened).
IN_FLIGHT = 4 * 1024 * 1024


@dataclass(frozen=True)
class Direction:
    audit: str  # migration_audit.direction
    started: str  # event names
    done: str
    partial: str  # what the operator does after a no-transaction file stopped part-way


UP = Direction("up", "migration_started", "migration_applied",
               "no-transaction migration stopped part-way: fix the database by hand, then "
               "run `{repair_failed}` (the file runs again), or, if you finished it by hand, "
               "`{mark_applied}`")
DOWN = Direction("down", "rollback_started", "rollback_applied",
                 "no-transaction rollback stopped part-way: finish undoing it by hand, then "
                 "run `{repair_failed}` (the migration then counts as not "
                 "applied)")


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _duration_ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


Cursor = psycopg.Cursor[Any]


def _unanswered(cursors: list[Cursor]) -> int:
    """Index of the first pipelined statement without a result: the one that failed (the
    server skipped the ones after it), or len(cursors) when all of them succeeded."""
    return next((i for i, cur in enumerate(cursors) if cur.pgresult is None), len(cursors))


class Applier:
    def __init__(self, conn: Connection, tables: History, settings: Settings,
                 lock: AdvisoryLock, watch: Watch | None = None) -> None:
        """`lock`: held, and checked before every COMMIT (its fence, SPEC §10.1); `watch`,
        when given, is told which migration runs (SPEC §9) and says when the lock's
        connection died."""
        self.conn = conn
        self.watch = watch
        self.lock = lock
        self.pid = conn.info.backend_pid  # known after the connection is lost, too
        self.last_words = outcome.LastWords()  # a server's shutdown warning (SPEC §10.2)
        conn.add_notice_handler(self.last_words)
        conn.prepare_threshold = None  # DEALLOCATE ALL in every reset
        # Fenced before the rows of a migration; only relocked before a failed attempt's
        # audit row, which records what happened and commits nothing of the migration.
        self.reset, self.reset_unfenced = session_reset(conn, lock.fence_after_unlock(),
                                                        lock.relock())
        self.fence = "SELECT " + lock.fence()
        self.left_behind = False  # cursors, prepared statements or temporary tables
        self.in_flight = 0  # bytes of SQL sent since the last Sync
        self.tables = tables
        self.settings = settings
        self.log = log.get()
        # One statement each: a pipeline takes no multi-statement string.
        self.set_local = [
            sql.SQL("SET LOCAL {} = {}").format(sql.SQL(name), _duration_ms(seconds))
            .as_string(None)
            for name, seconds in (("lock_timeout", settings.ddl_lock_timeout),
                                  ("statement_timeout", settings.statement_timeout))
            if seconds > 0]

    def apply(self, plan: Plan) -> int:
        """Apply one migration; its duration in ms. Raises MigrationError or Interrupted."""
        return self._run(plan, UP)

    def revert(self, plan: Plan) -> int:
        """Run a rollback file (a plan of `files.read_rollback`): its statements, then the
        history row deleted and an audit row `down`, in the same transaction."""
        return self._run(plan, DOWN)

    def _run(self, plan: Plan, way: Direction) -> int:
        self._check_lock(plan)
        self.log.info(way.started, **as_fields(plan.migration),
                      transactional=plan.transactional, statements=len(plan.statements),
                      backend_pid=self.conn.info.backend_pid)
        if self.watch:
            self.watch.begin(plan)
        try:
            if plan.transactional:
                ms = self._transactional(plan, way)
            else:
                ms = self._no_transaction(plan, way)
        finally:
            self._watch_end()
        self.log.info(way.done, **as_fields(plan.migration), duration_ms=ms)
        return ms

    def _send(self, statement: str | bytes, sent: list[Cursor]) -> None:
        """Execute, having listed the cursor first: in a pipeline an error can surface
        while later statements are still being sent, and the failing statement is then
        the first listed one without a result."""
        cur = self.conn.cursor()
        sent.append(cur)
        cur.execute(statement)
        self.in_flight += len(statement)
        if self.in_flight > IN_FLIGHT:  # a large file: a Sync, so what waits stays bounded
            self.in_flight = 0
            with self.conn.pipeline() as pipeline:
                pipeline.sync()

    def _record(self, plan: Plan, way: Direction, ms: int | None,
                sent: list[Cursor] | None = None) -> None:
        """The role and settings reset, the history and audit rows, then the sequence
        reset, in the migration's transaction and pipeline. `sent` gets the resets'
        cursors: all of them answered and a later statement not means COMMIT failed."""
        sent = [] if sent is None else sent
        for statement in self.reset:
            self._send(statement, sent)
        m = plan.migration
        if way is UP and plan.transactional:
            self.tables.record_applied(self.conn, m, ms)
        elif way is UP:
            assert ms is not None  # timed here: its statements ran outside this transaction
            self.tables.complete(self.conn, m, ms)
        else:
            self.tables.delete(self.conn, m.version)
        self.tables.audit_row(self.conn, m, way.audit, ms, True)
        for statement in RESET_AFTER:
            self._send(statement, sent)

    def _left_behind(self, after: list[Cursor]) -> bool:
        """What the reset's SELECT said, once the pipeline is through."""
        row = after[len(self.reset) - 1].fetchone()
        return bool(row and row[-1])

    def _transactional(self, plan: Plan, way: Direction) -> int:
        m = plan.migration
        attempt = 0
        while True:
            attempt += 1
            self._check_lock(plan)  # a retry may follow a wait
            started = time.monotonic()
            sent: list[Cursor] = []  # the file's statements
            after: list[Cursor] = []  # the reset, with the bookkeeping rows among it
            try:
                # One round trip: BEGIN, the timeouts, the statements, the bookkeeping rows
                # and COMMIT go out together (pipeline mode, one Sync); results come back
                # in order, and the server times the migration for the history row. Plain
                # BEGIN/COMMIT, not conn.transaction(): that one syncs on entry and exit.
                with self.conn.pipeline():
                    leftovers = LEFTOVERS if self.left_behind else ()
                    for statement in ("BEGIN", *self.set_local, *leftovers):
                        self.conn.execute(statement)
                    for st in plan.statements:
                        # Bytes: the cursor keeps what it ran, and a str would be kept
                        # twice, as given and encoded (SPEC §10.4: bounded memory).
                        self._send(st.sql.encode(self.conn.info.encoding), sent)
                    self._record(plan, way, None, after)
                    self.conn.execute("COMMIT")
                self.left_behind = self._left_behind(after)
                return _ms(started)
            except psycopg.Error as exc:
                if outcome.is_lost(exc, self.conn):
                    self._connection_lost(plan, way, exc, started)
                self._roll_back()
                if self._lock_gone(exc):
                    self._audit_failure(plan, way, _ms(started), "advisory lock lost")
                    self._lock_lost(plan, "rolled back, nothing of it committed")
                failed = _unanswered(sent)
                current = plan.statements[failed] if failed < len(sent) else None
                # The bookkeeping rows stand between the reset's two parts: when every
                # statement but COMMIT answered, COMMIT failed (a deferred constraint).
                whole_reset = len(self.reset) + len(RESET_AFTER)
                committing = (failed == len(plan.statements)
                              and _unanswered(after) == len(after) == whole_reset)
                at = AT_COMMIT if committing else AT_BOOKKEEPING
                error = sql_error(plan, current, exc, at)
                self._audit_failure(plan, way, _ms(started), error["message"])
                retry = attempt <= self.settings.ddl_lock_retries
                if exc.sqlstate in RETRYABLE:
                    # Who held the lock, as the watch last saw it (SPEC §9).
                    blockers = (self.watch.blocked_by() if retry and self.watch
                                else self._watch_end())
                    if blockers:
                        error["blocked_by"] = blockers
                if exc.sqlstate in RETRYABLE and retry:
                    delay = min(0.5 * 2 ** (attempt - 1), 15.0) * random.uniform(0.5, 1.5)
                    self.log.warning("migration_lock_retry", **as_fields(m), attempt=attempt,
                                     retries=self.settings.ddl_lock_retries,
                                     delay_s=round(delay, 3), sqlstate=exc.sqlstate,
                                     reason=RETRYABLE[exc.sqlstate], direction=way.audit,
                                     **({"blocked_by": error["blocked_by"]}
                                        if "blocked_by" in error else {}))
                    time.sleep(delay)
                    continue
                self._fail(error, way, attempts=attempt)
            except Interrupted as exc:
                self._roll_back()
                self._audit_failure(plan, way, _ms(started),
                                    f"interrupted by signal {exc.signum}")
                raise

    def _no_transaction(self, plan: Plan, way: Direction) -> int:
        m = plan.migration
        if self.left_behind:  # by the file before, and not yet cleared
            with self.conn.transaction(), self.conn.pipeline():
                for statement in LEFTOVERS:
                    self.conn.execute(statement)
            self.left_behind = False
        try:  # the marker, fenced: one round trip
            with self.conn.pipeline():
                self.conn.execute("BEGIN")
                self.conn.execute(self.fence)
                self.conn.execute(self.lock.claim(m.version))
                if way is UP:
                    self.tables.mark_started(self.conn, m)
                else:
                    self.tables.mark_failed(self.conn, m.version)
                self.conn.execute("COMMIT")
        except psycopg.Error as exc:
            self._roll_back()
            if self._lock_gone(exc):
                self._lock_lost(plan, "not started")
            raise
        started = time.monotonic()
        current: Statement | None = None
        at = AT_BOOKKEEPING
        done = 0  # statements completed before the one that failed
        try:
            if self.settings.statement_timeout > 0:
                self.conn.execute(sql.SQL("SET statement_timeout = {}").format(
                    _duration_ms(self.settings.statement_timeout)))
            for current in plan.statements:
                self.conn.execute(current.sql)
                done += 1
            current = None
            self.conn.execute("RESET statement_timeout")
        except psycopg.Error as exc:
            if outcome.is_lost(exc, self.conn):
                self._connection_lost(plan, way, exc, started, completed=done)
            error = sql_error(plan, current, exc, at)
            indexes.name_invalid(self.conn, plan, error, self.tables.cli)  # SPEC §10.5
            self._audit_failure(plan, way, _ms(started), error["message"])
            if self._lock_gone(exc):
                self._lock_lost(plan, f"cancelled part-way, after {done} of "
                                      f"{len(plan.statements)} statements; its history row "
                                      "stays `failed` for an operator (see `status`)")
            self._fail(error, way, partial=True, completed=done,
                       statements=len(plan.statements))
        except Interrupted as exc:
            self._audit_failure(plan, way, _ms(started), f"interrupted by signal {exc.signum}")
            raise
        ms = _ms(started)
        if (invalid := indexes.left_invalid(self.conn, plan, self.tables.cli)) is not None:
            self._audit_failure(plan, way, ms, invalid["message"])
            self._fail(invalid, way, partial=True, completed=done,
                       statements=len(plan.statements))
        try:
            with self.conn.transaction(), self.conn.pipeline():
                for statement in LEFTOVERS:
                    self.conn.execute(statement)
                self._record(plan, way, ms)
            self.left_behind = False
        except psycopg.Error as exc:
            if outcome.is_lost(exc, self.conn):
                self._connection_lost(plan, way, exc, started, completed=done)
            self._roll_back()
            error = sql_error(plan, None, exc, at)
            self._audit_failure(plan, way, ms, error["message"])
            if self._lock_gone(exc):
                self._lock_lost(plan, "ran all its statements, but its history row "
                                      "stays `failed`: it was not to commit without the "
                                      "lock")
            self._fail(error, way, partial=True, completed=done,
                       statements=len(plan.statements))
        return ms

    def _roll_back(self) -> None:
        """End the failed (or cancelled) migration's transaction; the server already
        skipped whatever followed the error in the pipeline."""
        try:
            if self.conn.info.transaction_status != TransactionStatus.IDLE:
                self.conn.rollback()
        except psycopg.Error as exc:  # a dead connection: the server rolled back itself
            self.log.warning("rollback_failed", message=str(exc).strip())

    def _audit_failure(self, plan: Plan, way: Direction, ms: int, message: str) -> None:
        """Written after the rollback, in its own transaction, so it survives; after a
        session reset, so neither a no-transaction file's leftovers nor what a rollback
        does not undo decide who writes it."""
        if not plan.transactional:  # who ran it, for whoever finds its `failed` row
            message += (f" [run {log.RUN_ID} on {self.tables.host}, backend pid "
                        f"{self.conn.info.backend_pid}]")
        try:
            with self.conn.transaction(), self.conn.pipeline():
                for statement in (*self.reset_unfenced, *RESET_AFTER, *LEFTOVERS):
                    self.conn.execute(statement)
                self.tables.audit_row(self.conn, plan.migration, way.audit, ms, False,
                                      message)
            self.left_behind = False
        except psycopg.Error as exc:
            self.log.warning("audit_write_failed", **as_fields(plan.migration),
                             message=str(exc).strip())

    def _lock_gone(self, exc: psycopg.Error) -> bool:
        """Whether `exc` came of the lock lost: the fence refused the COMMIT, or the watch
        found the lock's connection dead and cancelled the statement."""
        return is_fence_error(exc) or bool(self.watch and self.watch.lost)

    def _check_lock(self, plan: Plan) -> None:
        """Before a migration (or a retry) starts: the watch found the lock gone."""
        if self.watch and self.watch.lost:
            self._lock_lost(plan, "not started")

    def _lock_lost(self, plan: Plan, what: str) -> NoReturn:
        """`lock_lost` (once: the watch may have logged it) and exit 4 (SPEC §10.1)."""
        self._watch_end()
        reason = (self.watch.lost if self.watch and self.watch.lost else
                  "the advisory lock was no longer held by this runner when the migration "
                  "was to commit")
        if not (self.watch and self.watch.lost):
            self.log.error("lock_lost", reason=reason, lock_key=self.lock.key,
                           lock_pid=self.lock.pid, **as_fields(plan.migration))
        m = plan.migration
        raise LockLostError(
            f"advisory lock lost: {reason}; {m.file}: {what}; another runner may hold the "
            "lock now: run again once it is done", **as_fields(m), lock_key=self.lock.key,
            lock_pid=self.lock.pid)

    def _watch_end(self) -> list[dict[str, Any]]:
        """The watch stops reporting this migration; the last blockers it saw."""
        return self.watch.end() if self.watch else []

    def _connection_lost(self, plan: Plan, way: Direction, exc: psycopg.Error,
                         started: float, completed: int | None = None) -> NoReturn:
        """The connection died or stalled: not the file's error. Reconnects to learn
        whether the migration committed (runner.applying.outcome); exit 3."""
        self._watch_end()
        stall = self.watch.stall if self.watch else None
        partial = (None if completed is None else self._part_way(
            way, plan.migration.version, completed, len(plan.statements)))
        lock = self.watch.conn if self.watch else None
        if self.watch and lock is not None:
            self.watch.stop()  # the lock connection is ours again: ask it once
            if not self.last_words.sqlstate and not exc.sqlstate:
                outcome.probe(lock, self.last_words)
        lock_lost = lock is not None and (lock.closed or lock.broken)
        outcome.settle(self.settings, self.tables, plan, way.audit, exc, pid=self.pid,
                       started=started, ms=_ms(started), last_words=self.last_words,
                       stalled=stall.fields() if stall else {}, partial=partial,
                       lock_pid=self.watch.lock_pid if self.watch and lock_lost else None)

    def _fail(self, error: dict[str, Any], way: Direction, **extra: Any) -> NoReturn:
        self._watch_end()  # nothing about this migration after its failure is logged
        # `migration_failed` for a rollback file too (direction: down): an alert on that
        # event must not miss a failed rollback.
        self.log.error("migration_failed", **error, direction=way.audit, **extra)
        text = f"{where(error)}: {error['message']} (SQLSTATE {error['sqlstate']})"
        if error.get("blocked_by"):
            from runner.applying.watch import describe_blockers

            text += f"; blocked by {describe_blockers(error['blocked_by'])}"
        if error["sqlstate"] in RETRYABLE and extra.get("attempts"):
            whom = ("end that session or wait for it to finish" if error.get("blocked_by")
                    else "find the session holding the lock (pg_stat_activity) and end it "
                    "or wait for it")
            attempts = extra["attempts"]
            text += (f"; gave up after {attempts} attempt{'s' if attempts > 1 else ''} of "
                     f"MIGRATE_DDL_LOCK_TIMEOUT={self.settings.ddl_lock_timeout:g}s: {whom}, "
                     "then run again, or raise MIGRATE_DDL_LOCK_RETRIES (now "
                     f"{self.settings.ddl_lock_retries}) or MIGRATE_DDL_LOCK_TIMEOUT")
        if error["sqlstate"] == "57014" and self.settings.statement_timeout > 0:
            text += (f"; the limit is MIGRATE_STATEMENT_TIMEOUT="
                     f"{self.settings.statement_timeout:g}s: raise it, or set 0 for none")
        if extra.get("partial"):
            text += "; " + self._part_way(way, error["version"], extra["completed"],
                                          extra["statements"])
        else:  # SPEC §3: a transactional file is applied whole or not at all
            if error["sqlstate"] == "25001":  # refused in a transaction block
                text += self.tables.spelling.new_file
            text += "; rolled back: nothing of it was committed"
        raise MigrationError(text, **error)

    def _part_way(self, way: Direction, version: int, completed: int, statements: int) -> str:
        """What an operator does about a no-transaction file that stopped part-way."""
        return (f"statements completed before it: {completed} of {statements}; "
                + way.partial.format(
                    repair_failed=self.tables.cli("repair --failed"),
                    mark_applied=self.tables.cli(f"repair --mark-applied {version}")))
