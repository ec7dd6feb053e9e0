"""`migrate`: apply pending files, in order, under the advisory lock (SPEC §3)."""

from __future__ import annotations

import time

from runner import files, log, statements
from runner.apply import Applier
from runner.commands import locked, read_only, read_state
from runner.history import Tables
from runner.settings import Settings


def migrate(settings: Settings, to: int | None = None, dry_run: bool = False) -> int:
    logger = log.get()
    if not settings.run_migrations:
        logger.info("migrations_skipped", reason="RUN_MIGRATIONS is false")
        return 0
    started = time.monotonic()
    migrations = files.load(settings.migrations_path)
    tables = Tables(settings.schema)
    if dry_run:
        with read_only(settings, "dry-run") as conn:
            state = read_state(tables.read_if_exists(conn), migrations, settings, to)
        print_plan(statements.plan(state.comparison.pending))
        return 0
    with locked(settings) as session:
        # The history is read on the lock connection: with nothing pending, as on every pod
        # start but the first after a release, the run ends without a work connection.
        applied = tables.read_if_exists(session.lock.conn)
        pending = read_state(applied, migrations, settings, to).comparison.pending
        plans: list[statements.Plan] = []
        if pending or not applied:  # an empty history: the tables may be missing too
            work = session.work  # opening it refuses a pooler before anything is created
            tables.ensure(work)
            plans = statements.plan(pending)
            session.check_same_session()
        logger.info("migrations_pending", count=len(plans),
                    versions=[p.migration.version for p in plans])
        if plans:
            with session.watching() as watch:
                applier = Applier(session.work, tables, settings, watch)
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
