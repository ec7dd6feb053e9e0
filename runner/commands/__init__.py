"""The commands (SPEC §4) and what they share: connecting, the lock, history vs files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg

from runner.errors import (
    ConfigError,
    LockLostError,
    RunningElsewhereError,
    UnreachableError,
    ValidationError,
)
from runner.folder import files
from runner.histories import choice
from runner.histories.history import Applied, Comparison, History, NativeHistory, as_fields, compare
from runner.output import log
from runner.session import deadline, silence
from runner.session.database import (
    TOO_MANY_CONNECTIONS,
    Connection,
    backend_pid,
    connect,
    server_version,
    set_parameters,
)
from runner.session.lock import POOLER_MESSAGE, AdvisoryLock, is_fence_error, owners
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.applying.watch import Watch


RELEASE_S = 10.0  # the unlock answers in milliseconds; a lost one goes with its session


def _build(fmt: str, settings: Settings, sqlx_schema: str | None = None) -> History:
    if fmt == "sqlx":
        from runner.histories.sqlx import SqlxHistory

        return SqlxHistory(sqlx_schema or settings.schema, settings.schema)
    return NativeHistory(settings.schema, sqlx_schema)


def history_for(settings: Settings) -> History:
    """The format as far as the folder tells it (SPEC §8): MIGRATE_HISTORY_FORMAT, or for
    `auto` the folder's layout. For the file checks made before connecting; `settle`
    decides the run's format once connected."""
    return _build(choice.offline(settings.history_format, settings.migrations_path).format,
                  settings)


def offline_history(settings: Settings) -> History:
    """The format of a command that reads no database (validate --offline,
    draft-rollback): from the folder alone, logged as `history_format`."""
    chosen = choice.offline(settings.history_format, settings.migrations_path)
    log.get().info("history_format", format=chosen.format, reason=chosen.reason)
    return _build(chosen.format, settings)


def settle(settings: Settings, conn: Connection, level: str = "info") -> History:
    """The run's history, decided once on `conn` before anything is written
    (runner.histories.choice), logged as `history_format` with the schema used; the
    format's session parameters set on `conn`. ValidationError (5) or ConfigError (2)
    when `auto` cannot decide."""
    silence.doing("choosing the history format")
    chosen = choice.choose(conn, settings.history_format, settings.schema,
                           settings.schema_explicit, settings.migrations_path)
    history = _build(chosen.format, settings, chosen.sqlx.schema)
    set_parameters(conn, history.session_parameters)
    extra = ({"schema_from": chosen.sqlx.how, **chosen.sqlx.fields}
             if chosen.format == "sqlx" else {})
    getattr(log.get(), level)("history_format", format=chosen.format, reason=chosen.reason,
                              schema=history.schema, table=history.history.as_string(conn),
                              **extra)
    if chosen.format == "sqlx" and chosen.sqlx.shadowed:
        log.get().warning("sqlx_history_shadowed", schema=history.schema, **chosen.sqlx.fields,
                          message=f"{history.history.as_string(conn)} is not in the first "
                                  "schema of the search_path, where the app's sqlx creates "
                                  "its own _sqlx_migrations when missing and would apply "
                                  "every file again: move the table there, or put its "
                                  "schema first in the role's search_path")
    return history


def bookkeeping(settings: Settings, conn: Connection) -> set[tuple[str, str]]:
    """(schema, table) of both formats' bookkeeping tables where this run would find
    them, for `verify` to leave out whichever format migrated the database."""
    from runner.histories.sqlx import SqlxHistory

    silence.doing("finding the bookkeeping tables")
    place = choice.sqlx_place(conn, settings.schema, settings.schema_explicit)
    tables = NativeHistory(settings.schema).bookkeeping
    return tables | (SqlxHistory(place.schema).bookkeeping if place.schema else set())


