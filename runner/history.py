"""The bookkeeping tables (SPEC §3) and the checks of history against the files.

`migration_history`: one row per applied (or failed part-way) version.
`migration_audit`: one row per attempt, never updated.
Every identifier is quoted with psycopg.sql: MIGRATE_SCHEMA may be any name.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from runner.database import Connection
from runner.files import Migration

_HISTORY_DDL = """
CREATE TABLE {history} (
    version           bigint      PRIMARY KEY,
    description       text        NOT NULL,
    checksum          text        NOT NULL,
    applied_at        timestamptz NOT NULL DEFAULT now(),
    applied_by        text        NOT NULL DEFAULT current_user,
    execution_time_ms bigint      NOT NULL DEFAULT 0,
    status            text        NOT NULL CHECK (status IN ('applied', 'failed'))
)"""
# The time since the transaction began, for a caller that queued the statements in a
# pipeline and so cannot time them itself.
ELAPSED_MS = "(extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint"

_AUDIT_DDL = """
CREATE TABLE {audit} (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version           bigint      NOT NULL,
    description       text        NOT NULL,
    direction         text        NOT NULL
                                  CHECK (direction IN ('up', 'down', 'baseline', 'repair')),
    checksum          text,
    executed_by       text        NOT NULL DEFAULT current_user,
    executed_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    execution_time_ms bigint      NOT NULL DEFAULT 0,
    success           boolean     NOT NULL,
    error_message     text,
    client_host       text
)"""


@dataclass(frozen=True)
class Applied:
    version: int
    description: str
    checksum: str
    applied_at: datetime
    execution_time_ms: int
    status: str


def client_host() -> str:
    """The pod name in Kubernetes (HOSTNAME), else the machine's name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


class Tables:
    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.history = sql.Identifier(schema, "migration_history")
        self.audit = sql.Identifier(schema, "migration_audit")
        self.host = client_host()
        # Composed once: they go out with every migration.
        self._record_applied = sql.SQL(
            "INSERT INTO {} (version, description, checksum, execution_time_ms, status) "
            "VALUES (%s, %s, %s, COALESCE(%s, " + ELAPSED_MS + "), 'applied') "
            "ON CONFLICT (version) DO UPDATE SET "
            "checksum = EXCLUDED.checksum, execution_time_ms = EXCLUDED.execution_time_ms, "
            "applied_at = now(), applied_by = current_user, status = 'applied'"
        ).format(self.history).as_string(None)
        self._audit_row = sql.SQL(
            "INSERT INTO {} (version, description, direction, checksum, execution_time_ms, "
            "success, error_message, client_host) "
            "VALUES (%s, %s, %s, %s, COALESCE(%s, " + ELAPSED_MS + "), %s, %s, %s)"
        ).format(self.audit).as_string(None)

    def exist(self, conn: Connection) -> bool:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                           (self.history.as_string(conn),)).fetchone()
        return bool(row and row[0])

    def ensure(self, conn: Connection) -> None:
        """Create what is missing. Runs under the advisory lock, so no two runners race;
        checks first, so a role without CREATE on an existing schema still works."""
        row = conn.execute(
            "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, "
            "to_regclass(%s) IS NOT NULL",
            (sql.Identifier(self.schema).as_string(conn), self.history.as_string(conn),
             self.audit.as_string(conn))).fetchone()
        assert row is not None
        has_schema, has_history, has_audit = row
        if has_schema and has_history and has_audit:
            return
        with conn.transaction():
            if not has_schema:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            if not has_history:
                conn.execute(sql.SQL(_HISTORY_DDL).format(history=self.history))
            if not has_audit:
                conn.execute(sql.SQL(_AUDIT_DDL).format(audit=self.audit))

    def read_if_exists(self, conn: Connection) -> dict[int, Applied]:
        """The history, or none before the first `migrate` created the tables. Reads only,
        so read-only commands work for a role that may just SELECT these tables."""
        return self.read(conn) if self.exist(conn) else {}

    def read(self, conn: Connection) -> dict[int, Applied]:
        rows = conn.execute(sql.SQL(
            "SELECT version, description, checksum, applied_at, execution_time_ms, status "
            "FROM {} ORDER BY version").format(self.history)).fetchall()
        return {r[0]: Applied(*r) for r in rows}

    def record_applied(self, conn: Connection, m: Migration, ms: int | None) -> None:
        """Insert or complete the history row; inside the migration's transaction.
        `ms` None: the server measures the time since the transaction began."""
        conn.execute(self._record_applied, (m.version, m.description, m.checksum, ms))

    def mark_started(self, conn: Connection, m: Migration) -> None:
        """A no-transaction migration is `failed` until it completes, so a crash part-way
        leaves a row that stops every later run until an operator repairs it."""
        conn.execute(sql.SQL(
            "INSERT INTO {} (version, description, checksum, status) "
            "VALUES (%s, %s, %s, 'failed')").format(self.history),
            (m.version, m.description, m.checksum))

    def mark_failed(self, conn: Connection, version: int) -> None:
        """A no-transaction rollback is `failed` until it completes, like a forward one."""
        conn.execute(sql.SQL("UPDATE {} SET status = 'failed' WHERE version = %s").format(
            self.history), (version,))

    def set_checksum(self, conn: Connection, version: int, checksum: str) -> None:
        conn.execute(sql.SQL("UPDATE {} SET checksum = %s WHERE version = %s").format(
            self.history), (checksum, version))

    def delete(self, conn: Connection, version: int) -> None:
        conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(self.history),
                     (version,))

    def audit_row(self, conn: Connection, m: Migration | Applied, direction: str,
                  ms: int | None, success: bool, error: str | None = None) -> None:
        conn.execute(self._audit_row, (m.version, m.description, direction, m.checksum, ms,
                                       success, error, self.host))


