"""Structured logging (SPEC §6): one JSON object per line on stderr, flushed as it happens.

Event names are part of the contract; stdout is kept for a command's result.

The JSON lines are rendered here, as structlog's processors render them (fields, then
`event`, `level`, an ISO-8601 UTC `timestamp`, `run_id`; `json.dumps` with `repr` for
what JSON cannot hold), without importing structlog: its package imports every part of
itself at once (~12 ms, a pod start pays it). The console format, for a person at a
terminal, is structlog's renderer.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import IO, Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
          logging.ERROR: "error", logging.CRITICAL: "critical"}


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
        import structlog

        colors = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
        self.render = structlog.dev.ConsoleRenderer(colors=colors)

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
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


class _Json:
    """The JSON log: structlog's add_log_level, TimeStamper(fmt="iso", utc=True), the run
    id, the watchers, format_exc_info and JSONRenderer, in that order, written whole and
    flushed under a lock (the watch thread logs too)."""

    def __init__(self, level: int, watchers: Sequence[Any], stream: IO[str] | None) -> None:
        self.level, self.watchers, self.stream = level, watchers, stream
        self.lock = threading.Lock()

    def emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if level < self.level:
            return
        name = _NAMES.get(level) or logging.getLevelName(level).lower()
        entry: dict[str, Any] = {**fields, "event": event, "level": name,
                                 "timestamp": datetime.datetime.now(datetime.UTC)
                                 .isoformat().replace("+00:00", "Z"),
                                 "run_id": RUN_ID}
        for watcher in self.watchers:
            entry = watcher(None, name, entry)
        exc_info = entry.pop("exc_info", None)
        if exc_info:
            if isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            elif not isinstance(exc_info, tuple):
                exc_info = sys.exc_info()
            if exc_info != (None, None, None):
                entry["exception"] = "".join(
                    traceback.format_exception(*exc_info)).rstrip("\n")
        line = json.dumps(entry, default=repr) + "\n"
        stream = self.stream or sys.stderr
        with self.lock:
            stream.write(line)
            stream.flush()


class Logger:
    """What `get()` returns: `debug`, `info`, `warning`, `error(event, **fields)` and
    `log(level, event, **fields)`, sent to the format configured when it is called."""

    def log(self, level: int, event: str, /, **fields: Any) -> None:
        if _json is not None:
            _json.emit(level, event, fields)
        else:
            import structlog

            structlog.get_logger().log(level, event, **fields)

    def debug(self, event: str, /, **fields: Any) -> None:
        self.log(logging.DEBUG, event, **fields)

    def info(self, event: str, /, **fields: Any) -> None:
        self.log(logging.INFO, event, **fields)

    def warning(self, event: str, /, **fields: Any) -> None:
        self.log(logging.WARNING, event, **fields)

    def error(self, event: str, /, **fields: Any) -> None:
        self.log(logging.ERROR, event, **fields)


_json: _Json | None = _Json(logging.INFO, (), None)  # until configure()
_LOGGER = Logger()


def configure(fmt: str = "json", level: str = "info", watchers: Sequence[Any] = ()) -> None:
    """`watchers` are processors that see every event before it is rendered (metrics)."""
    global _json
    root = logging.getLogger()
    root.handlers = [_Libraries()]
    root.setLevel(logging.WARNING)
    if fmt != "console":
        _json = _Json(_LEVELS[level], watchers, sys.stderr)
        return
    import structlog

    _json = None
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_run_id,
        *watchers,
        _Console(),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get() -> Logger:
    return _LOGGER
