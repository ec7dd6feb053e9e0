"""Prometheus metrics for a one-shot process.

Nothing can scrape a container that exits, so the numbers are pushed to a Pushgateway
and/or written in the text format for node-exporter's textfile collector, once, at exit.
They are read off the log events as they are emitted, so the metrics always agree with
the log. A failure to publish is a warning and never changes the exit code.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from runner.output import log

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass
class Recorder:
    """A structlog processor: it watches the events and passes them on unchanged."""

    durations: list[tuple[float, str]] = field(default_factory=list)  # (seconds, outcome)
    pending: int | None = None
    database: str = "unknown"

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        own = TARGET.get()
        if own is not None and own is not self:  # fleet mode: the event's target's numbers
            return own(_logger, _method, event)
        name = event.get("event")
        if name == "migration_applied":
            self.durations.append((event["duration_ms"] / 1000, "success"))
            if self.pending:
                self.pending -= 1
        elif name == "migration_failed":
            self.durations.append((float(event.get("duration_ms") or 0) / 1000, "failure"))
        elif name == "migrations_pending":
            self.pending = int(event["count"])
        elif name == "db_connected":
            # target is postgresql://user@host:port/db: the database name, no credentials
            self.database = str(event.get("target", "")).rsplit("/", 1)[-1] or "unknown"
        return event


RECORDER = Recorder()
# Fleet mode runs each target in a thread of its own, with a Recorder of its own set here.
TARGET: ContextVar[Recorder | None] = ContextVar("metrics_target", default=None)


def publish(pushgateway_url: str | None, job: str, metrics_file: str | None,
            exit_code: int, host: str,
            targets: list[tuple[Recorder, int]] | None = None,
            statuses: dict[str, int] | None = None) -> None:
    """`targets`: fleet mode's (recorder, exit code) per database, in place of the one
    RECORDER; `statuses`: its targets by status (`database_migrations_targets`)."""
    if not pushgateway_url and not metrics_file:
        return
    # Imported here: a run without metrics does not pay for prometheus_client.
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        disable_created_metrics,
        push_to_gateway,
        write_to_textfile,
    )

    disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created`: noise here

    registry = CollectorRegistry()
    total = Counter("database_migrations", "Migrations attempted, by outcome.",
                    ["database", "outcome"], registry=registry)
    failed = Counter("database_migrations_failed", "Migrations that failed.", ["database"],
                     registry=registry)
    duration = Histogram("database_migrations_duration_seconds", "Time to apply a migration.",
                         ["database", "outcome"], buckets=BUCKETS, registry=registry)
    pending = Gauge("database_migrations_pending", "Migrations still pending after the run.",
                    ["database"], registry=registry)
    last_exit = Gauge("database_migrations_last_exit_code", "Exit code of the last run.",
                      ["database"], registry=registry)
    last_run = Gauge("database_migrations_last_run_timestamp_seconds",
                     "When the last run ended.", ["database"], registry=registry)
    for rec, code in targets if targets is not None else [(RECORDER, exit_code)]:
        db = {"database": rec.database}
        failed.labels(**db)
        for outcome in ("success", "failure"):
            total.labels(outcome=outcome, **db)
        for seconds, outcome in rec.durations:
            total.labels(outcome=outcome, **db).inc()
            duration.labels(outcome=outcome, **db).observe(seconds)
            if outcome == "failure":
                failed.labels(**db).inc()
        if rec.pending is not None:
            pending.labels(**db).set(rec.pending)
        last_exit.labels(**db).set(code)
        last_run.labels(**db).set(time.time())
    if statuses is not None:
        by_status = Gauge("database_migrations_targets", "Fleet targets of this run, by status.",
                          ["status"], registry=registry)
        for status, n in statuses.items():
            by_status.labels(status=status).set(n)
    database = RECORDER.database if targets is None else "fleet"

    logger = log.get()
    if metrics_file:
        try:
            write_to_textfile(metrics_file, registry)  # temp file + rename: atomic
        except OSError as exc:
            logger.warning("metrics_write_failed", path=metrics_file, error=str(exc))
    if pushgateway_url:
        try:
            push_to_gateway(pushgateway_url, job=job, registry=registry, timeout=5,
                            grouping_key={"database": database, "instance": host})
        except Exception as exc:  # any failure to push is only a warning
            logger.warning("metrics_push_failed", error=f"{exc.__class__.__name__}: {exc}")
        else:
            logger.info("metrics_pushed", database=database, job=job)
