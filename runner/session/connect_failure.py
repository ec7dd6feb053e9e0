"""Why a connection attempt failed, by the SQLSTATE the server sent, not by its words.

A server refusing a connection sends an ErrorResponse with a SQLSTATE, in its own
`lc_messages` language; psycopg gives a failed connection no `sqlstate`, only libpq's
text. libpq writes the SQLSTATE into that text when the connection's error verbosity is
VERBOSE ("FATAL:  57P03: ...", fe-protocol3.c pqBuildErrorMessage3), and it applies to
the startup ErrorResponse as to any other. psycopg does not wrap PQsetErrorVerbosity,
so `VerboseConnection` sets it through the documented `PGconn.pgconn_ptr`, on the libpq
psycopg itself loaded, between PQconnectStart and the first PQconnectPoll that reads
the server's answer.

Only failures that carry no SQLSTATE (nothing listening, a name not resolved, a timeout,
a Unix socket not there yet) are told apart by libpq's client-side text, which is
written in this process's locale: C, as Python never sets LC_MESSAGES.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn
from psycopg.pq.misc import find_libpq_full_path
from psycopg.waiting import Ready, Wait

PQERRORS_DEFAULT, PQERRORS_VERBOSE = 1, 2  # libpq-fe.h, PGVerbosity
# Retried (SPEC §3): the server is not there yet, is starting or stopping, or is full.
TRANSIENT_SQLSTATES = {"57P03": "starting_up", "57P01": "shutting_down",
                       "53300": "too_many_connections"}
# "<severity>:  <SQLSTATE>: " — the severity is translated, the two spaces and the code
# are not (pqBuildErrorMessage3).
_SQLSTATE = re.compile(r":  ([0-9A-Z]{5}): ")
_LOCATION = re.compile(r"^\s*[^\s:]+:  \S+, \S+:\d+$")  # VERBOSE's "LOCATION:  func, file:line"
# Client-side failures, no SQLSTATE: (phrase of libpq's or psycopg's C-locale text, reason).
_NO_SQLSTATE = [
    ("connection refused", "connection_refused"),
    ("could not translate host name", "name_not_resolved"),
    ("failed to resolve host", "name_not_resolved"),
    ("name or service not known", "name_not_resolved"),
    ("temporary failure in name resolution", "name_not_resolved"),
    ("timeout expired", "timeout"),
    ("timed out", "timeout"),
    ("connection reset", "connection_reset"),
    ("server closed the connection unexpectedly", "connection_reset"),
    ("no such file or directory", "socket_missing"),  # Unix socket not there yet
]


# What the server's final refusal means, said so that it cannot read as a TCP refusal
# (PostgreSQL's errcodes.txt; the server sends 28P01 for a wrong password and for an
# unknown user alike, on purpose).
_REFUSALS = {
    "28P01": "rejected the login: wrong password, or no such user (an expired token or a "
             "rotated Secret reads the same)",
    "28000": "rejected the login: no pg_hba.conf entry allows this user, database, address "
             "and TLS setting, or the role may not log in",
    "3D000": "has no such database",
    "42501": "refused the login for lack of a privilege (CONNECT on the database)",
}
# libpq's client-side TLS failures (fe-secure-openssl.c), in the C locale: no SQLSTATE.
_TLS = ("certificate", "ssl", "tls", "root certificate file")


def refusal(sqlstate: str | None, message: str) -> str:
    """What went wrong, after "database <target> ", for a failure retrying cannot mend:
    the server's refusal by its SQLSTATE, a TLS verification failure by libpq's words,
    else "refused the connection"."""
    if sqlstate in _REFUSALS:
        return _REFUSALS[sqlstate]
    if sqlstate is None and any(word in message.lower() for word in _TLS):
        return ("failed TLS verification (sslmode, sslrootcert / PGSSLROOTCERT, and the "
                "host name the server's certificate names)")
    return "refused the connection"


def _libpq_candidates() -> Iterator[str | None]:
    """Where psycopg's libpq may be, surest first. Generated one by one: the last,
    ctypes' search, runs `ldconfig -p` (~5 ms), and the first finds it on Linux."""
    try:  # Linux: the mapped files of this process name it exactly
        with open("/proc/self/maps") as maps:
            mapped = sorted({line.split()[-1] for line in maps if "/libpq" in line})
    except OSError:
        mapped = []
    yield from mapped
    if pq.__impl__ == "binary":
        import psycopg_binary

        libs = Path(psycopg_binary.__file__).parent.parent / "psycopg_binary.libs"
        yield from (str(p) for p in sorted(libs.glob("libpq-*.so*")))
    yield find_libpq_full_path()


