"""Applying one migration, or its rollback file (SPEC §3, §4).

Transactional: BEGIN; SET LOCAL timeouts; the statements; history and audit rows; COMMIT,
retried when it lost a lock race (55P03) or a deadlock (40P01). No-transaction: a `failed`
history row first, the statements one by one, then `applied` (or, for a rollback, the row
deleted); a crash part-way leaves the `failed` row for an operator.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from runner import log
from runner.database import Connection
from runner.errors import Interrupted, MigrationError
from runner.history import History, as_fields
from runner.settings import Settings
from runner.statements import Plan, Statement, line_col

RETRYABLE = {"55P03": "lock_not_available", "40P01": "deadlock_detected"}


@dataclass(frozen=True)
class Direction:
    audit: str  # migration_audit.direction
    started: str  # event names
    done: str
    partial: str  # what the operator does after a no-transaction file stopped part-way


UP = Direction("up", "migration_started", "migration_applied",
               "no-transaction migration stopped part-way: fix the database by hand, then "
               "run `migration-runner repair --failed` (the file runs again), or, if you "
               "finished it by hand, `migration-runner repair --mark-applied {version}`")
DOWN = Direction("down", "rollback_started", "rollback_applied",
                 "no-transaction rollback stopped part-way: finish undoing it by hand, then "
                 "run `migration-runner repair --failed` (the migration then counts as not "
                 "applied)")


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def sql_error(plan: Plan, statement: Statement | None, exc: psycopg.Error) -> dict[str, Any]:
    """Where in the file the server's error points, and what it said."""
    diag = exc.diag
    offset = statement.offset if statement else 0
    if statement and diag.statement_position:
        offset += int(diag.statement_position) - 1
    line, column = line_col(plan.migration.text, offset)
    message = diag.message_primary or str(exc).strip() or exc.__class__.__name__
    return {**as_fields(plan.migration), "sqlstate": exc.sqlstate, "message": message,
            "detail": diag.message_detail, "hint": diag.message_hint, "line": line,
            "column": column}


def _duration_ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class Applier:
    def __init__(self, conn: Connection, tables: History, settings: Settings) -> None:
        self.conn = conn
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
        self.log.info(way.started, **as_fields(plan.migration),
                      transactional=plan.transactional, statements=len(plan.statements))
        if plan.transactional:
            ms = self._transactional(plan, way)
        else:
            ms = self._no_transaction(plan, way)
        self.log.info(way.done, **as_fields(plan.migration), duration_ms=ms)
        return ms

    def _record(self, plan: Plan, way: Direction, ms: int | None) -> None:
        """History and audit rows, in the migration's transaction and pipeline."""
        m = plan.migration
        if way is UP:
            self.tables.record_applied(self.conn, m, ms)
        else:
            self.tables.delete(self.conn, m.version)
        self.tables.audit_row(self.conn, m, way.audit, ms, True)

    def _transactional(self, plan: Plan, way: Direction) -> int:
        m = plan.migration
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            sent: list[tuple[Statement, psycopg.Cursor[Any]]] = []
            try:
                # One round trip: BEGIN, the timeouts, the statements, the bookkeeping rows
                # and COMMIT go out together (pipeline mode, one Sync); results come back
                # in order, and the server times the migration for the history row. Plain
                # BEGIN/COMMIT, not conn.transaction(): that one syncs on entry and exit.
                with self.conn.pipeline():
                    self.conn.execute("BEGIN")
                    for statement in self.set_local:
                        self.conn.execute(statement)
                    sent = [(st, self.conn.execute(st.sql)) for st in plan.statements]
                    self._record(plan, way, None)
                    self.conn.execute("COMMIT")
                return _ms(started)
            except psycopg.Error as exc:
                self._roll_back()
                # The failing statement is the first without a result; the ones after it
                # were skipped by the server.
                current = next((st for st, cur in sent if cur.pgresult is None), None)
                error = sql_error(plan, current, exc)
                self._audit_failure(plan, way, _ms(started), error["message"])
                if exc.sqlstate in RETRYABLE and attempt <= self.settings.ddl_lock_retries:
                    delay = min(0.5 * 2 ** (attempt - 1), 15.0) * random.uniform(0.5, 1.5)
                    self.log.warning("migration_lock_retry", **as_fields(m), attempt=attempt,
                                     retries=self.settings.ddl_lock_retries,
                                     delay_s=round(delay, 3), sqlstate=exc.sqlstate,
                                     reason=RETRYABLE[exc.sqlstate], direction=way.audit)
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
        if way is UP:
            self.tables.mark_started(self.conn, m)
        else:
            self.tables.mark_failed(self.conn, m.version)
        started = time.monotonic()
        current: Statement | None = None
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
            error = sql_error(plan, current, exc)
            self._audit_failure(plan, way, _ms(started), error["message"])
            self._fail(error, way, partial=True, completed=done,
                       statements=len(plan.statements))
        except Interrupted as exc:
            self._audit_failure(plan, way, _ms(started), f"interrupted by signal {exc.signum}")
            raise
        ms = _ms(started)
        with self.conn.transaction(), self.conn.pipeline():
            self._record(plan, way, ms)
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
        """Written after the rollback, in its own transaction, so it survives."""
        try:
            self.tables.audit_row(self.conn, plan.migration, way.audit, ms, False, message)
        except psycopg.Error as exc:
            self.log.warning("audit_write_failed", **as_fields(plan.migration),
                             message=str(exc).strip())

    def _fail(self, error: dict[str, Any], way: Direction, **extra: Any) -> NoReturn:
        # `migration_failed` for a rollback file too (direction: down): an alert on that
        # event must not miss a failed rollback.
        self.log.error("migration_failed", **error, direction=way.audit, **extra)
        where = f"{error['file']}:{error['line']}:{error['column']}"
        text = f"{where}: {error['message']} (SQLSTATE {error['sqlstate']})"
        if extra.get("partial"):
            text += (f"; statements completed before it: {extra['completed']} of "
                     f"{extra['statements']}; " + way.partial.format(version=error["version"]))
        raise MigrationError(text, **error)