def settled_files(history: History, before: History,
                  migrations: list[files.Migration], settings: Settings) -> list[files.Migration]:
    """`migrations`, read before connecting as `before` reads the folder, now as the
    settled `history` reads it: read again only when `auto` chose the other format (a
    folder of plain `.sql` files on the app's database)."""
    if history.format == before.format:
        return migrations
    return history.load(settings.migrations_path)


def open_connection(settings: Settings, purpose: str, level: str = "info",
                    primary: bool = False) -> Connection:
    """`level` of `db_connected`: debug where the command's output is for a person;
    `primary`: the command writes, and waits out a standby (SPEC §10.3). Every connection
    but the work one is the run's first, and looks at the session's settings. The work
    one, opened while the lock is held, does not wait for a connection slot (53300)."""
    work = purpose == "work"
    silence.doing(f"opening the {purpose} connection")
    conn = connect(settings, purpose, look=None if work else level, primary=primary,
                   wait_for_a_slot=not work)
    info = conn.info
    getattr(log.get(), level)("db_connected", server_version=server_version(conn), purpose=purpose,
                   target=f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}")
    return conn


@contextmanager
def read_only(settings: Settings, purpose: str, level: str = "info") -> Iterator[Connection]:
    """A connection for commands that only look (status, validate, --dry-run): no lock, and
    every transaction read-only, so nothing here can change the database."""
    with open_connection(settings, purpose, level) as conn:
        silence.doing("setting the session read-only")
        conn.execute("SET default_transaction_read_only = on")
        yield conn


class Session:
    """The lock connection, holding the advisory lock, and the work connection, opened on
    first use: a run with nothing to do reads the history on the lock connection and
    never opens a second one, so fifty waiting runners cost fifty connections, not a
    hundred, and each one that waited finishes within milliseconds of the release."""

    def __init__(self, settings: Settings, lock: AdvisoryLock, history: History) -> None:
        self.settings = settings
        self.lock = lock
        self.history = history  # settled on the lock connection
        self._work: Connection | None = None
        self._work_pid = 0

    @property
    def work(self) -> Connection:
        if self._work is None:
            try:
                conn = open_connection(self.settings, "work")
            except UnreachableError as exc:
                if exc.fields.get("sqlstate") != TOO_MANY_CONNECTIONS:
                    raise
                return self._single(exc.message)
            silence.doing("setting up the work connection")
            self._work_pid = backend_pid(conn)
            if self._work_pid == self.lock.pid:
                conn.close()  # two client connections on one backend: only a pooler does that
                raise ConfigError(POOLER_MESSAGE)
            set_parameters(conn, self.history.session_parameters)
            self._work = conn
        return self._work

    def _single(self, refused: str) -> Connection:
        """A connection limit that leaves room for the lock connection only (SPEC §10.3):
        the migrations run on it too, as sqlx runs them, rather than waiting out
        MIGRATE_WAIT_TIMEOUT holding the lock. The watch (SPEC §9) is then off, and the
        session reset takes the lock again right after pg_advisory_unlock_all()
        (AdvisoryLock.fence_after_unlock)."""
        log.get().warning("single_connection", lock_pid=self.lock.pid, refused=refused,
                          message="the role's or database's connection limit leaves room "
                                  "for one connection: the migrations run on the lock's "
                                  "own, without the watch of long migrations")
        self.lock.single = True
        self._work = self.lock.conn
        self._work_pid = self.lock.pid
        return self._work

    def check_same_session(self) -> None:
        """Behind a transaction-pooling proxy each transaction may land on another backend,
        where the lock held by our session guards nothing: refuse before changing
        anything."""
        silence.doing("checking that the work session is the one opened")
        if backend_pid(self.work) != self._work_pid:
            raise ConfigError(POOLER_MESSAGE)

    @contextmanager
    def watching(self) -> Iterator[Watch | None]:
        """The watch of the work connection from the lock connection (SPEC §9), stopped
        before the lock is released whatever ends the block; None on a single
        connection. Imported here: only a run with something to apply watches."""
        from runner.applying.live import live_status
        from runner.applying.watch import Watch

        work = self.work
        if self.lock.single:
            yield None
            return
        watch = Watch(self.lock.conn, self._work_pid, self.settings.progress_interval,
                      cancel=lambda: work.cancel_safe(timeout=5), work=work)
        work.add_notice_handler(watch.notice)
        silence.doing("applying migrations")
        # The watch finds a lost answer on these two itself, and says so in its report.
        with silence.excused(self.lock.conn, work):
            watch.start()
            try:
                with live_status(self.settings, watch):
                    yield watch
            finally:
                watch.stop()
                work.remove_notice_handler(watch.notice)

    def fence(self, conn: Connection) -> None:
        """Inside a transaction that writes the history outside a migration (baseline,
        repair): fail it unless this runner holds the lock now (SPEC §10.1)."""
        try:
            conn.execute("SELECT " + self.lock.fence())
        except psycopg.Error as exc:
            if not is_fence_error(exc):
                raise
            reason = "the advisory lock was no longer held by this runner when it was to commit"
            log.get().error("lock_lost", reason=reason, lock_key=self.lock.key,
                            lock_pid=self.lock.pid)
            raise LockLostError(f"advisory lock lost: {reason}; nothing was changed; run "
                                "again", lock_key=self.lock.key) from None

    def close(self) -> None:
        if self._work is not None and not self.lock.single:
            self._work.close()


