"""The history of applied migrations, in one of two formats, and its checks against the
files (SPEC §3, §8).

A format is one object (`History`): the history table's DDL and rows, the checksum of a
file, the advisory lock key and the rules for reading the folder. `native` keeps
`migration_history`; `sqlx` (runner.histories.sqlx) keeps sqlx's `_sqlx_migrations`, shared with
the app. Both keep the audit table `migration_audit`. Commands use only this interface,
so none of them knows which format it runs in. Every identifier is schema-qualified and
quoted: MIGRATE_SCHEMA may be any name, and a migration may leave its own search_path.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from psycopg import sql

from runner.errors import ValidationError
from runner.folder import files, statements
from runner.folder.files import Migration
from runner.session.database import Connection
from runner.session.lock import lock_key

# The time since the transaction began, for a caller that queued the statements in a
# pipeline and so cannot time them itself.
ELAPSED_MS = ("(extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.now()) * 1000)"
              "::pg_catalog.int8")

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
    checksum: str  # hex, whatever the format stores
    applied_at: datetime
    execution_time_ms: int | None  # None: not recorded (sqlx's -1 before its update)
    status: str  # applied or failed


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 migration`, `2 migrations`: every count in a message goes through here."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def named(version: int, description: str, local: Migration | None) -> str:
    """A migration as an operator finds it: its file when the folder has it, else the
    history's version and description (no file name is invented for a file not here)."""
    return local.file if local else f"version {version} ({description})"


