"""Connecting to PostgreSQL and waiting for it to come up (SPEC §3)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psycopg

from runner.errors import ConfigError, UnreachableError
from runner.output import log
from runner.session import connect_failure, deadline, environment, silence
from runner.session import conninfo as cinfo
from runner.settings import Settings

if TYPE_CHECKING:
    from tenacity import RetryCallState

Connection = psycopg.Connection[tuple[Any, ...]]
APPLICATION_NAME = "migration-runner"
# libpq keepalives on our end; the same numbers for the server's end: a dead peer is
# noticed within idle + interval * count = 25 s, inside the 60 s the SPEC allows (§10.2).
# Keepalives only probe an idle socket: while sent data waits for its acknowledgement
# (a query sent into a network that drops packets) the kernel retransmits for ~15
# minutes instead. `tcp_user_timeout` (ms, Linux; ignored elsewhere) ends that wait too,
# and caps the keepalives' own verdict at the same 30 s (tcp(7), TCP_USER_TIMEOUT).
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
             "keepalives_count": 3, "tcp_user_timeout": 30_000}
# Told of every connection opened in this context (fleet mode: to cancel a target's
# statements on SIGTERM from the thread that received it).
OPENED: ContextVar[Callable[[psycopg.Connection[Any]], None] | None] = ContextVar(
    "opened", default=None)

TOO_MANY_CONNECTIONS = "53300"
# What the server refused of the startup parameters, so that the run's next connection
# does not ask again (runner.session.environment).
_refused: dict[str, bool] = {}


def transient_reason(exc: BaseException) -> str | None:
    if isinstance(exc, environment.Standby):  # a failover makes it a primary (SPEC §10.3)
        return "standby"
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


def connect(settings: Settings, purpose: str, look: str | None = None,
            primary: bool = False, wait_for_a_slot: bool = True,
            watched: bool = True) -> Connection:
    """One connection, retried on transient errors until MIGRATE_WAIT_TIMEOUT (seconds),
    with the runner's own session settings (runner.session.environment). `look`: on the
    run's first connection, the level (info, debug) of the `session_settings` it logs
    when a role or database setting differs from the runner's; `primary`: for a command
    that writes, a standby or a read-only session is waited out like a server that is not
    up yet (SPEC §10.3); `wait_for_a_slot` False: a connection limit reached (53300) is
    not waited for; `watched` False: not by runner.session.silence (its own asking
    connection).

    Raises ConfigError (exit 2) for a connection string that cannot be right and when
    nothing at all is configured and libpq's defaults fail; UnreachableError (exit 3)
    when the server refused for good, did not answer in time, or stayed a standby."""
    logger = log.get()
    conninfo = settings.conninfo()
    params = cinfo.parse(conninfo, cinfo.source_name(settings.database_url_file))
    target = cinfo.target(params)
    # Nothing configured: libpq's defaults (the local socket, as the OS user) get one try,
    # as psql would give them; waiting cannot make a setting appear.
    configured = cinfo.configured(conninfo)
    wait_timeout = settings.wait_timeout if configured else 0.0
    own = environment.user_options(params, os.environ)
    kwargs: dict[str, Any] = {**KEEPALIVE, "application_name": APPLICATION_NAME,
                              "autocommit": True,
                              **environment.startup(own, "before_14" in _refused)}
    if "options" in _refused:
        kwargs["options"] = ""
    looked: list[environment.Look] = []
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
        try:
            conn: Connection = connect_failure.VerboseConnection.connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            if environment.refused_as_too_new(exc):
                _refused["before_14"] = True
                kwargs.update(environment.startup(own, before_14=True))
            elif environment.refused_options(exc) and kwargs["options"]:
                _refused["options"] = True
                kwargs["options"] = ""  # libpq then sends none; SET after connecting
            else:
                raise
            conn = connect_failure.VerboseConnection.connect(conninfo, **kwargs)
        # Before its first query: none of them may wait for a lost answer (SPEC §10.2).
        deadline.track(conn)
        if watched:
            silence.watch(conn, conninfo, ask)
        if not kwargs["options"]:
            conn.execute(environment.sets(conn.info.server_version))
        if look:
            try:
                found = environment.look(conn, settings)
                if primary and found.read_only:
                    raise environment.Standby(found.read_only)
            except BaseException:
                conn.close()
                raise
            looked[:] = [found]
        return conn

    def ask() -> Connection:
        """A connection on which silence asks the server about this one: one attempt,
        bounded like the question."""
        return connect(replace(settings, wait_timeout=0.0, connect_timeout=silence.ASK_S),
                       "silence", watched=False)

    def retryable(exc: BaseException) -> bool:
        return transient_reason(exc) is not None and (
            wait_for_a_slot or connect_failure.classify(exc)[0] != TOO_MANY_CONNECTIONS)

    started = time.monotonic()
    try:
        try:
            conn = attempt()
        except (psycopg.OperationalError, environment.Standby) as exc:
            if not retryable(exc):
                raise
            left = wait_timeout - (time.monotonic() - started)
            conn = _retry(exc, attempt, retryable, left, before_sleep)
    except environment.Standby as exc:
        raise UnreachableError(
            f"database {target} is {exc.what}: this command writes and needs a primary, "
            f"and none came within {wait_timeout:g}s (MIGRATE_WAIT_TIMEOUT); point "
            "DATABASE_URL at the primary (the cluster's writer endpoint), or wait for the "
            "failover to end", target=target, reason="standby") from None
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
    if looked and looked[0].differing:
        getattr(logger, look or "info")(
            "session_settings", settings=looked[0].differing,
            message="role or database settings the runner's sessions override")
    opened = OPENED.get()
    if opened is not None:
        opened(conn)
    return conn


def _retry(first: BaseException, attempt: Callable[[], Connection],
           retryable: Callable[[BaseException], bool], timeout: float,
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
        retry=retry_if_exception(retryable),
        before_sleep=before_sleep,
        sleep=time.sleep,
        reraise=True,
    )
    conn: Connection = retrying(again)
    return conn


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
