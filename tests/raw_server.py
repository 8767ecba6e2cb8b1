"""A raw TCP server for HTTP edge cases no well-behaved framework will produce on demand.

Each accepted connection runs ``handler(conn, index)`` in its own thread, where ``index``
counts connections from 0; the handler reads requests with ``read_request`` and writes whatever
bytes the test needs. ``stop()`` closes the listening socket and joins every thread.
``backlog`` and ``accept_after`` let a test fill the accept queue, so that a client's connect
waits for the kernel's SYN retransmit.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

Handler = Callable[[socket.socket, int], None]


def read_request(conn: socket.socket) -> bytes | None:
    """One request head (up to the blank line), or None when the client closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


class RawServer:
    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        *,
        backlog: int = 64,
        accept_after: float = 0.0,
    ) -> None:
        self._handler = handler
        self._tls = tls
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(backlog)
        self._accept_after = accept_after
        self._sock.settimeout(0.2)
        scheme = "https" if tls is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self._sock.getsockname()[1]}"
        self.connections = 0
        self.requests: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        self._stopping.wait(self._accept_after)
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            index = self.connections
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(10)
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)  # handshake failures: OSError
            with conn:
                self._handler(conn, index)
        except OSError:
            conn.close()

    def recorded(self, conn: socket.socket) -> bytes | None:
        """``read_request`` that also keeps the request head for the test to inspect."""
        head = read_request(conn)
        if head is not None:
            self.requests.append(head)
        return head

    def stop(self) -> None:
        self._stopping.set()
        self._sock.close()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gated(gate: threading.Event, size: int, first: int) -> Handler:
    """A handler that answers one request with a ``size``-byte body: ``first`` bytes at once,
    the rest only once ``gate`` is set (a download caught half done)."""

    def handler(conn: socket.socket, index: int) -> None:
        if read_request(conn) is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * first)
        gate.wait(30)
        conn.sendall(b"y" * (size - first))

    return handler
