"""Every wait for the server's answer ends when the answer is not coming (SPEC §10.2).

A proxy or NAT that holds the socket open but stops forwarding leaves psycopg waiting
without end: TCP sees a live peer (its kernel acknowledges), so neither the keepalives
nor `tcp_user_timeout` fire. While migrations run, the watch finds that on the work
connection (runner.applying.stall); this thread finds it everywhere else: the first
connection's look, the history format's and the history's reads, the bookkeeping
tables' creation, the catalog checks, baseline's and repair's writes, the read-only
commands, the reconnect after a loss.

One daemon thread looks at every connection of the process (`watch`, from
runner.session.database.connect) once a second. A connection that a thread has been
inside a call on for STALL_S is asked about on another connection to the same server,
opened only then (a run whose queries answer opens none):

- its server process is gone, or not `active` for STALL_S: the answer was lost on the
  way, or the query never arrived. A query waiting for a lock another session holds
  (an ALTER of the history table) shows `active` for as long as it waits, and waits.
- the server cannot be reached (no connection, or no answer within ASK_S): the wait is
  as hopeless.
- the server refuses the question (a connection limit reached, 53300): it is alive, and
  whether the wait is one cannot be told; asked again later, less often as it goes on.

A stalled connection ends the run (exit 3, `connection_lost` naming what the runner was
`doing`), so every connection of the run to that database is severed (their waits end at
once) and their server processes, which the proxy keeps alive, are ended on the asking
connection: the advisory lock goes with its session and an open transaction is rolled
back whole, so nothing is half-made and a retry starts at once. The watch's connections
are `excused` while it runs: it has its own rule, which tells its report.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import psycopg

from runner.errors import ConfigError, RunnerError
from runner.output import log
from runner.session import deadline

Connection = psycopg.Connection[tuple[Any, ...]]
Opener = Callable[[], Connection]

STALL_S = 10.0  # an answer this late, from a server that has finished, is not coming
ASK_S = 5.0  # to open the asking connection, and for its answer
TICK_S = 1.0
_STATE = """
SELECT state, extract(epoch FROM pg_catalog.clock_timestamp() - state_change)::float8
FROM pg_catalog.pg_stat_activity WHERE pid = %s
"""
_END = """
SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
WHERE pid = ANY (%s) AND pid <> pg_catalog.pg_backend_pid()
"""
_STAGE: ContextVar[str | None] = ContextVar("stage", default=None)


def doing(what: str) -> None:
    """What this thread's run does now, for the report of a connection lost while it
    did: `reading the history`."""
    _STAGE.set(what)


def stage() -> str | None:
    return _STAGE.get()


@dataclass(eq=False)
class _Watched:
    handle: deadline.Handle
    pid: int
    target: str  # the database's conninfo: the connections ended together
    opener: Opener  # a connection to ask the server on
    excused: bool = False
    busy_since: float | None = None
    next_ask: float = 0.0


_WATCHED: weakref.WeakKeyDictionary[Connection, _Watched] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()
_ASKERS: dict[str, Connection] = {}  # the watch thread's own, by target
_thread: threading.Thread | None = None
# Why the thread severed connections, in order: the report's `stalled`.
verdicts: list[str] = []


def watch(conn: Connection, target: str, opener: Opener) -> None:
    """Watch `conn` (in the thread that opened it) until it is closed. `target`: the
    conninfo it was opened with; `opener`: opens another connection there, unwatched."""
    global _thread
    with _GUARD:
        _WATCHED[conn] = _Watched(deadline.handle(conn), conn.info.backend_pid, target,
                                  opener)
        if _thread is None:
            _thread = threading.Thread(target=_loop, name="silence-watch", daemon=True)
            _thread.start()


@contextlib.contextmanager
def excused(*conns: Connection) -> Iterator[None]:
    """Leave `conns` to the migration watch (runner.applying.watch) while it runs."""
    with _GUARD:
        found = [w for c in conns if (w := _WATCHED.get(c)) is not None]
    for w in found:
        w.excused = True
    try:
        yield
    finally:
        for w in found:
            w.excused, w.busy_since = False, None


def _loop() -> None:
    while True:
        time.sleep(TICK_S)
        try:
            tick(time.monotonic())
        except Exception as exc:  # never let the thread die: it is all that is left
            log.get().debug("silence_watch_failed", message=str(exc).strip())


def tick(now: float) -> None:
    with _GUARD:
        watched = [(c, w) for c, w in _WATCHED.items() if not c.closed]
    busy_targets = set()
    for conn, w in watched:
        # Read only: psycopg holds the connection's lock while a call sends or waits.
        if w.excused or conn.broken or w.handle.severed or not conn.lock.locked():
            w.busy_since = None
            continue
        if w.busy_since is None:
            w.busy_since = now
        busy = now - w.busy_since
        if busy < STALL_S:
            continue
        busy_targets.add(w.target)
        if now < w.next_ask:
            continue
        verdict = _ask(w, busy, now)
        if verdict is not None:
            _end(w.target, verdict, watched)
            return
    for target in [t for t in _ASKERS if t not in busy_targets]:
        _ASKERS.pop(target).close()


def lost_answer(asker: Connection, pid: int, busy: float, within: float) -> str | None:
    """Why a call busy for `busy` seconds on server process `pid` will never be answered,
    asked on `asker` (its answer awaited `within` seconds): the process is gone, or not
    `active` for STALL_S; None while it may be a wait (a lock wait shows `active`). The
    rule of this module and of the migrations' watch (runner.applying.stall). Raises
    psycopg.Error when `asker` cannot answer."""
    with deadline.within(asker, within):
        row = asker.execute(_STATE, (pid,)).fetchone()
    if row is None:
        return f"no answer for {busy:.0f}s, and its server process is gone"
    state, idle = row
    if state != "active" and idle is not None and idle >= STALL_S:
        return f"no answer for {busy:.0f}s, while the server has been {state} for {idle:.0f}s"
    return None


def _ask(w: _Watched, busy: float, now: float) -> str | None:
    """Why the wait on `w` is hopeless, or None while it may be a wait."""
    asker = _ASKERS.get(w.target)
    try:
        if asker is None or asker.closed or asker.broken:
            asker = _ASKERS[w.target] = w.opener()
        return lost_answer(asker, w.pid, busy, ASK_S)
    except (RunnerError, psycopg.Error) as exc:
        if (asker := _ASKERS.pop(w.target, None)) is not None:
            asker.close()
        sqlstate = (exc.fields.get("sqlstate") if isinstance(exc, RunnerError)
                    else exc.sqlstate)
        message = " ".join((getattr(exc, "message", None) or str(exc)).split())
        if (sqlstate and not sqlstate.startswith("08")) or isinstance(exc, ConfigError):
            # The server answered (it is alive), or asking cannot work: nothing is known.
            # Asked less often as the wait goes on: each refusal is a line in its log.
            log.get().debug("silence_ask_refused", sqlstate=sqlstate, message=message)
            w.next_ask = now + max(STALL_S, min(busy, 60.0))
            return None
        return f"no answer for {busy:.0f}s, and the server cannot be reached ({message})"


def _end(target: str, verdict: str, watched: list[tuple[Connection, _Watched]]) -> None:
    """End the server processes of every connection of the run to `target`, then sever
    them: in that order, since the run ends as soon as the first wait does."""
    ended = [w for c, w in watched if w.target == target and not c.closed]
    verdicts.append(verdict)  # before any wait ends: the report reads it
    log.get().debug("connection_severed", reason=verdict, pids=[w.pid for w in ended])
    asker = _ASKERS.pop(target, None)
    if asker is not None:
        try:
            with deadline.within(asker, ASK_S):
                asker.execute(_END, ([w.pid for w in ended],))
        except psycopg.Error as exc:  # they end when the proxy lets go of their sockets
            log.get().debug("silence_end_failed", message=str(exc).strip())
        finally:
            asker.close()
    for w in ended:
        w.handle.sever()
