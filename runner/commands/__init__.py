"""The commands (SPEC §4) and what they share: connecting, the lock, history vs files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.errors import ConfigError, ValidationError
from runner.folder import files
from runner.histories.history import Applied, Comparison, History, NativeHistory, as_fields, compare
from runner.output import log
from runner.session import deadline
from runner.session.database import Connection, backend_pid, connect, server_version
from runner.session.lock import POOLER_MESSAGE, AdvisoryLock
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.applying.watch import Watch


RELEASE_S = 10.0  # the unlock answers in milliseconds; a lost one goes with its session


def history_for(settings: Settings) -> History:
    """The history format MIGRATE_HISTORY_FORMAT names (SPEC §8)."""
    if settings.history_format == "sqlx":
        from runner.histories.sqlx import SqlxHistory

        return SqlxHistory(settings.schema)
    return NativeHistory(settings.schema)


def open_connection(settings: Settings, purpose: str, level: str = "info") -> Connection:
    """`level` of `db_connected`: debug where the command's output is for a person."""
    conn = connect(settings, purpose)
    info = conn.info
    getattr(log.get(), level)("db_connected", server_version=server_version(conn), purpose=purpose,
                   target=f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}")
    return conn


@contextmanager
def read_only(settings: Settings, purpose: str, level: str = "info") -> Iterator[Connection]:
    """A connection for commands that only look (status, validate, --dry-run): no lock, and
    every transaction read-only, so nothing here can change the database."""
    with open_connection(settings, purpose, level) as conn:
        conn.execute("SET default_transaction_read_only = on")
        yield conn


class Session:
    """The lock connection, holding the advisory lock, and the work connection, opened on
    first use: a run with nothing to do reads the history on the lock connection and
    never opens a second one, so fifty waiting runners cost fifty connections, not a
    hundred, and each one that waited finishes within milliseconds of the release."""

    def __init__(self, settings: Settings, lock: AdvisoryLock) -> None:
        self.settings = settings
        self.lock = lock
        self._work: Connection | None = None
        self._work_pid = 0

    @property
    def work(self) -> Connection:
        if self._work is None:
            conn = open_connection(self.settings, "work")
            self._work_pid = backend_pid(conn)
            if self._work_pid == self.lock.pid:
                conn.close()  # two client connections on one backend: only a pooler does that
                raise ConfigError(POOLER_MESSAGE)
            self._work = conn
        return self._work

    def check_same_session(self) -> None:
        """Behind a transaction-pooling proxy each transaction may land on another backend,
        where the lock held by our session guards nothing: refuse before changing
        anything."""
        if backend_pid(self.work) != self._work_pid:
            raise ConfigError(POOLER_MESSAGE)

    @contextmanager
    def watching(self) -> Iterator[Watch]:
        """The watch of the work connection from the lock connection (SPEC §9), stopped
        before the lock is released whatever ends the block. Imported here: only a run
        with something to apply watches."""
        from runner.applying.live import live_status
        from runner.applying.watch import Watch

        work = self.work
        watch = Watch(self.lock.conn, self._work_pid, self.settings.progress_interval,
                      work=work)
        work.add_notice_handler(watch.notice)
        watch.start()
        try:
            with live_status(self.settings, watch):
                yield watch
        finally:
            watch.stop()
            work.remove_notice_handler(watch.notice)

    def close(self) -> None:
        if self._work is not None:
            self._work.close()


@contextmanager
def locked(settings: Settings, history: History) -> Iterator[Session]:
    lock_conn = open_connection(settings, "lock")
    lock = AdvisoryLock(lock_conn, history.lock_key(lock_conn.info.dbname))
    session = Session(settings, lock)
    try:
        lock.acquire(settings.lock_timeout)
        yield session
    finally:
        session.close()
        with deadline.within(lock_conn, RELEASE_S):  # a stalled network: SPEC §10.2
            lock.release()
        lock_conn.close()


@dataclass
class State:
    migrations: list[files.Migration]
    comparison: Comparison


def read_state(history: History, applied: dict[int, Applied],
               migrations: list[files.Migration], settings: Settings,
               to: int | None = None) -> State:
    """History against the files; a ValidationError for anything SPEC §3 refuses."""
    comparison = compare(migrations, applied, history.eol_only)
    problems = comparison.problems(settings.strict, settings.allow_out_of_order, history.cli)
    if problems:
        raise ValidationError(problems)
    warn_eol_only(comparison, history)
    if comparison.missing:
        log.get().warning("database_ahead", versions=[a.version for a in comparison.missing],
                          message="applied versions have no file here (a newer image ran); "
                                  "nothing to do for them")
    if to is not None:
        comparison.pending = [m for m in comparison.pending if m.version <= to]
    return State(migrations, comparison)


def warn_eol_only(comparison: Comparison, history: History) -> None:
    """SPEC §8: not an edit, but the app, which hashes the raw bytes, will refuse it."""
    for m, a in comparison.eol_only:
        log.get().warning("checksum_eol_only", **as_fields(m), applied_checksum=a.checksum,
                          file_checksum=m.checksum,
                          message="the file differs from the applied one only in line endings "
                                  "or a BOM; the app (sqlx) will refuse it: restore the "
                                  "file's line endings, or run "
                                  f"`{history.cli('repair --accept-checksums')}`")
