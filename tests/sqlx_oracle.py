"""The app in the tests: a re-enactment, in Python, of what `sqlx::migrate!().run()` and
`Migrator::undo` do on PostgreSQL, written from sqlx's source (launchbadge/sqlx at
9d6bf662: sqlx-core src/migrate/{source,migration,migration_type,migrator}.rs and
sqlx-postgres src/migrate.rs and src/connection/establish.rs), with sqlx.toml left at its
defaults.

It shares no code with the runner, on purpose: a test that compares the two must be able
to catch the runner reading sqlx wrong. Pinned by vectors checked by hand (test_sqlx.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

Conn = psycopg.Connection[tuple[Any, ...]]
TABLE = "_sqlx_migrations"  # Migrator::DEFAULT.table_name, unqualified: found via search_path


class MigrateError(Exception):
    """sqlx's MigrateError variants that the tests meet."""


class Dirty(MigrateError):
    pass


class VersionMissing(MigrateError):
    pass


class VersionMismatch(MigrateError):
    pass


class ExecuteMigration(MigrateError):
    pass


class ResolveError(MigrateError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    kind: str  # simple, up, down (MigrationType)
    sql: str
    checksum: bytes
    no_tx: bool


def _crc32_iso_hdlc(data: bytes) -> int:
    """CRC-32/ISO-HDLC bit by bit (the `crc` crate's CRC_32_ISO_HDLC): reflected polynomial
    0xEDB88320, initial and final XOR 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def lock_id(database: str) -> int:
    """generate_lock_id: 0x3d32ad9e * crc32(name) as i64."""
    return 0x3D32AD9E * _crc32_iso_hdlc(database.encode())


def _parse_i64(text: str) -> int:
    """Rust's i64::from_str: optional sign, ASCII digits, in range."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(text)
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(text)
    return value


def resolve(folder: Path) -> list[Migration]:
    """resolve_blocking_with_config with no ignored chars."""
    found: list[Migration] = []
    for entry in os.scandir(folder):  # read_dir order: unsorted
        if not os.path.isfile(entry.path):  # fs::metadata follows symlinks
            continue
        parts = entry.name.split("_", 1)
        if len(parts) != 2 or not parts[1].endswith(".sql"):
            continue
        try:
            version = _parse_i64(parts[0])
        except ValueError:
            raise ResolveError(f"error parsing migration filename {entry.name!r}") from None
        rest = parts[1]
        kind, suffix = (("up", ".up.sql") if rest.endswith(".up.sql")
                        else ("down", ".down.sql") if rest.endswith(".down.sql")
                        else ("simple", ".sql"))
        while rest.endswith(suffix):  # trim_end_matches
            rest = rest[: -len(suffix)]
        sql = Path(entry.path).read_bytes().decode("utf-8")  # read_to_string: strict
        found.append(Migration(version, rest.replace("_", " "), kind, sql,
                               hashlib.sha384(sql.encode()).digest(),
                               sql.startswith("-- no-transaction")))
    found.sort(key=lambda m: m.version)  # stable, like sort_by_key
    return found


# PgConnection::establish (sqlx-postgres src/connection/establish.rs) sends these in its
# startup message, extra_float_digits from PgConnectOptions' default (options/mod.rs);
# libpq sends them as `-c` options, which the server applies the same way (above the
# role's and database's settings).
STARTUP = {"DateStyle": "ISO,MDY", "client_encoding": "UTF8", "TimeZone": "UTC",
           "extra_float_digits": "2"}


def connect(url: str) -> Conn:
    options = " ".join(f"-c {name}={value}" for name, value in STARTUP.items())
    return psycopg.connect(url, autocommit=True, options=options)


def lock(conn: Conn) -> int:
    """Migrate::lock: a blocking pg_advisory_lock on the database's key."""
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    key = lock_id(str(row[0]))
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    return key


def unlock(conn: Conn) -> None:
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id(str(row[0])),))


def _prepare(conn: Conn,
             migrations: list[Migration]) -> dict[int, bytes]:
    conn.execute(f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
);""")
    row = conn.execute(f"SELECT version FROM {TABLE} WHERE success = false "
                       "ORDER BY version LIMIT 1").fetchone()
    if row is not None:
        raise Dirty(row[0])
    applied = {int(v): bytes(c) for v, c in
               conn.execute(f"SELECT version, checksum FROM {TABLE} ORDER BY version")}
    known = {m.version for m in migrations}
    for version in applied:  # validate_applied_migrations
        if version not in known:
            raise VersionMissing(version)
    return applied


def _execute(conn: Conn, m: Migration, sql: str,
             params: tuple[object, ...]) -> None:
    try:
        conn.execute(m.sql)  # no parameters: the simple protocol, one query string
    except psycopg.Error as exc:
        raise ExecuteMigration(m.version, exc) from exc
    try:
        conn.execute(sql, params)
    except psycopg.Error as exc:  # MigrateError::Execute
        raise MigrateError(m.version, exc) from exc


def _in_transaction(conn: Conn, m: Migration, sql: str,
                    params: tuple[object, ...]) -> None:
    if m.no_tx:
        _execute(conn, m, sql, params)
        return
    conn.execute("BEGIN")
    try:
        _execute(conn, m, sql, params)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def run(url: str, folder: Path, target: int | None = None) -> list[int]:
    """Migrator::run (run_to with a target): the versions it applied."""
    migrations = resolve(folder)
    done: list[int] = []
    with connect(url) as conn:
        lock(conn)
        applied = _prepare(conn, migrations)
        for m in migrations:
            if target is not None and target < m.version:
                break
            if m.kind == "down":
                continue
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise VersionMismatch(m.version)
                continue
            started = time.monotonic_ns()
            _in_transaction(conn, m, f"INSERT INTO {TABLE} ( version, description, success, "
                            "checksum, execution_time ) VALUES ( %s, %s, TRUE, %s, -1 )",
                            (m.version, m.description, m.checksum))
            conn.execute(f"UPDATE {TABLE} SET execution_time = %s WHERE version = %s",
                         (time.monotonic_ns() - started, m.version))
            done.append(m.version)
        unlock(conn)
    return done


def undo(url: str, folder: Path, target: int) -> list[int]:
    """Migrator::undo: every applied version above `target` with a `.down.sql`, newest
    first, each with its row deleted in the same transaction."""
    migrations = resolve(folder)
    done: list[int] = []
    with connect(url) as conn:
        lock(conn)
        applied = _prepare(conn, migrations)
        for m in reversed(migrations):
            if m.kind == "down" and m.version in applied and m.version > target:
                _in_transaction(conn, m, f"DELETE FROM {TABLE} WHERE version = %s",
                                (m.version,))
                done.append(m.version)
        unlock(conn)
    return done
