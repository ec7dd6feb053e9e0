"""Structured logging (SPEC §6): one JSON object per line on stderr, flushed as it happens.

Event names are part of the contract; stdout is kept for a command's result.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


# One id per process, on every event, so a log pipeline can group a run's lines.
RUN_ID = os.urandom(8).hex()


def _add_run_id(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["run_id"] = RUN_ID
    return event


class _Libraries(logging.Handler):
    """Records of the standard `logging` module (psycopg's) become events of this log, so
    stderr stays one JSON object per line."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name.startswith("psycopg") and message.startswith("error ignored"):
            # psycopg leaving a pipeline after the error it raised: that error is reported.
            return
        get().log(record.levelno, "library_log", logger=record.name, message=message)


def configure(fmt: str = "json", level: str = "info", watchers: Sequence[Any] = ()) -> None:
    """`watchers` are processors that see every event before it is rendered (metrics)."""
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_run_id,
        *watchers,
    ]
    if fmt == "console":
        colors = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
        processors.append(structlog.dev.ConsoleRenderer(colors=colors))
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [_Libraries()]
    root.setLevel(logging.WARNING)


def get() -> Any:
    return structlog.get_logger()
