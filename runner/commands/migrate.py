"""`migrate`: apply pending files, in order, under the advisory lock (SPEC §3)."""

from __future__ import annotations

import time

from runner import files, log, statements
from runner.apply import Applier
from runner.commands import check_same_session, locked, read_only, read_state
from runner.database import backend_pid
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
    with locked(settings) as conn:
        pid = backend_pid(conn)
        tables.ensure(conn)
        state = read_state(tables.read(conn), migrations, settings, to)
        pending = state.comparison.pending
        plans = statements.plan(pending)
        check_same_session(conn, pid)
        logger.info("migrations_pending", count=len(plans),
                    versions=[p.migration.version for p in plans])
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
