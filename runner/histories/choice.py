"""Which history format a run uses, and where the app's `_sqlx_migrations` is (SPEC §8).

MIGRATE_HISTORY_FORMAT=auto decides once per run, before anything is written: a database
that holds one of the two histories uses it; an empty one uses sqlx when the folder has
sqlx's `.up.sql` / `.down.sql` layout and native otherwise. A database holding both, or
a history the folder's layout contradicts, is refused with the explicit setting named:
forgetting the setting must never start a second history beside the app's.

sqlx names its table unqualified (sqlx-core src/migrate/migrator.rs: `_sqlx_migrations`,
sqlx-postgres src/migrate.rs), so the app's connection finds it through its search_path.
Without an explicit MIGRATE_SCHEMA the runner resolves the name through its own session's
search_path, which the role and database settings shape the same way for both.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

from runner.errors import ConfigError, ValidationError
from runner.folder import files
from runner.session.database import Connection

SQLX_TABLE = "_sqlx_migrations"
NATIVE_TABLE = "migration_history"

# The first schema of the effective search_path holding sqlx's table (current_schemas
# lists the path's existing schemas, `"$user"` expanded, in order), and current_schema():
# where an unqualified CREATE TABLE puts it when none does.
_FIND_SQLX = """
SELECT (SELECT p.name FROM pg_catalog.unnest(pg_catalog.current_schemas(false))
                           WITH ORDINALITY AS p(name, i)
        JOIN pg_catalog.pg_namespace n ON n.nspname = p.name
        JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = %s
        ORDER BY p.i LIMIT 1),
       pg_catalog.current_schema(), pg_catalog.current_setting('search_path')
