"""Misbehaving HTTP servers on real loopback sockets, for the delivery tests.

Each connection is served by its own thread with a handler that reads the request
itself and then does whatever the test needs: answer late, drip, stall after the
headers, reset, or send a body that never ends. Every request body received is
recorded, so a test can tell whether an event reached a server (and how often).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from typing import Callable

OK = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


def read_request(conn: socket.socket) -> bytes | None:
    """One request's body, or None when the client closed the connection first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return body


class Server:
    """A TCP server on 127.0.0.1; `handler(server, conn)` serves each connection in a thread."""

    def __init__(self, handler: Callable[[Server, socket.socket], None], tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.bodies: list[bytes] = []
        self.active = self.most_active = 0
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)  # a client that refuses the certificate ends here
            self.handler(self, conn)
        except OSError:
            pass
        finally:
            conn.close()

    def received(self, body: bytes) -> None:
        with self.lock:
            self.bodies.append(body)

    def take_request(self, conn: socket.socket) -> bool:
        """Read one request and record its body; False when the client closed first."""
        body = read_request(conn)
        if body is not None:
            self.received(body)
        return body is not None

    def close(self) -> None:
        self.stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        self.sock.close()


def delaying(delay: float) -> Callable[[Server, socket.socket], None]:
    """Answers 201 to each request `delay` seconds after reading it; keep-alive."""

    def handle(server: Server, conn: socket.socket) -> None:
        while not server.stop.is_set():
            body = read_request(conn)
            if body is None:
                return
            with server.lock:
                server.active += 1
                server.most_active = max(server.most_active, server.active)
            time.sleep(delay)
            with server.lock:
                server.active -= 1
            server.received(body)
            conn.sendall(OK)

    return handle


def dripping(server: Server, conn: socket.socket) -> None:
    """Reads the request, then sends a valid answer one byte every 0.2 s, never finishing."""
    if not server.take_request(conn):
        return
    head = b"HTTP/1.1 201 Created\r\nContent-Length: 100000\r\nX-Pad: " + b"x" * 100000
    for byte in head:
        if server.stop.wait(0.2):
            return
        conn.sendall(bytes([byte]))


def endless(server: Server, conn: socket.socket) -> None:
    """Answers 200 with a body that never ends, as fast as the client takes it."""
    if not server.take_request(conn):
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
    chunk = b"x" * 65536
    while not server.stop.is_set():
        conn.sendall(chunk)
        server.bytes_sent += len(chunk)


def headers_then_stall(server: Server, conn: socket.socket) -> None:
    """Reads the request, sends the status line and headers, then never sends the body."""
    if not server.take_request(conn):
        return
    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n")
    server.stop.wait(30)


def reset_after_request(server: Server, conn: socket.socket) -> None:
    """Reads the request (the server has the event), then resets the connection."""
    if not server.take_request(conn):
        return
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def unreachable_url() -> tuple[str, socket.socket, list[socket.socket]]:
    """A loopback URL whose connects time out: a listener with a full backlog drops SYNs.

    Returns the URL plus the sockets to close afterwards.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(8):  # fill the accept queue; later SYNs are dropped by the kernel
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(address)
        except BlockingIOError:
            pass
        fillers.append(filler)
    time.sleep(0.2)
    return f"http://127.0.0.1:{address[1]}", listener, fillers
