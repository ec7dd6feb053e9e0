"""A live status line for a person watching a run on a terminal (SPEC §9).

Only when stderr is a TTY and the log format is `console`, never in JSON: the file being
applied, the time it has run, what it waits on, an index build's percentage, redrawn in
place once a second by the watch thread and cleared when the watch ends, so the final
log line takes its place. Log lines written meanwhile go above it: the log's stream is
pointed, for that time, at tqdm's `write`, which clears the line, writes, and redraws it
(under tqdm's lock, which its redraw takes too, so the two threads never interleave).

The terminal handling is tqdm's, imported on that path only, so a pod start never pays
for it. Not rich: structlog imports rich at start-up whenever it is installed (for its
tracebacks), which would cost every run ~0.1 s.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from runner.applying.watch import Watch
from runner.settings import Settings


def status(watch: Watch, width: int | None = None) -> str:
    """`applying 004_x.sql  12s  index build 45%  waiting: ...`, or "" between files.

    `width` (columns): the terminal cuts what is longer, so a line naming blockers is
    shortened first to their pids, then to the pids ahead of the file name: the pid to
    look up is what a person needs most, and never what gets cut."""
    running = watch.running
    if running is None:
        return ""
    file, elapsed = running.plan.migration.file, f"{time.monotonic() - running.started:.0f}s"
    text = f"applying {file}  {elapsed}"
    if running.percent is not None:
        text += f"  index build {running.percent:.0f}%"
    if not running.waiting:
        return text
    full = f"{text}  waiting: {running.waiting}"
    blocked = running.waiting.startswith("lock (") and running.blocked_by
    if width is None or len(full) <= width or not blocked:
        return full
    pids = "blocked by pid " + ", ".join(str(b["pid"]) for b in running.blocked_by)
    short = f"{text}  waiting: lock, {pids}"
    return short if len(short) <= width else f"{pids}  {elapsed}  applying {file}"


class _Above:
    """A stream for the log: whole lines, written above the status line."""

    def __init__(self, write: Callable[..., Any], stream: IO[str]) -> None:
        self._write = write
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._write(line, file=self._stream)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


@contextmanager
def live_status(settings: Settings, watch: Watch) -> Iterator[None]:
    """Show the line while the block runs, when stderr is a terminal and the format
    `console`; otherwise do nothing."""
    # One line for the process's one run: fleet mode's target threads share the terminal,
    # and their prefixed log lines say what runs.
    if (settings.log_format != "console" or not sys.stderr.isatty()
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    import structlog
    from tqdm import tqdm

    stream = sys.stderr
    try:
        sized = os.get_terminal_size(stream.fileno()).columns > 0
    except OSError:
        sized = False
    # The line follows the terminal's size; a terminal that reports none (a pty nobody
    # sized) gets 80x24, which tqdm needs to draw at all.
    line = tqdm(file=stream, bar_format="{desc}", leave=False, dynamic_ncols=sized,
                ncols=None if sized else 80, nrows=None if sized else 24)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(
        _Above(tqdm.write, stream)))  # type: ignore[arg-type]

    def width() -> int:
        try:
            return os.get_terminal_size(stream.fileno()).columns if sized else 80
        except OSError:
            return 80

    watch.on_tick = lambda: line.set_description_str(status(watch, width()), refresh=True)
    try:
        yield
    finally:
        watch.on_tick = None
        line.close()
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