def client_host() -> str:
    """The pod name in Kubernetes (HOSTNAME), else the machine's name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


class History:
    """One history format. Subclasses give the table, its rows and the file rules."""

    format = ""
    table = ""
    spelling = statements.NATIVE  # the fixes' words for its file rules (SPEC §8)
    # Tables of the other format: beside an empty history of ours they mean the database
    # was migrated by the other one (SPEC §8), and the setting that reads them.
    other_tables: tuple[tuple[str, str], ...] = ()
    other_fix = ""
    baseline_over_other = False  # may `baseline` write beside the other format's rows?
    # Set on the format's sessions once it is known (SPEC §8: sqlx's startup parameters).
    session_parameters: ClassVar[dict[str, str]] = {}

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.history = sql.Identifier(schema, self.table)
        self.audit = sql.Identifier(schema, "migration_audit")
        self.bookkeeping = {(schema, self.table), (schema, "migration_audit")}
        self.host = client_host()
        self._audit_row = sql.SQL(
            "INSERT INTO {} (version, description, direction, checksum, execution_time_ms, "
            "success, error_message, client_host) "
            "VALUES (%s, %s, %s, %s, COALESCE(%s, " + ELAPSED_MS + "), %s, %s, %s)"
        ).format(self.audit).as_string(None)

    # --- the folder ------------------------------------------------------------------

    def read_folder(self, folder: Path) -> files.Folder:
        """Every forward file with its rollback, and every problem; none raised."""
        raise NotImplementedError

    def load(self, folder: Path) -> list[Migration]:
        """The forward migrations, or a ValidationError naming every bad file."""
        result = self.read_folder(folder)
        if result.problems:
            raise ValidationError(result.problems)
        return result.migrations

    def lex(self, migrations: list[Migration]) -> tuple[list[statements.Plan], list[str]]:
        """The plans of the good forward files and every problem of every file."""
        raise NotImplementedError

    def lex_rollbacks(self, migrations: list[Migration]
                      ) -> tuple[list[statements.Plan], list[str]]:
        """The rollback plans of `migrations`, in order, and every reason not to run one."""
        raise NotImplementedError

    def plan(self, migrations: list[Migration]) -> list[statements.Plan]:
        """Lex every file; a ValidationError lists every problem of every file."""
        plans, problems = self.lex(migrations)
        if problems:
            raise ValidationError(problems)
        return plans

    def eol_only(self, m: Migration, checksum: str) -> bool:
        """Whether a stored `checksum` differing from `m.checksum` is a line-ending or BOM
        difference only (not an edit)."""
        return False

    # --- the database ----------------------------------------------------------------

    def lock_key(self, database: str) -> int:
        raise NotImplementedError

    def _history_ddl(self) -> sql.Composed:
        raise NotImplementedError

    def exist(self, conn: Connection) -> bool:
        row = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL",
                           (self.history.as_string(conn),)).fetchone()
        return bool(row and row[0])

    def ensure(self, conn: Connection) -> None:
        """Create what is missing. Runs under the advisory lock, so no two runners race;
        checks first, so a role without CREATE on an existing schema still works."""
        row = conn.execute(
            "SELECT pg_catalog.to_regnamespace(%s) IS NOT NULL, "
            "pg_catalog.to_regclass(%s) IS NOT NULL, pg_catalog.to_regclass(%s) IS NOT NULL",
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
                conn.execute(self._history_ddl())
            if not has_audit:
                conn.execute(sql.SQL(_AUDIT_DDL).format(audit=self.audit))

    def read_if_exists(self, conn: Connection) -> dict[int, Applied]:
        """The history, or none before the first `migrate` created the tables. Reads only,
        so read-only commands work for a role that may just SELECT these tables."""
        return self.read(conn) if self.exist(conn) else {}

    def read(self, conn: Connection) -> dict[int, Applied]:
        raise NotImplementedError

    def record_applied(self, conn: Connection, m: Migration, ms: int | None) -> None:
        """Insert the history row, inside the migration's transaction; never an upsert,
        so a second applier that slipped past the lock fails on the key and rolls back
        (SPEC §10.1). `ms` None: the server measures the time since the transaction
        began."""
        raise NotImplementedError

    def complete(self, conn: Connection, m: Migration, ms: int) -> None:
        """Turn the `failed` marker of a no-transaction migration (`mark_started`) into
        its applied row, once its statements are done."""
        raise NotImplementedError

    def mark_started(self, conn: Connection, m: Migration) -> None:
        """A no-transaction migration is `failed` until it completes, so a crash part-way
        leaves a row that stops every later run until an operator repairs it."""
        raise NotImplementedError

    def mark_failed(self, conn: Connection, version: int) -> None:
        """A no-transaction rollback is `failed` until it completes, like a forward one."""
        raise NotImplementedError

    def set_checksum(self, conn: Connection, version: int, checksum: str) -> None:
        raise NotImplementedError

    def mark_applied(self, conn: Connection, m: Migration) -> bool:
        """Turn `m`'s `failed` row into an applied one with the file's checksum, after an
        operator finished the migration by hand; False when no `failed` row was there."""
        raise NotImplementedError

    def delete(self, conn: Connection, version: int) -> None:
        conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(self.history),
                     (version,))

    def audit_row(self, conn: Connection, m: Migration | Applied, direction: str,
                  ms: int | None, success: bool, error: str | None = None) -> None:
        conn.execute(self._audit_row, (m.version, m.description, direction, m.checksum, ms,
                                       success, error, self.host))

    def other_history(self, conn: Connection) -> tuple[str, int] | None:
        """When the other format's table holds rows: what it holds, and its newest
        version; else None. Read-only. "" as schema: MIGRATE_SCHEMA."""
        for schema, table in self.other_tables:
            name = sql.Identifier(schema or self.schema, table).as_string(conn)
            row = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL",
                               (name,)).fetchone()
            if not (row and row[0]):
                continue
            found = conn.execute(sql.SQL("SELECT pg_catalog.count(*), pg_catalog.max(version) "
                                         "FROM {}").format(sql.SQL(name))).fetchone()
            if found and found[0]:
                return (f"{name} holds {plural(found[0], 'row')} (newest version {found[1]})",
                        int(found[1]))
        return None

    def retire_other(self, conn: Connection) -> str | None:
        """After `baseline` moved a database to this format: keep the other format's
        history out of every later run's way (see SqlxHistory); the name it now has."""
        return None

    def cli(self, args: str) -> str:
        """`migration-runner ARGS` with the flags of this history's format and schema, so a
        fix the runner suggests works when pasted into a shell without the variables."""
        flags = "" if self.format == "native" else f" --history-format {self.format}"
        if self.schema != "public":
            flags += f" --schema {shlex.quote(self.schema)}"
        return f"migration-runner {args}{flags}"

    def read_checked(self, conn: Connection, command: str) -> dict[int, Applied]:
        """The history (`read_if_exists`), refused with a ValidationError when it is empty
        beside the other format's rows: every command reads it this way, so none of them
        reports "all pending" or "nothing to roll back" on a database the other one
        migrated."""
        applied = self.read_if_exists(conn)
        self.refuse_beside_other(conn, applied, command)
        return applied

    def refuse_beside_other(self, conn: Connection, applied: dict[int, Applied],
                            command: str) -> None:
        """SPEC §8: an empty history of ours beside the other format's rows is a database
        the other tool migrated; applying or baselining here would repeat its work."""
        if applied or (command == "baseline" and self.baseline_over_other):
            return
        other = self.other_history(conn)
        if other:
            what, newest = other
            fix = self.other_fix.format(baseline=self.cli(f"baseline --to {newest}"))
            raise ValidationError([
                f"{command} refused: {self.history.as_string(conn)} is empty or missing, but "
                f"{what}: the database was migrated with the other history format, which "
                f"MIGRATE_HISTORY_FORMAT={self.format} does not read; {fix}. "
                "Nothing was changed"])


