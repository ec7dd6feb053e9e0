"""Connecting to PostgreSQL and waiting for it to come up (SPEC §3)."""

from __future__ import annotations

import math
import time
from typing import Any

import psycopg
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from runner import conninfo as cinfo
from runner import log
from runner.errors import UnreachableError
from runner.settings import Settings

Connection = psycopg.Connection[tuple[Any, ...]]
APPLICATION_NAME = "migration-runner"
# libpq keepalives on our end; the same numbers for the server's end: a dead peer is
# noticed within idle + interval * count = 25 s, inside the 60 s the SPEC allows.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
             "keepalives_count": 3}
# Transient: the server is not there yet, is starting or stopping, or is full.
_TRANSIENT_SQLSTATES = {"57P03": "starting_up", "53300": "too_many_connections",
                        "57P01": "shutting_down", "08006": "connection_failure"}
# libpq reports a failed connection as text only: (phrase, sqlstate the server sent or
# None, reason when worth retrying or None when it never will succeed).
_CONNECT_FAILURES = [
    ("password authentication failed", "28P01", None),
    ("no password supplied", "28P01", None),
    ("no pg_hba.conf entry", "28000", None),
    ("role \"", "28000", None),  # role "x" does not exist
    ("database \"", "3D000", None),  # database "x" does not exist
    ("the database system is starting up", "57P03", "starting_up"),
    ("the database system is shutting down", "57P01", "shutting_down"),
    ("the database system is in recovery mode", "57P03", "starting_up"),
    ("too many clients", "53300", "too_many_connections"),
    ("connection refused", None, "connection_refused"),
    ("could not translate host name", None, "name_not_resolved"),
    ("failed to resolve host", None, "name_not_resolved"),
    ("name or service not known", None, "name_not_resolved"),
    ("temporary failure in name resolution", None, "name_not_resolved"),
    ("timeout expired", None, "timeout"),
    ("timed out", None, "timeout"),
    ("connection reset", None, "connection_reset"),
    ("server closed the connection unexpectedly", None, "connection_reset"),
    ("no such file or directory", None, "socket_missing"),  # unix socket not there yet
]


def classify(exc: BaseException) -> tuple[str | None, str | None]:
    """(sqlstate, reason to retry or None when retrying cannot help)."""
    if not isinstance(exc, psycopg.OperationalError):
        return None, None
    if exc.sqlstate is not None:
        return exc.sqlstate, _TRANSIENT_SQLSTATES.get(exc.sqlstate)
    text = str(exc).lower()
    for phrase, state, reason in _CONNECT_FAILURES:
        if phrase in text:
            return state, reason
    return None, None


def transient_reason(exc: BaseException) -> str | None:
    return classify(exc)[1]


def connect(settings: Settings, purpose: str) -> Connection:
    """One connection, retried on transient errors until MIGRATE_WAIT_TIMEOUT."""
    logger = log.get()
    conninfo = settings.conninfo()
    params = cinfo.parse(conninfo, cinfo.source_name(settings.database_url_file))
    target = cinfo.target(params)
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

    stop = (stop_after_attempt(1) if settings.wait_timeout == 0
            else stop_before_delay(settings.wait_timeout))
    retrying = Retrying(
        stop=stop,
        wait=wait_exponential_jitter(initial=0.2, max=5, jitter=0.3),
        retry=retry_if_exception(lambda e: transient_reason(e) is not None),
        before_sleep=before_sleep,
        sleep=time.sleep,
        reraise=True,
    )
    try:
        conn: Connection = retrying(psycopg.connect, conninfo, **kwargs)
    except psycopg.OperationalError as exc:
        text = str(exc).strip()
        message = cinfo.scrub(text.splitlines()[-1] if text else exc.__class__.__name__)
        sqlstate, reason = classify(exc)
        if reason:
            raise UnreachableError(
                f"database {target} not reachable within {settings.wait_timeout:g}s: {message}",
                sqlstate=sqlstate, target=target) from None
        raise UnreachableError(f"database {target} refused the connection: {message}",
                               sqlstate=sqlstate, target=target) from None
    _set_session(conn)
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