def _loaded_libpq() -> Any:
    """The libpq psycopg uses, only if already loaded (RTLD_NOLOAD): a PGconn must never
    reach another copy of the library."""
    for path in _libpq_candidates():
        if path:
            try:
                lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
            except OSError:
                continue
            lib.PQsetErrorVerbosity.argtypes = [ctypes.c_void_p, ctypes.c_int]
            return lib
    return None


_LIBPQ = _loaded_libpq()


def _set_verbosity(conn: PGconn, verbosity: int) -> None:
    pointer = getattr(conn, "pgconn_ptr", None)  # documented on PGconn, not on its ABC
    if _LIBPQ is not None and pointer is not None:
        _LIBPQ.PQsetErrorVerbosity(pointer, verbosity)


def _connect_verbose(conninfo: str, timeout: float = 0.0
                     ) -> Generator[tuple[int, Wait], Ready | int, PGconn]:
    """psycopg's connection generator (psycopg/generators.py `_connect`), with VERBOSE
    errors while connecting; back to DEFAULT once connected, so SQL errors read as
    before. `timeout` (seconds): psycopg 3.2 hands the attempt's timeout to the
    generator, 3.3 enforces it in its own wait and passes none."""
    deadline = time.monotonic() + timeout if timeout else 0.0
    conn = pq.PGconn.connect_start(conninfo.encode())
    _set_verbosity(conn, PQERRORS_VERBOSE)
    while True:
        if conn.status == pq.ConnStatus.BAD:
            message = conn.get_error_message()
            conn.finish()
            raise psycopg.OperationalError(f"connection is bad: {message}")
        status = conn.connect_poll()
        if status == pq.PollingStatus.OK:
            _set_verbosity(conn, PQERRORS_DEFAULT)
            return conn
        if status in (pq.PollingStatus.READING, pq.PollingStatus.WRITING):
            wait = Wait.R if status == pq.PollingStatus.READING else Wait.W
            while not (yield conn.socket, wait):
                if deadline and time.monotonic() > deadline:
                    conn.finish()
                    raise psycopg.errors.ConnectionTimeout("connection timeout expired")
        else:
            message = conn.get_error_message()
            conn.finish()
            raise psycopg.OperationalError(f"connection failed: {message}")


class VerboseConnection(psycopg.Connection[tuple[Any, ...]]):
    """A psycopg connection whose failed attempts name the server's SQLSTATE."""

    @classmethod
    def _connect_gen(cls, conninfo: str = "", *, timeout: float = 0.0) -> Any:
        # psycopg's hook for one attempt (psycopg/_connection_base.py, 3.2 and 3.3)
        pgconn = yield from _connect_verbose(conninfo, timeout)
        return cls(pgconn)


def sqlstates(exc: BaseException) -> list[str]:
    """The SQLSTATEs the server(s) sent, in the order of the attempts."""
    if getattr(exc, "sqlstate", None):
        return [str(exc.sqlstate)]  # type: ignore[attr-defined]
    return _SQLSTATE.findall(str(exc))


def classify(exc: BaseException) -> tuple[str | None, str | None]:
    """(SQLSTATE the server sent or None, reason to retry or None when retrying cannot
    help). A refusal the server made for good (28P01, 28000, 3D000, ...) on any attempt
    wins over a transient one on another host."""
    if not isinstance(exc, psycopg.OperationalError):
        return None, None
    states = sqlstates(exc)
    if states:
        final = [s for s in states if s not in TRANSIENT_SQLSTATES]
        state = final[0] if final else states[-1]
        return state, TRANSIENT_SQLSTATES.get(state)
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return None, "timeout"
    text = str(exc).lower()
    for phrase, reason in _NO_SQLSTATE:
        if phrase in text:
            return None, reason
    return None, None


def message(exc: BaseException) -> str:
    """libpq's text on one line: every line kept (the main one, "connection refused",
    and its hint) but VERBOSE's LOCATION lines; the SQLSTATE is a field of its own."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not _LOCATION.match(line)]
    text = " ".join(kept) or exc.__class__.__name__
    return _SQLSTATE.sub(":  ", text).replace(":  ", ": ")
