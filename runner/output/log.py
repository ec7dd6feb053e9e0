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


# Lines a command printed on stdout while stdout is a terminal: the console log does not
# show them a second time (`validate`'s problems, `verify`'s drift).
_ON_SCREEN: set[str] = set()
_LISTS = ("drift", "problems")  # fields holding lines; `drift` is the more specific


def print_lines(lines: list[str]) -> None:
    """A command's result, one line each, on stdout."""
    print("\n".join(lines))
    if sys.stdout.isatty():
        _ON_SCREEN.update(lines)


class _Console:
    """structlog's ConsoleRenderer, but a list of lines (`problems`, `drift`) is shown one
    per line under the event, once: not again in `error`, which joins them for the JSON
    log and the termination message, and not at all when stdout just showed them."""

    def __init__(self) -> None:
        colors = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
        self.render = structlog.dev.ConsoleRenderer(colors=colors)

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        site = structlog.contextvars.get_contextvars().get("target")
        if site is not None:  # fleet mode: `[site_017] migration_applied ...`
            if event.get("target") == site:
                del event["target"]
            event.pop("shard", None)
            event["event"] = f"[{site}] {event.get('event', '')}"
        found = [event.pop(k) for k in _LISTS if isinstance(event.get(k), list)]
        lines = [str(line) for line in found[0]] if found else []
        if lines and isinstance(event.get("error"), str):
            joined = "; ".join(lines)
            error: str = event["error"]
            head = error[: -len(joined)].rstrip(": ") if error.endswith(joined) else error
            if all(line in _ON_SCREEN for line in lines):
                event["error"] = f"{head or _count(lines)}, shown above"
                lines = []
            elif len(lines) > 1 or head:
                event["error"] = head or _count(lines)
            else:
                lines = []  # one problem: `error` is that problem
        text = self.render(logger, method, event)
        return text + "".join(f"\n    {line}" for line in lines)


def _count(lines: list[str]) -> str:
    return f"{len(lines)} problem" + ("" if len(lines) == 1 else "s")


def configure(fmt: str = "json", level: str = "info", watchers: Sequence[Any] = ()) -> None:
    """`watchers` are processors that see every event before it is rendered (metrics)."""
    processors: list[Any] = [
        # Fleet mode binds `target` and `shard` per target thread (SPEC §11).
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_run_id,
        *watchers,
    ]
    if fmt == "console":
        processors.append(_Console())
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # sys.stderr as it is when a line is written, not when configured: a stream
        # swapped since (a test's capture, closed once it ended) is not written to.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [_Libraries()]
    root.setLevel(logging.WARNING)


def get() -> Any:
    return structlog.get_logger()