@contextmanager
def locked(settings: Settings, conn: Connection | None = None,
           settled: History | None = None) -> Iterator[Session]:
    """The lock connection, the run's history settled on it before the lock (whose key is
    the format's), and the lock held. `conn`: the lock connection when the caller opened
    it already, with `settled` the history `settle` chose on it (fleet mode's pre-check
    reads the history there before the lock); closed here like one opened here."""
    lock_conn = conn if conn is not None else open_connection(settings, "lock", primary=True)
    try:
        history = settled if settled is not None else settle(settings, lock_conn)
    except BaseException:
        lock_conn.close()
        raise
    lock = AdvisoryLock(lock_conn, history.lock_key(lock_conn.info.dbname))
    session = Session(settings, lock, history)
    try:
        silence.doing("waiting for the advisory lock")
        lock.acquire(settings.lock_timeout)
        yield session
        silence.doing("releasing the advisory lock")  # not on a failure's way out
    finally:
        session.close()
        with deadline.within(lock_conn, RELEASE_S):  # a stalled network: SPEC §10.2
            lock.release()
        lock_conn.close()


def refuse_running_elsewhere(session: Session, applied: dict[int, Applied]) -> None:
    """A `failed` row whose no-transaction migration another runner's session is still
    applying (its runner lost the lock, or stalled): `migration_running_elsewhere` and
    exit 4, never "run repair", which would start it a second time (SPEC §10.1)."""
    failed = sorted(v for v, a in applied.items() if a.status == "failed")
    silence.doing("looking for a migration running elsewhere")
    running = owners(session.lock.conn, session.lock.key, failed)
    if not running:
        return
    now = datetime.now(UTC)
    parts = []
    for version, owner in sorted(running.items()):
        a = applied[version]
        seconds = round((now - a.applied_at).total_seconds(), 1)
        log.get().error("migration_running_elsewhere", version=version,
                        description=a.description, running_s=seconds, **owner)
        parts.append(f"version {version} ({a.description}) is being applied right now by "
                     f"backend pid {owner['pid']} ({owner['application_name'] or '?'}"
                     f"{', ' + owner['client_addr'] if owner['client_addr'] else ''}), "
                     f"for {seconds:g}s")
    raise RunningElsewhereError(
        "; ".join(parts) + ": another runner's no-transaction migration is still running "
        "(that runner lost the advisory lock or stalled); wait for it to end and run again; "
        "do not run `repair --failed` while it runs, it would start the file a second time",
        versions=sorted(running), pids=[o["pid"] for o in running.values()])


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