class NativeHistory(History):
    """`migration_history` (SPEC §3): SHA-256 of the normalised text, the runner's own
    lock key, the file rules of SPEC §2."""

    format = "native"
    table = "migration_history"
    other_fix = "set MIGRATE_HISTORY_FORMAT=sqlx to use that history"

    _DDL = """
CREATE TABLE {history} (
    version           bigint      PRIMARY KEY,
    description       text        NOT NULL,
    checksum          text        NOT NULL,
    applied_at        timestamptz NOT NULL DEFAULT now(),
    applied_by        text        NOT NULL DEFAULT current_user,
    execution_time_ms bigint      NOT NULL DEFAULT 0,
    status            text        NOT NULL CHECK (status IN ('applied', 'failed'))
)"""

    def __init__(self, schema: str, sqlx_schema: str | None = None) -> None:
        """`sqlx_schema`: where the app's `_sqlx_migrations` is (runner.histories.choice),
        the only place the guard of SPEC §8 looks; None: not looked for."""
        super().__init__(schema)
        if sqlx_schema is not None:
            self.other_tables = ((sqlx_schema, "_sqlx_migrations"),)
        # Composed once: it goes out with every migration.
        self._record_applied = sql.SQL(
            "INSERT INTO {} (version, description, checksum, execution_time_ms, status) "
            "VALUES (%s, %s, %s, COALESCE(%s, " + ELAPSED_MS + "), 'applied')"
        ).format(self.history).as_string(None)

    def read_folder(self, folder: Path) -> files.Folder:
        return files.read_folder(folder)

    def lex(self, migrations: list[Migration]) -> tuple[list[statements.Plan], list[str]]:
        return statements.lex(migrations)

    def lex_rollbacks(self, migrations: list[Migration]
                      ) -> tuple[list[statements.Plan], list[str]]:
        return statements.lex_rollbacks(migrations)

    def lock_key(self, database: str) -> int:
        return lock_key(database, self.schema)

    def _history_ddl(self) -> sql.Composed:
        return sql.SQL(self._DDL).format(history=self.history)

    def read(self, conn: Connection) -> dict[int, Applied]:
        rows = conn.execute(sql.SQL(
            "SELECT version, description, checksum, applied_at, execution_time_ms, status "
            "FROM {} ORDER BY version").format(self.history)).fetchall()
        return {r[0]: Applied(*r) for r in rows}

    def record_applied(self, conn: Connection, m: Migration, ms: int | None) -> None:
        conn.execute(self._record_applied, (m.version, m.description, m.checksum, ms))

    def complete(self, conn: Connection, m: Migration, ms: int) -> None:
        conn.execute(sql.SQL(
            "UPDATE {} SET status = 'applied', checksum = %s, execution_time_ms = %s, "
            "applied_at = pg_catalog.now(), applied_by = current_user "
            "WHERE version = %s AND status = 'failed'").format(self.history),
            (m.checksum, ms, m.version))

    def mark_started(self, conn: Connection, m: Migration) -> None:
        conn.execute(sql.SQL(
            "INSERT INTO {} (version, description, checksum, status) "
            "VALUES (%s, %s, %s, 'failed')").format(self.history),
            (m.version, m.description, m.checksum))

    def mark_failed(self, conn: Connection, version: int) -> None:
        conn.execute(sql.SQL("UPDATE {} SET status = 'failed' WHERE version = %s").format(
            self.history), (version,))

    def set_checksum(self, conn: Connection, version: int, checksum: str) -> None:
        conn.execute(sql.SQL("UPDATE {} SET checksum = %s WHERE version = %s").format(
            self.history), (checksum, version))

    def mark_applied(self, conn: Connection, m: Migration) -> bool:
        cur = conn.execute(sql.SQL(
            "UPDATE {} SET status = 'applied', checksum = %s, applied_at = pg_catalog.now(), "
            "applied_by = current_user WHERE version = %s AND status = 'failed'").format(
            self.history), (m.checksum, m.version))
        return cur.rowcount == 1


