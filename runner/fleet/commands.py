"""The commands in fleet mode (SPEC §11): `migrate` over one shard, `status` over the
fleet, and `rollback` / `baseline` / `repair` over an explicit list."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from runner.commands import history_for
from runner.errors import ConfigError, FleetError, Interrupted, RunnerError
from runner.fleet import report, targets
from runner.fleet.run import Fleet, Outcome, error_of
from runner.output import log
from runner.settings import Settings


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
        failed = [o.target.name for o in report.ordered(outcomes) if o.status == "failed"]
        raise FleetError(line, code, failed=failed)
    return 0


def each(settings: Settings, command: str, run: Callable[[Settings], int],
         query: bool = False) -> int:
    """`command` on every target, one at a time, in key order, each one's output on stdout
    under a `[site_017]` line; exit as `migrate` in fleet mode. Without `query`
    (`rollback`, `baseline`, `repair`: what an operator runs by hand on a list they
    wrote), MIGRATE_TARGETS_QUERY is refused."""
    if settings.targets_query and not query:
        raise ConfigError(f"{command} takes MIGRATE_TARGETS or MIGRATE_TARGETS_FILE, not "
                          "MIGRATE_TARGETS_QUERY: list the databases it may change",
                          variable="MIGRATE_TARGETS_QUERY")
    logger = log.get()
    started = time.monotonic()
    selection = targets.select(settings)
    structlog.contextvars.bind_contextvars(shard=selection.index)
    outcomes = [Outcome(t) for t in selection.targets]
    for o in outcomes:
        structlog.contextvars.bind_contextvars(target=o.target.name)
        logger.info("target_started", key=o.target.key, command=command)
        print(f"[{o.target.name}]", flush=True)
        began = time.monotonic()
        o.tries = 1
        try:
            o.exit_code = run(o.target.settings(settings))
            o.status = "done"
        except RunnerError as exc:
            o.status, o.exit_code = "failed", exc.exit_code
            o.error = error_of(exc)
        o.duration_ms = round((time.monotonic() - began) * 1000)
        if o.status == "failed":
            logger.error("target_failed", exit_code=o.exit_code, **(o.error or {}))
        else:
            logger.info("target_done", status=o.status, exit_code=o.exit_code,
                        duration_ms=o.duration_ms)
    structlog.contextvars.unbind_contextvars("target")
    code = report.exit_code(outcomes)
    logger.info("fleet_complete", **report.counts(outcomes), exit_code=code,
                duration_ms=round((time.monotonic() - started) * 1000))
    if code:
        raise FleetError(report.termination(selection, outcomes, code), code)
    return 0

