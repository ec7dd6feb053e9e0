"""The `migrate` command and the pieces other commands share: read files, connect, lock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from runner import files, log, statements
from runner.apply import Applier
from runner.database import Connection, backend_pid, connect, server_version
from runner.errors import ConfigError, ValidationError
from runner.history import Comparison, Tables, compare
from runner.lock import AdvisoryLock
from runner.settings import Settings


def open_connection(settings: Settings, purpose: str) -> Connection:
    conn = connect(settings, purpose)
    info = conn.info
    log.get().info("db_connected", server_version=server_version(conn), purpose=purpose,
                   target=f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}")
    return conn


@contextmanager
def locked(settings: Settings) -> Iterator[Connection]:
    """A work connection, used while a dedicated connection holds the advisory lock.

    The work connection opens only once the lock is held: fifty waiting runners then cost
    fifty connections, not a hundred.
    """
    lock_conn = open_connection(settings, "lock")
    lock = AdvisoryLock(lock_conn, settings.schema)
    try:
        lock.acquire(settings.lock_timeout)
        with open_connection(settings, "work") as work:
            yield work
    finally:
        lock.release()
        lock_conn.close()


@dataclass
class State:
    migrations: list[files.Migration]
    comparison: Comparison


def read_state(conn: Connection, tables: Tables, migrations: list[files.Migration],
               settings: Settings, to: int | None = None) -> State:
    """History against the files; a ValidationError for anything SPEC §3 refuses."""
    applied = tables.read(conn) if tables.exist(conn) else {}
    comparison = compare(migrations, applied)
    problems = comparison.problems(settings.strict, settings.allow_out_of_order)
    if problems:
        raise ValidationError(problems)
    if comparison.missing:
        log.get().warning("database_ahead", versions=[a.version for a in comparison.missing],
                          message="applied versions have no file here (a newer image ran); "
                                  "nothing to do for them")
    if to is not None:
        comparison.pending = [m for m in comparison.pending if m.version <= to]
    return State(migrations, comparison)


def migrate(settings: Settings, to: int | None = None, dry_run: bool = False) -> int:
    logger = log.get()
    if not settings.run_migrations:
        logger.info("migrations_skipped", reason="RUN_MIGRATIONS is false")
        return 0
    started = time.monotonic()
    migrations = files.load(settings.migrations_path)
    tables = Tables(settings.schema)
    if dry_run:
        with open_connection(settings, "dry-run") as conn:
            state = read_state(conn, tables, migrations, settings, to)
        print_plan(statements.plan(state.comparison.pending))
        return 0
    with locked(settings) as conn:
        pid = backend_pid(conn)
        tables.ensure(conn)
        state = read_state(conn, tables, migrations, settings, to)
        pending = state.comparison.pending
        plans = statements.plan(pending)
        if backend_pid(conn) != pid:
            raise ConfigError("the database session changed between transactions: a "
                              "transaction-pooling proxy is in the way; connect directly")
        applier = Applier(conn, tables, settings)
        for plan in plans:
            applier.apply(plan)
        logger.info("migrations_complete", applied=len(plans), pending_before=len(pending),
                    total=len(migrations), duration_ms=round((time.monotonic() - started) * 1000))
    return 0


def print_plan(plans: list[statements.Plan]) -> None:
    if not plans:
        print("nothing to apply")
        return
    width = max(len(p.migration.file) for p in plans)
    for p in plans:
        mode = "transaction" if p.transactional else "no-transaction"
        print(f"{p.migration.file:<{width}}  {mode:<14}  {len(p.statements)} statements")


def validate_offline(settings: Settings) -> int:
    """Every file check, no database: names, encoding, and the lexer on every file."""
    folder = files.read_folder(settings.migrations_path)
    problems = list(folder.problems)
    try:
        statements.plan(folder.migrations)
    except ValidationError as exc:
        problems += exc.problems
    if problems:
        raise ValidationError(problems)
    log.get().info("validation_passed", files=len(folder.migrations))
    return 0