@dataclass
class Comparison:
    """History against the files, as SPEC §3 classifies it."""

    pending: list[Migration]
    changed: list[tuple[Migration, Applied]]
    missing: list[Applied]
    failed: list[Applied]
    out_of_order: list[Migration]
    applied_versions: list[int]
    eol_only: list[tuple[Migration, Applied]]  # stored checksum differs by line endings only
    local: dict[int, Migration] = field(default_factory=dict)  # the files, by version

    def problems(self, strict: bool, allow_out_of_order: bool,
                 cli: Callable[[str], str] = "migration-runner {}".format) -> list[str]:
        """Every reason `migrate` refuses (SPEC §3); `cli` writes the fix's command line
        (`History.cli`)."""
        found = [f"{named(a.version, a.description, self.local.get(a.version))}: failed "
                 "part-way (no-transaction migration), or its run was killed (a Job's "
                 "activeDeadlineSeconds, SIGKILL); fix the database by hand (a CREATE INDEX "
                 "CONCURRENTLY stopped part-way leaves an INVALID index that IF NOT EXISTS "
                 "would skip: DROP INDEX CONCURRENTLY it), then run "
                 f"`{cli('repair --failed')}` to run the file again, or "
                 f"`{cli(f'repair --mark-applied {a.version}')}` if you finished it by hand"
                 for a in self.failed]
        found += [f"{m.file}: changed after it was applied (applied checksum {a.checksum}, "
                  f"file checksum {m.checksum}); restore the file, or run "
                  f"`{cli('repair --accept-checksums')}` if the edit is intended"
                  for m, a in self.changed]
        if self.missing and (self.pending or strict):
            one = len(self.missing) == 1
            versions = ("version " if one else "versions ") + ", ".join(
                str(a.version) for a in self.missing)
            if self.pending:
                found.append(f"divergent history: {versions} {'is' if one else 'are'} applied "
                             f"but {'has' if one else 'have'} no file here, while files are "
                             "pending; deploy an image with the same migrations as the "
                             "database")
            else:
                found.append(f"database is ahead of these files: {versions} "
                             f"{'has' if one else 'have'} no file (--strict)")
        if self.out_of_order and not allow_out_of_order:
            newest = max(self.applied_versions)
            found += [f"{m.file}: pending but older than applied version {newest}; renumber it, "
                      "or set MIGRATE_ALLOW_OUT_OF_ORDER=true" for m in self.out_of_order]
        return found


def compare(migrations: list[Migration], applied: dict[int, Applied],
            eol_only: Callable[[Migration, str], bool] = lambda m, c: False) -> Comparison:
    """`eol_only`: the format's History.eol_only, telling a line-ending difference from
    an edit."""
    by_version = {m.version: m for m in migrations}
    newest = max((v for v, a in applied.items()), default=None)
    pending = [m for m in migrations if m.version not in applied]
    differing = [(by_version[v], a) for v, a in applied.items()
                 if v in by_version and a.status == "applied"
                 and by_version[v].checksum != a.checksum]
    same = [(m, a) for m, a in differing if eol_only(m, a.checksum)]
    return Comparison(
        pending=pending,
        changed=[pair for pair in differing if pair not in same],
        missing=[a for v, a in applied.items() if v not in by_version],
        failed=[a for a in applied.values() if a.status == "failed"],
        out_of_order=[m for m in pending if newest is not None and m.version < newest],
        applied_versions=sorted(applied),
        eol_only=same,
        local=by_version,
    )


def as_fields(m: Migration) -> dict[str, Any]:
    """The fields every migration event carries (SPEC §6)."""
    return {"version": m.version, "name": m.name, "file": m.file}