"""


def folder_layout(folder: Path) -> str | None:
    """`sqlx` for a folder of `.up.sql` / `.down.sql` pairs, `native` when it holds a
    `_rollback.sql` file (sqlx would apply that as a second migration), None for plain
    `.sql` files only, which both formats read. From the names alone; a ConfigError
    when the folder cannot be read."""
    names = files.sql_names(folder)
    if any(n.endswith("_rollback.sql") for n in names):
        return "native"
    if any(n.endswith((".up.sql", ".down.sql")) for n in names):
        return "sqlx"
    return None


@dataclass(frozen=True)
class SqlxPlace:
    """Where `_sqlx_migrations` is for this run: `schema` (None: the search_path names no
    existing schema, so the app could not create it either) and how it was found."""

    schema: str | None
    how: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def shadowed(self) -> bool:
        """Found in a later schema of the path than current_schema(): sqlx's unqualified
        `CREATE TABLE IF NOT EXISTS` looks in current_schema() only, so the app would
        start a second, empty history there (PostgreSQL's creation namespace rule)."""
        current = self.fields.get("current_schema")
        return current is not None and self.schema != current


def sqlx_place(conn: Connection, schema: str, explicit: bool) -> SqlxPlace:
    """The schema of the app's `_sqlx_migrations`: MIGRATE_SCHEMA when set explicitly,
    else the first schema of the session's search_path holding the table, else
    current_schema(). The search_path is the session's effective one: the role's and the
    database's settings are applied to the runner's session as to the app's."""
    if explicit:
        return SqlxPlace(schema, "MIGRATE_SCHEMA")
    row = conn.execute(_FIND_SQLX, (SQLX_TABLE,)).fetchone()
    assert row is not None
    found, current, path = row
    fields = {"search_path": path, "current_schema": current}
    if found is not None:
        return SqlxPlace(found, "search_path holds it", fields)
    return SqlxPlace(current, "current_schema(): not in the search_path yet", fields)


_TABLE = """
SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE')
       AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


@dataclass(frozen=True)
class Held:
    """A history table with rows, or one this role may not read (so rows unknown)."""

    name: str  # quoted, schema-qualified
    rows: int | None
    newest: int | None

    def __str__(self) -> str:
        if self.rows is None:
            return f"{self.name} exists (this role may not read it)"
        return (f"{self.name} holds {self.rows} row{'s' if self.rows != 1 else ''} "
                f"(newest version {self.newest})")


def _held(conn: Connection, schema: str | None, table: str) -> Held | None:
    """The table when it exists and holds rows (an empty one decides nothing). From the
    catalogs first: a role without SELECT on it, or USAGE on its schema, still learns
    that it is there, and the command that reads it then says which grant is missing."""
    if schema is None:
        return None
    row = conn.execute(_TABLE, (schema, table)).fetchone()
    if row is None:
        return None
    name = sql.Identifier(schema, table).as_string(conn)
    if not row[0]:
        return Held(name, None, None)
    found = conn.execute(sql.SQL("SELECT pg_catalog.count(*), pg_catalog.max(version) "
                                 "FROM {}").format(sql.SQL(name))).fetchone()
    if not (found and found[0]):
        return None
    return Held(name, int(found[0]), int(found[1]))


@dataclass(frozen=True)
class Choice:
    format: str  # native or sqlx
    reason: str
    sqlx: SqlxPlace


def choose(conn: Connection, setting: str, schema: str, explicit_schema: bool,
           folder: Path) -> Choice:
    """The format of this run. `setting`: MIGRATE_HISTORY_FORMAT; `schema`: MIGRATE_SCHEMA
    (the native history's schema). Read-only. A ValidationError (exit 5) when `auto`
    finds both histories or one the folder's layout contradicts; a ConfigError (exit 2)
    when sqlx's table has no schema to be in."""
    place = sqlx_place(conn, schema, explicit_schema)
    if setting != "auto":
        choice = Choice(setting, f"MIGRATE_HISTORY_FORMAT={setting}", place)
    else:
        choice = _auto(conn, schema, folder, place)
    if choice.format == "sqlx" and place.schema is None:
        raise ConfigError(
            f"the session's search_path ({place.fields.get('search_path')}) names no "
            f"existing schema, so there is nowhere to find or create {SQLX_TABLE} (the "
            "app's sqlx fails the same way): create the schema, fix the role's search_path, "
            "or set MIGRATE_SCHEMA", variable="MIGRATE_SCHEMA")
    return choice


def _auto(conn: Connection, schema: str, folder: Path, place: SqlxPlace) -> Choice:
    layout = folder_layout(folder)
    native = _held(conn, schema, NATIVE_TABLE)
    app = _held(conn, place.schema, SQLX_TABLE)
    decide = ("set MIGRATE_HISTORY_FORMAT (--history-format) to native or sqlx to say which "
              "one this folder's history is")
    if native and app:
        raise ValidationError([
            f"history format refused: the database holds both histories: {native}, "
            f"the runner's native one, and {app}, the app's sqlx one, so "
            f"MIGRATE_HISTORY_FORMAT=auto cannot tell which one is this folder's; {decide}. "
            "Nothing was changed"])
    if app:
        if layout == "native":
            raise ValidationError([
                f"history format refused: {app}, the app's sqlx history, but the "
                "folder has `_rollback.sql` files, which sqlx applies as second migrations "
                "of their versions: name each pair NNN_name.up.sql / NNN_name.down.sql, or "
                f"{decide}. Nothing was changed"])
        return Choice("sqlx", str(app), place)
    if native:
        if layout == "sqlx":
            flags = "" if schema == "public" else f" --schema {shlex.quote(schema)}"
            raise ValidationError([
                f"history format refused: {native}, the runner's native history, but "
                "the folder has sqlx's .up.sql / .down.sql layout: set "
                "MIGRATE_HISTORY_FORMAT=native to keep that history, or move the database "
                f"to the app's with `migration-runner baseline --to {native.newest or 'V'} "
                f"--history-format sqlx{flags}`. Nothing was changed"])
        return Choice("native", str(native), place)
    if layout == "sqlx":
        return Choice("sqlx", "no history yet; the folder has sqlx's .up.sql / .down.sql "
                      "layout", place)
    return Choice("native", "no history yet; the folder has "
                  + ("`_rollback.sql` files" if layout else "no .up.sql / .down.sql files"),
                  place)


def offline(setting: str, folder: Path) -> Choice:
    """The format from the folder alone (validate --offline, new): sqlx for the
    `.up.sql` / `.down.sql` layout, else native."""
    if setting != "auto":
        return Choice(setting, f"MIGRATE_HISTORY_FORMAT={setting}", SqlxPlace(None, ""))
    layout = folder_layout(folder)
    reason = ("the folder has sqlx's .up.sql / .down.sql layout" if layout == "sqlx"
              else "the folder has no .up.sql / .down.sql files")
    return Choice("sqlx" if layout == "sqlx" else "native", reason + " (no database read)",
                  SqlxPlace(None, ""))
