"""A connection-cutting TCP proxy on loopback, seeded, for gRPC services (Pub/Sub).

The product's Pub/Sub clients reach the local server (pstest) through it as through
any endpoint (`PUBSUB_EMULATOR_HOST`). gRPC multiplexes every call of a client on
one HTTP/2 connection, so faults are injected where they happen in production, on
connections:

    cut      a connection is reset (RST, both ways) a seeded 0.1 to `max_life_s`
             seconds after it opens, failing every call in flight on it: pulls,
             acknowledgements and lease extensions alike
    refused  a share (`refuse_rate`) of new connections is reset at once

It counts what it did, so a test can report the faults injected.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections import Counter


class ConnectionCutter:
    """`with ConnectionCutter("127.0.0.1:port", seed=1) as proxy:` → `proxy.endpoint`."""

    def __init__(self, upstream: str, max_life_s: float = 2.0, refuse_rate: float = 0.2,
                 seed: int = 1):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.max_life_s = max_life_s
        self.refuse_rate = refuse_rate
        self.counts: Counter = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self._open: list[tuple[socket.socket, socket.socket]] = []

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> ConnectionCutter:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self._listener.close()

    def cut_all(self) -> None:
        """Resets every open connection now."""
        with self._lock:
            open_now, self._open = self._open, []
        for client, server in open_now:
            self._cut(client, server)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self._random.random() < self.refuse_rate
                life_s = self._random.uniform(0.1, self.max_life_s)
            if refused:
                self.counts["refused"] += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _reset(client)
                continue
            self.counts["connections"] += 1
            with self._lock:
                self._open.append((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()
            timer = threading.Timer(life_s, self._cut, args=(client, server))
            timer.daemon = True
            timer.start()

    def _cut(self, client: socket.socket, server: socket.socket) -> None:
        if client.fileno() == -1:
            return  # already cut
        self.counts["cut"] += 1
        _reset(client)
        _reset(server)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for sock in (source, sink):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _reset(sock: socket.socket) -> None:
    """Closes with an RST, as a dropped connection or a killed peer does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