@dataclass
class Comparison:
    """History against the files, as SPEC §3 classifies it."""

    pending: list[Migration]
    changed: list[tuple[Migration, Applied]]
    missing: list[Applied]
    failed: list[Applied]
    out_of_order: list[Migration]
    applied_versions: list[int]

    def problems(self, strict: bool, allow_out_of_order: bool) -> list[str]:
        found = [f"{a.version}_{a.description}: failed part-way (no-transaction migration); "
                 "fix the database by hand, then run `migration-runner repair --failed`"
                 for a in self.failed]
        found += [f"{m.file}: changed after it was applied (applied checksum {a.checksum}, "
                  f"file checksum {m.checksum}); restore the file, or run `migration-runner "
                  "repair --accept-checksums` if the edit is intended"
                  for m, a in self.changed]
        if self.missing and (self.pending or strict):
            versions = ", ".join(str(a.version) for a in self.missing)
            if self.pending:
                found.append(f"divergent history: versions {versions} are applied but have no "
                              "file here, while files are pending; deploy an image with the "
                              "same migrations as the database")
            else:
                found.append(f"database is ahead of these files: versions {versions} have no "
                             "file (--strict)")
        if self.out_of_order and not allow_out_of_order:
            newest = max(self.applied_versions)
            found += [f"{m.file}: pending but older than applied version {newest}; renumber it, "
                      "or set MIGRATE_ALLOW_OUT_OF_ORDER=true" for m in self.out_of_order]
        return found


def compare(migrations: list[Migration], applied: dict[int, Applied]) -> Comparison:
    by_version = {m.version: m for m in migrations}
    newest = max((v for v, a in applied.items()), default=None)
    pending = [m for m in migrations if m.version not in applied]
    return Comparison(
        pending=pending,
        changed=[(by_version[v], a) for v, a in applied.items()
                 if v in by_version and a.status == "applied"
                 and by_version[v].checksum != a.checksum],
        missing=[a for v, a in applied.items() if v not in by_version],
        failed=[a for a in applied.values() if a.status == "failed"],
        out_of_order=[m for m in pending if newest is not None and m.version < newest],
        applied_versions=sorted(applied),
    )


def as_fields(m: Migration) -> dict[str, Any]:
    """The fields every migration event carries (SPEC §6)."""
    return {"version": m.version, "name": m.name, "file": m.file}
