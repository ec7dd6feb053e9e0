"""A TCP forwarder that can stop forwarding, the way a proxy or NAT that lost its state
does (SPEC §10.2): for the tests of a stalled network."""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    """A TCP forwarder on 127.0.0.1. `stall()` makes every connection open at that moment
    hold its sockets and forward nothing more, not even a close, the way a proxy or NAT
    that lost its state does; connections opened afterwards are forwarded as usual."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            stalled = threading.Event()
            with self._lock:
                self._open.append((client, upstream, stalled))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, stalled),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, stalled: threading.Event) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if stalled.is_set():  # hold both sockets, forward nothing
                self._closed.wait()
                return
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def stall(self, which: slice = slice(None)) -> None:
        """`which` of the connections, in the order opened: a runner opens its lock
        connection first, its work connection second."""
        with self._lock:
            for _, _, stalled in self._open[which]:
                stalled.set()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        with self._lock:
            for pair in self._open:
                for sock in pair[:2]:
                    # shutdown first: close() alone leaves a socket that another thread
                    # is blocked on open, and the server would never see it end.
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()


LOCK, WORK = slice(0, 1), slice(1, 2)
