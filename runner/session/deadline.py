"""Ending a wait on a connection whose peer no longer answers (SPEC §10.2).

psycopg waits for a server's answer without a deadline, and a wait in another thread (the
watch's query on the lock connection, the main thread's migration while a signal's
cleanup runs) cannot be interrupted from outside. A proxy or NAT that holds the socket
open but stops forwarding is not a dead peer to TCP: its kernel acknowledges the data
and the keepalive probes, so neither libpq's keepalives nor `tcp_user_timeout` end that
wait. What ends it is shutting the socket down (shutdown(2), SHUT_RDWR): the blocked
poll returns at once, libpq reads end-of-file and psycopg raises OperationalError with
the connection marked broken, in whichever thread waited.

The socket is reached through a `Handle` taken when the connection opens, in the thread
that owns it: the file descriptor and the socket's two addresses. Severing checks that
the descriptor still names that socket (libpq may have closed it, and the number may
belong to a newer connection by then) and touches nothing of libpq, so any thread may
sever any connection.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg

Connection = psycopg.Connection[tuple[Any, ...]]


def _addresses(sock: socket.socket) -> tuple[Any, Any]:
    return sock.getsockname(), sock.getpeername()


class Handle:
    """A connection's socket, as it was when taken."""

    def __init__(self, conn: Connection) -> None:
        self.fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(self.fd)) as sock:
            self.addresses = _addresses(sock)
        self.severed = False

    def sever(self) -> bool:
        """Shut the socket down; False when it is no longer the one taken (closed)."""
        try:
            with socket.socket(fileno=os.dup(self.fd)) as sock:
                if _addresses(sock) != self.addresses:
                    return False
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed, or not connected any more
            return False
        self.severed = True
        return True


_HANDLES: weakref.WeakKeyDictionary[Connection, Handle] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def track(conn: Connection) -> Handle:
    """Take `conn`'s handle (in the thread that owns it), for `sever_all` and `within`."""
    handle = Handle(conn)
    with _GUARD:
        _HANDLES[conn] = handle
    return handle


def handle(conn: Connection) -> Handle:
    with _GUARD:
        found = _HANDLES.get(conn)
    return found if found is not None else track(conn)


def sever_all() -> None:
    """Sever every connection of this process still open: after SIGTERM, no wait on a
    stalled socket outlives the grace period (SPEC §10.2)."""
    with _GUARD:
        handles = [h for conn, h in _HANDLES.items() if not conn.closed]
    for h in handles:
        h.sever()


@contextlib.contextmanager
def within(conn: Connection, seconds: float) -> Iterator[Handle]:
    """Sever `conn` if the block has not finished within `seconds`: a query that must
    answer quickly (the watch's, bounded by its statement_timeout on the server) then
    raises OperationalError instead of waiting for a peer that stopped answering."""
    h = handle(conn)
    timer = threading.Timer(seconds, h.sever)
    timer.daemon = True
    timer.start()
    try:
        yield h
    finally:
        timer.cancel()
