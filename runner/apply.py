"""Applying one migration (SPEC §3).

Transactional: BEGIN; SET LOCAL timeouts; the statements; history and audit rows; COMMIT,
retried when it lost a lock race (55P03) or a deadlock (40P01). No-transaction: a `failed`
history row first, the statements one by one, then `applied`; a crash part-way leaves the
`failed` row for an operator.
"""

from __future__ import annotations

import random
import time
from typing import Any, NoReturn

import psycopg
from psycopg import sql

from runner import log
from runner.database import Connection
from runner.errors import Interrupted, MigrationError
from runner.history import Tables, as_fields
from runner.settings import Settings
from runner.statements import Plan, Statement, line_col

RETRYABLE = {"55P03": "lock_not_available", "40P01": "deadlock_detected"}


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
    def __init__(self, conn: Connection, tables: Tables, settings: Settings) -> None:
        self.conn = conn
        self.tables = tables
        self.settings = settings
        self.log = log.get()

    def apply(self, plan: Plan) -> int:
        """Apply one migration; its duration in ms. Raises MigrationError or Interrupted."""
        self.log.info("migration_started", **as_fields(plan.migration),
                      transactional=plan.transactional, statements=len(plan.statements))
        ms = self._transactional(plan) if plan.transactional else self._no_transaction(plan)
        self.log.info("migration_applied", **as_fields(plan.migration), duration_ms=ms)
        return ms

    def _set_local(self) -> None:
        parts = []
        if self.settings.ddl_lock_timeout > 0:
            parts.append(sql.SQL("SET LOCAL lock_timeout = {}").format(
                _duration_ms(self.settings.ddl_lock_timeout)))
        if self.settings.statement_timeout > 0:
            parts.append(sql.SQL("SET LOCAL statement_timeout = {}").format(
                _duration_ms(self.settings.statement_timeout)))
        if parts:
            self.conn.execute(sql.SQL("; ").join(parts))

    def _transactional(self, plan: Plan) -> int:
        m = plan.migration
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            current: Statement | None = None
            try:
                with self.conn.transaction():
                    self._set_local()
                    for current in plan.statements:
                        self.conn.execute(current.sql)
                    current = None
                    ms = _ms(started)
                    self.tables.record_applied(self.conn, m, ms)
                    self.tables.audit_row(self.conn, m, "up", ms, True)
                return ms
            except psycopg.Error as exc:
                error = sql_error(plan, current, exc)
                self._audit_failure(plan, _ms(started), error["message"])
                if exc.sqlstate in RETRYABLE and attempt <= self.settings.ddl_lock_retries:
                    delay = min(0.5 * 2 ** (attempt - 1), 15.0) * random.uniform(0.5, 1.5)
                    self.log.warning("migration_lock_retry", **as_fields(m), attempt=attempt,
                                     retries=self.settings.ddl_lock_retries,
                                     delay_s=round(delay, 3), sqlstate=exc.sqlstate,
                                     reason=RETRYABLE[exc.sqlstate])
                    time.sleep(delay)
                    continue
                self._fail(error, attempts=attempt)
            except Interrupted as exc:
                self._audit_failure(plan, _ms(started), f"interrupted by signal {exc.signum}")
                raise

    def _no_transaction(self, plan: Plan) -> int:
        m = plan.migration
        self.tables.mark_started(self.conn, m)
        started = time.monotonic()
        current: Statement | None = None
        try:
            if self.settings.statement_timeout > 0:
                self.conn.execute(sql.SQL("SET statement_timeout = {}").format(
                    _duration_ms(self.settings.statement_timeout)))
            for current in plan.statements:
                self.conn.execute(current.sql)
            current = None
            self.conn.execute("RESET statement_timeout")
        except psycopg.Error as exc:
            error = sql_error(plan, current, exc)
            self._audit_failure(plan, _ms(started), error["message"])
            self._fail(error, partial=True)
        except Interrupted as exc:
            self._audit_failure(plan, _ms(started), f"interrupted by signal {exc.signum}")
            raise
        ms = _ms(started)
        with self.conn.transaction():
            self.tables.record_applied(self.conn, m, ms)
            self.tables.audit_row(self.conn, m, "up", ms, True)
        return ms

    def _audit_failure(self, plan: Plan, ms: int, message: str) -> None:
        """Written after the rollback, in its own transaction, so it survives."""
        try:
            self.tables.audit_row(self.conn, plan.migration, "up", ms, False, message)
        except psycopg.Error as exc:
            self.log.warning("audit_write_failed", **as_fields(plan.migration),
                             message=str(exc).strip())

    def _fail(self, error: dict[str, Any], **extra: Any) -> NoReturn:
        self.log.error("migration_failed", **error, **extra)
        where = f"{error['file']}:{error['line']}:{error['column']}"
        text = f"{where}: {error['message']} (SQLSTATE {error['sqlstate']})"
        if extra.get("partial"):
            text += ("; no-transaction migration stopped part-way: fix the database by hand, "
                     "then run `migration-runner repair --failed`")
        raise MigrationError(text, **error)
