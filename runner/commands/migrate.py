"""`migrate`: apply pending files, in order, under the advisory lock (SPEC §3)."""

from __future__ import annotations

import time

from runner.commands import (
    history_for,
    locked,
    read_only,
    read_state,
    refuse_running_elsewhere,
    settle,
    settled_files,
)
from runner.errors import MigrationError
from runner.folder import files, statements
from runner.histories.history import History, plural
from runner.output import log
from runner.session import silence
from runner.session.database import Connection
from runner.settings import Settings


def migrate(settings: Settings, to: int | None = None, dry_run: bool = False,
            migrations: list[files.Migration] | None = None,
            conn: Connection | None = None, settled: History | None = None) -> int:
    """`migrations`: the folder as `history_for(settings).load` reads it, when the caller
    read it already (fleet mode reads it once per process, not once per database); `conn`:
    the lock connection, already open (fleet mode's pre-check), and `settled` the history
    `settle` chose on it."""
    logger = log.get()
    if not settings.run_migrations:
        logger.info("migrations_skipped", reason="RUN_MIGRATIONS is false")
        return 0
    started = time.monotonic()
    folder_history = history_for(settings)
    if migrations is None:
        migrations = folder_history.load(settings.migrations_path)
    # The applying stage is imported only where a file is planned: a pod start with
    # nothing pending, the common case, does not pay for it (~10 ms).
    if dry_run:
        from runner.applying import partitioned

        with read_only(settings, "dry-run") as conn:
            history = settle(settings, conn)
            migrations = settled_files(history, folder_history, migrations, settings)
            silence.doing("reading the history")
            applied = history.read_checked(conn, "migrate")
            state = read_state(history, applied, migrations, settings, to)
            planned = history.plan(state.comparison.pending)
            silence.doing("checking partitioned tables in the catalog")
            partitioned.refuse(conn, planned, history.spelling)
        print_plan(planned)
        return 0
    with locked(settings, conn, settled) as session:
        history = session.history
        migrations = settled_files(history, folder_history, migrations, settings)
        # The history is read on the lock connection: with nothing pending, as on every pod
        # start but the first after a release, the run ends without a work connection.
        silence.doing("reading the history")
        applied = history.read_checked(session.lock.conn, "migrate")
        refuse_running_elsewhere(session, applied)
        pending = read_state(history, applied, migrations, settings, to).comparison.pending
        plans: list[statements.Plan] = []
        if pending or not applied:  # an empty history: the tables may be missing too
            from concurrent.futures import ThreadPoolExecutor

            from runner.applying import partitioned
            from runner.applying.apply import Applier

            # Lexing, all CPU, runs while the main thread waits on the server: for the
            # work connection and for the tables. Its ValidationError comes out here.
            with ThreadPoolExecutor(1, thread_name_prefix="lex") as pool:
                lexed = pool.submit(history.plan, pending)
                work = session.work  # opening it refuses a pooler before anything is made
                silence.doing("creating the bookkeeping tables")
                history.ensure(work)
                plans = lexed.result()
            silence.doing("checking partitioned tables in the catalog")
            # The catalog's word, before anything runs.
            partitioned.refuse(work, plans, history.spelling)
            session.check_same_session()
        logger.info("migrations_pending", count=len(plans),
                    versions=[p.migration.version for p in plans])
        if plans:
            with session.watching() as watch:
                applier = Applier(session.work, history, settings, session.lock, watch)
                for plan in plans:
                    try:
                        applier.apply(plan)
                    except MigrationError as exc:
                        if not applied and plan is plans[0]:
                            raise built_by_hand(exc, history) from None
                        raise
        logger.info("migrations_complete", applied=len(plans), pending_before=len(pending),
                    total=len(migrations), duration_ms=round((time.monotonic() - started) * 1000))
    return 0


# The duplicate_* SQLSTATEs of class 42 that name an object a migration creates, from
# PostgreSQL's src/backend/utils/errcodes.txt. Left out: 42P03 duplicate_cursor, 42P05
# duplicate_prepared_statement and 42712 duplicate_alias, which say nothing about what the
# database already holds.
ALREADY_EXISTS = {"42701": "duplicate_column", "42P04": "duplicate_database",
                  "42723": "duplicate_function", "42P06": "duplicate_schema",
                  "42P07": "duplicate_table", "42710": "duplicate_object"}


def built_by_hand(exc: MigrationError, history: History) -> MigrationError:
    """The first file of an empty history failing on an object that already exists: the
    database was most likely built before the runner (psql, an init script), and
    `baseline` is how the runner adopts it. Other failures are returned unchanged."""
    if exc.fields.get("sqlstate") not in ALREADY_EXISTS:
        return exc
    return MigrationError(
        f"{exc.message}; the history is empty but the database already has this object, "
        "so it was probably built without the runner (psql, an init script): record the "
        "migrations it already has without running them, with "
        f"`{history.cli('baseline --to V')}` where V is the last version the database "
        "already has, then run migrate again", **exc.fields, fix="baseline")


def print_plan(plans: list[statements.Plan], empty: str = "nothing to apply") -> None:
    """The files to run, in order, each transactional or not, with its statement count
    (`--dry-run` of migrate and rollback)."""
    if not plans:
        print(empty)
        return
    width = max(len(p.migration.file) for p in plans)
    for p in plans:
        mode = "transaction" if p.transactional else "no-transaction"
        print(f"{p.migration.file:<{width}}  {mode:<14}  "
              f"{plural(len(p.statements), 'statement')}")
