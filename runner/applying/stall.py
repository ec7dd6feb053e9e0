"""A work connection that waits for an answer which will never come (SPEC §10.2).

A proxy or NAT that holds the sockets open but stops forwarding leaves the runner
waiting for a result the server sent long ago, or for a server that never got the
query: TCP sees a live peer, so keepalives and `tcp_user_timeout` never fire. The
watch thread (runner.applying.watch) looks at it once a tick:

- The main thread is inside a call on the work connection (psycopg holds the
  connection's lock for exactly that long: sending, or waiting for results) for
  STALL_S, and the server, asked on the lock connection, shows the work backend gone,
  or not running anything for STALL_S: the answer is lost on the way. A statement that
  runs for hours shows `active` all along and is never touched.
- The lock connection stops answering (its queries run under a statement_timeout of
  500 ms; `deadline.within` severs it after STALL_S) or dies: the server can no longer
  be asked. The work connection, busy for STALL_S and still busy LOCK_GRACE_S after
  that, is taken for stalled too.

Either way the work connection's socket is severed, the main thread's wait ends with
OperationalError, and the migration is reported `connection_lost` (runner.applying.
outcome), which reconnects to learn whether it committed.
"""

from __future__ import annotations

from typing import Any

import psycopg

from runner.output import log
from runner.session import deadline, silence
from runner.session.database import Connection
from runner.session.silence import STALL_S

LOCK_GRACE_S = 5.0


class Stall:
    def __init__(self, lock: Connection, work: Connection, work_pid: int) -> None:
        """Built in the main thread (the work connection's handle is taken there);
        `tick` runs in the watch thread, which owns `lock`."""
        self.lock = lock
        self.work = work
        self.work_pid = work_pid
        self.handle = deadline.handle(work)
        self.busy_since: float | None = None
        self.lock_lost_at: float | None = None
        self.reason: str | None = None  # why the work connection was severed

    def lock_lost(self, now: float) -> None:
        if self.lock_lost_at is None:
            self.lock_lost_at = now

    def tick(self, now: float) -> None:
        if self.reason is not None:
            return
        if not self.work.lock.locked():  # read only: the main thread owns the connection
            self.busy_since = None
            return
        if self.busy_since is None:
            self.busy_since = now
        busy = now - self.busy_since
        if busy < STALL_S:
            return
        if self.lock_lost_at is None and (self.lock.closed or self.lock.broken):
            self.lock_lost(now)
        if self.lock_lost_at is not None:
            if now - self.lock_lost_at >= LOCK_GRACE_S:
                self._sever(f"no answer for {busy:.0f}s, and the lock connection is lost")
            return
        try:
            verdict = silence.lost_answer(self.lock, self.work_pid, busy, STALL_S)
        except psycopg.Error as exc:
            log.get().debug("watch_failed", message=str(exc).strip())
            self.lock_lost(now)
            return
        if verdict is not None:
            self._sever(verdict)

    def _sever(self, reason: str) -> None:
        if self.handle.sever():
            self.reason = reason
            log.get().debug("work_connection_severed", reason=reason)

    def fields(self) -> dict[str, Any]:
        return {"stalled": self.reason} if self.reason else {}
