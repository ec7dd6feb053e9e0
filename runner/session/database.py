"""Connecting to PostgreSQL and waiting for it to come up (SPEC §3)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import psycopg

from runner.errors import ConfigError, UnreachableError
from runner.output import log
from runner.session import connect_failure
from runner.session import conninfo as cinfo
from runner.settings import Settings

if TYPE_CHECKING:
    from tenacity import RetryCallState

Connection = psycopg.Connection[tuple[Any, ...]]
APPLICATION_NAME = "migration-runner"
# libpq keepalives on our end; the same numbers for the server's end: a dead peer is
# noticed within idle + interval * count = 25 s, inside the 60 s the SPEC allows.
# Told of every connection opened in this context (fleet mode: to cancel a target's
# statements on SIGTERM from the thread that received it).
OPENED: ContextVar[Callable[[psycopg.Connection[Any]], None] | None] = ContextVar(
    "opened", default=None)
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
             "keepalives_count": 3}


def transient_reason(exc: BaseException) -> str | None:
    return connect_failure.classify(exc)[1]


def _wait_within(timeout: float) -> Any:
    """Exponential backoff with jitter, the last sleep cut to the time left, so the last
    attempt is made at the deadline rather than one backoff step before it."""
    from tenacity import wait_exponential_jitter

    backoff = wait_exponential_jitter(multiplier=0.2, max=5, jitter=0.3)

    def wait(state: RetryCallState) -> float:
        left = timeout - (state.seconds_since_start or 0.0)
        return max(0.0, min(backoff(state), left))

    return wait


def connect(settings: Settings, purpose: str) -> Connection:
    """One connection, retried on transient errors until MIGRATE_WAIT_TIMEOUT (seconds).

    Raises ConfigError (exit 2) for a connection string that cannot be right and when
    nothing at all is configured and libpq's defaults fail; UnreachableError (exit 3)
    when the server refused for good or did not answer in time."""
    logger = log.get()
    conninfo = settings.conninfo()
    params = cinfo.parse(conninfo, cinfo.source_name(settings.database_url_file))
    target = cinfo.target(params)
    # Nothing configured: libpq's defaults (the local socket, as the OS user) get one try,
    # as psql would give them; waiting cannot make a setting appear.
    configured = cinfo.configured(conninfo)
    wait_timeout = settings.wait_timeout if configured else 0.0
    kwargs: dict[str, Any] = {**KEEPALIVE, "application_name": APPLICATION_NAME,
                              "autocommit": True}
    if settings.connect_timeout > 0:
        kwargs["connect_timeout"] = max(2, math.ceil(settings.connect_timeout))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.info("db_wait_retry", attempt=state.attempt_number, delay_s=round(delay, 3),
                    reason=transient_reason(exc) if exc else None, target=target,
                    purpose=purpose)

    def attempt() -> Connection:
        password_file = settings.database_password_file
        if password_file:  # read at every attempt: a token refreshed during the wait
            kwargs["password"] = cinfo.read_password_file(password_file)
        conn: Connection = connect_failure.VerboseConnection.connect(conninfo, **kwargs)
        return conn

    started = time.monotonic()
    try:
        try:
            conn = attempt()
        except psycopg.OperationalError as exc:
            if transient_reason(exc) is None:
                raise
            left = wait_timeout - (time.monotonic() - started)
            conn = _retry(exc, attempt, left, before_sleep)
    except psycopg.OperationalError as exc:
        message = cinfo.scrub(connect_failure.message(exc))
        sqlstate, reason = connect_failure.classify(exc)
        if not configured:
            raise ConfigError(
                "no database configured: set DATABASE_URL (or DATABASE_URL_FILE, or libpq's "
                f"PGHOST, PGUSER, ... variables); libpq's defaults, {target}, failed: "
                f"{message}", variable="DATABASE_URL", sqlstate=sqlstate) from None
        if reason:
            raise UnreachableError(
                f"database {target} not reachable within {wait_timeout:g}s: {message}",
                sqlstate=sqlstate, target=target) from None
        raise UnreachableError(f"database {target} "
                               f"{connect_failure.refusal(sqlstate, message)}: {message}",
                               sqlstate=sqlstate, target=target) from None
    _set_session(conn)
    opened = OPENED.get()
    if opened is not None:
        opened(conn)
    return conn


def _retry(first: psycopg.OperationalError, attempt: Callable[[], Connection], timeout: float,
           before_sleep: Callable[[RetryCallState], None]) -> Connection:
    """The attempts after a first one that failed for a reason waiting can cure, until
    `timeout` seconds from now. tenacity is imported only here: a start whose first
    attempt connects, as nearly every one does, does not pay for it (~5 ms). The first
    failure is replayed as tenacity's attempt 1, so attempt numbers, backoff and
    deadline are those of one retry loop around every attempt."""
    from tenacity import Retrying, retry_if_exception, stop_after_delay

    replay = [first]

    def again() -> Connection:
        if replay:
            raise replay.pop()
        return attempt()

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=_wait_within(timeout),
        retry=retry_if_exception(lambda e: transient_reason(e) is not None),
        before_sleep=before_sleep,
        sleep=time.sleep,
        reraise=True,
    )
    conn: Connection = retrying(again)
    return conn


def _set_session(conn: Connection) -> None:
    """Server-side keepalives and, on 14+, a periodic check for a vanished client, so a
    killed runner's statement is cancelled and its lock freed within seconds."""
    sql = ("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
           "SET tcp_keepalives_count = 3")
    if conn.info.server_version >= 140000:
        sql += "; SET client_connection_check_interval = '2s'"
    conn.execute(sql)


def server_version(conn: Connection) -> str:
    return conn.info.parameter_status("server_version") or str(conn.info.server_version)


def backend_pid(conn: Connection) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def set_parameters(conn: Connection, parameters: dict[str, str]) -> None:
    """Set `parameters` (name: value) for the rest of the session, as startup parameters
    would: at session level, so RESET ALL in the migrations' session reset sets them again
    (runner.applying.apply reads what the session SET)."""
    if parameters:
        calls = ", ".join(["pg_catalog.set_config(%s, %s, false)"] * len(parameters))
        conn.execute(f"SELECT {calls}", [x for pair in parameters.items() for x in pair])
