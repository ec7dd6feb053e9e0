"""A live status line for a person watching a run on a terminal (SPEC §9).

Only when stderr is a TTY and the log format is `console`, never in JSON: the file being
applied, the time it has run, what it waits on, an index build's percentage, redrawn in
place by rich and removed when the watch ends, so the final log line takes its place.
Log lines written meanwhile go above it (rich redirects stderr while the line is shown;
the log's stream is pointed at that redirection, then back). rich is imported here only,
on that path: a pod start never pays for it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from runner.settings import Settings
from runner.watch import Watch


class _Line:
    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def __rich__(self) -> Any:
        from rich.text import Text

        running = self.watch.running
        if running is None:
            return Text("")
        line = Text.assemble(("applying ", "dim"), (running.plan.migration.file, "bold"),
                             f"  {time.monotonic() - running.started:.0f}s")
        if running.percent is not None:
            line.append(f"  index build {running.percent:.0f}%", "cyan")
        if running.waiting:
            line.append(f"  waiting: {running.waiting}", "yellow")
        return line


@contextmanager
def live_status(settings: Settings, watch: Watch) -> Iterator[None]:
    """Show the line while the block runs, when stderr is a terminal and the format
    `console`; otherwise do nothing."""
    if settings.log_format != "console" or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.live import Live

    stream = sys.stderr
    live = Live(_Line(watch), console=Console(file=stream), transient=True,
                refresh_per_second=4, redirect_stdout=False, redirect_stderr=True)
    live.start()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        yield
    finally:
        live.stop()
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
