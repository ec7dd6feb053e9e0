"""The commands in fleet mode (SPEC §11): `migrate` over one shard, `status` over the
fleet, and `rollback` / `baseline` / `repair` over an explicit list."""

from __future__ import annotations

import time
from typing import Any

import structlog

from runner.commands import history_for
from runner.errors import FleetError, Interrupted
from runner.fleet import report, targets
from runner.fleet.run import Fleet
from runner.output import log
from runner.settings import Settings


def enabled(settings: Settings) -> bool:
    """Fleet mode: a target source is set (two: ConfigError)."""
    return targets.source(settings) is not None


def migrate(settings: Settings, to: int | None = None, as_json: bool = False) -> int:
    """Exit 0, or a FleetError with the code of SPEC §11 and the termination line; a
    ValidationError (5) for bad files, before any target; Interrupted after the summary."""
    logger = log.get()
    if not settings.run_migrations:
        logger.info("migrations_skipped", reason="RUN_MIGRATIONS is false")
        return 0
    started = time.monotonic()
    history = history_for(settings)
    # Read and checked once for every target (SPEC §11): a bad file stops the run here.
    migrations = history.load(settings.migrations_path)
    history.plan(migrations)
    selection = targets.select(settings)
    structlog.contextvars.bind_contextvars(shard=selection.index)
    logger.info("fleet_started", targets_total=selection.total,
                targets_selected=len(selection.targets), index=selection.index,
                count=selection.count, concurrency=settings.concurrency,
                on_error=settings.on_error)
    fleet = Fleet(settings, selection, migrations, to)
    interrupted: Interrupted | None = None
    try:
        outcomes = fleet.run()
    except Interrupted as exc:
        interrupted, outcomes = exc, fleet.outcomes
    code = interrupted.exit_code if interrupted else report.exit_code(outcomes)
    line = report.publish(settings, selection, outcomes, code, as_json,
                          round((time.monotonic() - started) * 1000), interrupted is not None)
    if interrupted:
        raise interrupted
    if code:
        raise FleetError(line, code, **_first_failure(outcomes))
    return 0


def _first_failure(outcomes: list[Any]) -> dict[str, Any]:
    failed = [o for o in report.ordered(outcomes) if o.status == "failed"]
    return {"failed": [o.target.name for o in failed]}
