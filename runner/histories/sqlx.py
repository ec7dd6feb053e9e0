"""The sqlx history format (SPEC §8): `_sqlx_migrations`, shared with the app.

What sqlx writes, from sqlx-postgres src/migrate.rs: the table (`ensure_migrations_table`),
one row per applied file (`execute_migration`: version, description, success TRUE, the
SHA-384 checksum as bytea, execution_time in nanoseconds; sqlx writes -1 and updates it
after its commit, the runner writes the time in the migration's own transaction), the row
deleted on revert (`revert_migration`), `success = false` refused as dirty
(`dirty_version`), and the advisory lock key (`generate_lock_id`). The folder is read by
runner.folder.sqlx_files, as sqlx reads it.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import ClassVar

from psycopg import sql

from runner.errors import ValidationError
from runner.folder import sqlx_files, statements
from runner.folder.files import Folder, Migration
from runner.histories.history import Applied, History
from runner.output import log
from runner.session.database import Connection

# sqlx's DDL, verbatim but for the schema-qualified name.
_DDL = """
CREATE TABLE IF NOT EXISTS {history} (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
)"""
_ELAPSED_NS = ("(extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.now()) "
               "* 1000000000)::pg_catalog.int8")
_LOCK_FACTOR = 0x3D32AD9E  # sqlx's generate_lock_id: "chosen by fair dice roll"


def lock_key(database: str) -> int:
    """sqlx's advisory lock key: 0x3d32ad9e times the CRC-32/ISO-HDLC of the database name,
    as a signed 64-bit integer (the product never exceeds it)."""
    return _LOCK_FACTOR * zlib.crc32(database.encode())


class SqlxHistory(History):
    format = "sqlx"
    spelling = sqlx_files.SPELLING
    table = "_sqlx_migrations"
    # What sqlx's connection sends at startup (sqlx-postgres src/connection/establish.rs,
    # extra_float_digits from PgConnectOptions' default): a file that reads the clock or
    # parses a date builds what the app's connection would.
    session_parameters: ClassVar[dict[str, str]] = {
        "DateStyle": "ISO, MDY", "client_encoding": "UTF8", "TimeZone": "UTC",
        "extra_float_digits": "2"}
    other_fix = ("run `{baseline}` to move that database to the sqlx format, or set "
                 "MIGRATE_HISTORY_FORMAT=native")
    RETIRED = "migration_history_before_sqlx"
    baseline_over_other = True  # baseline is how a native database moves to sqlx

    def __init__(self, schema: str, native_schema: str | None = None) -> None:
        """`schema`: where `_sqlx_migrations` is (runner.histories.choice);
        `native_schema`: MIGRATE_SCHEMA, where a native `migration_history` would be
        (default: `schema`)."""
        super().__init__(schema)
        self.native_schema = native_schema or schema
        self.other_tables = ((self.native_schema, "migration_history"),)
        self._record_applied = sql.SQL(
            "INSERT INTO {} (version, description, success, checksum, execution_time) "
            "VALUES (%s, %s, TRUE, %s, COALESCE(%s, " + _ELAPSED_NS + "))"
        ).format(self.history).as_string(None)

    def read_folder(self, folder: Path) -> Folder:
        return sqlx_files.read_folder(folder)

    def lex(self, migrations: list[Migration]) -> tuple[list[statements.Plan], list[str]]:
        return sqlx_files.lex(migrations, forward=True)

    def lex_rollbacks(self, migrations: list[Migration]
                      ) -> tuple[list[statements.Plan], list[str]]:
        plans, problems = sqlx_files.lex_rollbacks(migrations)
        for p in plans:
            if not p.statements:
                log.get().warning("empty_rollback", version=p.migration.version,
                                  name=p.migration.name, file=p.migration.file,
                                  message="the .down.sql holds only comments: rolling back "
                                          "runs nothing and deletes the history row, as "
                                          "sqlx's revert does; the schema stays as it is")
        return plans, problems

    def plan(self, migrations: list[Migration]) -> list[statements.Plan]:
        plans = super().plan(migrations)
        for p in plans:
            if not p.statements:
                log.get().warning("empty_migration", version=p.migration.version,
                                  name=p.migration.name, file=p.migration.file,
                                  message="the file holds only comments: applied as a "
                                          "no-op and recorded, as sqlx does")
        return plans

    def eol_only(self, m: Migration, checksum: str) -> bool:
        return checksum in sqlx_files.eol_checksums(m.text)

    def lock_key(self, database: str) -> int:
        return lock_key(database)

    def _history_ddl(self) -> sql.Composed:
        return sql.SQL(_DDL).format(history=self.history)

    def read(self, conn: Connection) -> dict[int, Applied]:
        rows = conn.execute(sql.SQL(
            "SELECT version, description, checksum, installed_on, execution_time, success "
            "FROM {} ORDER BY version").format(self.history)).fetchall()
        return {r[0]: Applied(r[0], r[1], bytes(r[2]).hex(), r[3],
                              r[4] // 1_000_000 if r[4] >= 0 else None,
                              "applied" if r[5] else "failed") for r in rows}

    def record_applied(self, conn: Connection, m: Migration, ms: int | None) -> None:
        ns = None if ms is None else ms * 1_000_000
        conn.execute(self._record_applied,
                     (m.version, m.description, bytes.fromhex(m.checksum), ns))

    def complete(self, conn: Connection, m: Migration, ms: int) -> None:
        conn.execute(sql.SQL(
            "UPDATE {} SET success = TRUE, checksum = %s, description = %s, "
            "execution_time = %s, installed_on = pg_catalog.now() "
            "WHERE version = %s AND NOT success").format(self.history),
            (bytes.fromhex(m.checksum), m.description, ms * 1_000_000, m.version))

    def mark_started(self, conn: Connection, m: Migration) -> None:
        conn.execute(sql.SQL(
            "INSERT INTO {} (version, description, success, checksum, execution_time) "
            "VALUES (%s, %s, FALSE, %s, -1)").format(self.history),
            (m.version, m.description, bytes.fromhex(m.checksum)))

    def mark_failed(self, conn: Connection, version: int) -> None:
        conn.execute(sql.SQL("UPDATE {} SET success = FALSE WHERE version = %s").format(
            self.history), (version,))

    def set_checksum(self, conn: Connection, version: int, checksum: str) -> None:
        conn.execute(sql.SQL("UPDATE {} SET checksum = %s WHERE version = %s").format(
            self.history), (bytes.fromhex(checksum), version))

    def mark_applied(self, conn: Connection, m: Migration) -> bool:
        # The row sqlx itself would have written, but for the time: nobody measured the
        # hand fix, and sqlx's -1 ("not recorded") says so.
        cur = conn.execute(sql.SQL(
            "UPDATE {} SET success = TRUE, checksum = %s, description = %s, "
            "installed_on = pg_catalog.now() WHERE version = %s AND NOT success").format(
            self.history), (bytes.fromhex(m.checksum), m.description, m.version))
        return cur.rowcount == 1

    def retire_other(self, conn: Connection) -> str | None:
        """Rename a native `migration_history` out of the way once `baseline` has moved its
        versions here: left as it was, a run that forgets MIGRATE_HISTORY_FORMAT=sqlx
        would read it, find the newer files pending and apply them a second time. Kept,
        not dropped: it is the record of what ran before the move. In the caller's
        transaction; a ValidationError when the new name is taken."""
        old = sql.Identifier(self.native_schema, "migration_history")
        new = sql.Identifier(self.native_schema, self.RETIRED)
        row = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL, "
                           "pg_catalog.to_regclass(%s) IS NOT NULL",
                           (old.as_string(conn), new.as_string(conn))).fetchone()
        if not (row and row[0]):
            return None
        if row[1]:
            raise ValidationError([
                f"baseline refused: {old.as_string(conn)} would be renamed "
                f"{new.as_string(conn)}, which exists already; drop or rename one of them"])
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            old, sql.Identifier(self.RETIRED)))
        return new.as_string(conn)
