"""A fault-injecting HTTP proxy in front of the S3 server, on loopback, seeded.

The product's own clients talk to it as to any S3 endpoint (`--s3_endpoint_url`);
it forwards each request to the real server, except that a seeded share of them
meets a fault instead:

    500          an InternalError answer; the request never reaches the server
    503          a SlowDown answer (throttling); never reaches the server
    409          a ConditionalRequestConflict answer, as S3 gives a conditional write
                 that races another writer to the same key (writes only; a read
                 drawing it gets a 500)
    reset_before the connection is reset before the request is forwarded
    reset_after  the request is forwarded (the server did the write), then the
                 connection is reset before any answer
    slow         the answer comes `slow_s` late

It counts what it did, so a test can report faults injected and writes retried, and
the most requests of a kind it handled at once.
"""

from __future__ import annotations

import http.client
import http.server
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from typing import Callable

FAULTS = ("500", "503", "409", "reset_before", "reset_after", "slow")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    "<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
)


class FaultProxy:
    """`with FaultProxy(upstream, rate, seed) as proxy:` → `proxy.endpoint`."""

    def __init__(
        self,
        upstream: str,
        fault_rate: float = 0.2,
        seed: int = 1,
        faults: tuple[str, ...] = FAULTS,
        slow_s: float = 0.2,
        fault_first: Callable[[str, str], bool] | None = None,
        fault_always: Callable[[str, str], bool] | None = None,
    ):
        """`fault_first(method, path)`: requests for which the first attempt always
        meets a fault (so that a rare kind of call is surely tested);
        `fault_always(method, path with query)`: requests that always do."""
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.fault_rate = fault_rate
        self.faults = faults
        self.slow_s = slow_s
        self.fault_first = fault_first
        self.fault_always = fault_always
        self.injected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()  # by method
        self.attempts: Counter[tuple[str, str]] = Counter()  # (method, path)
        self.first_seen: dict[tuple[str, str], float] = {}
        self.last_seen: dict[tuple[str, str], float] = {}
        self.in_flight: Counter[str] = Counter()  # requests being handled, by method
        self.most_in_flight: Counter[str] = Counter()  # the most at once, by method
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # resets are on purpose
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def longest_retry_s(self) -> float:
        """The longest time between the first and last attempt at one request."""
        return max((self.last_seen[k] - self.first_seen[k] for k, n in self.attempts.items()
                    if n > 1), default=0.0)

    def retried_writes(self) -> int:
        """PUT and POST requests sent more than once."""
        return sum(1 for (method, _), n in self.attempts.items()
                   if n > 1 and method in ("PUT", "POST"))

    def _decide(self, method: str, target: str) -> str | None:
        path = urllib.parse.urlsplit(target).path
        with self._lock:
            key = (method, path)
            now = time.monotonic()
            self.requests[method] += 1
            self.attempts[key] += 1
            self.first_seen.setdefault(key, now)
            self.last_seen[key] = now
            forced = (self.attempts[key] == 1 and self.fault_first and self.fault_first(*key)
                      or self.fault_always and self.fault_always(method, target))
            if forced or self._rng.random() < self.fault_rate:
                fault = self._rng.choice(self.faults)
                if fault == "409" and method not in ("PUT", "POST"):
                    fault = "500"
                self.injected[fault] += 1
                return fault
            return None

    def _handler_class(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline().strip():
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()

            def _error(self, status: int, code: str, message: str) -> None:
                body = _ERROR_BODY.format(code=code, message=message).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self, body: bytes):
                upstream = getattr(self, "_upstream", None)  # one per client connection
                if upstream is None:
                    upstream = self._upstream = http.client.HTTPConnection(
                        *proxy.upstream, timeout=60
                    )
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_HEADERS and k.lower() != "content-length"}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                return response, response.read()

            def _handle(self) -> None:
                with proxy._lock:
                    proxy.in_flight[self.command] += 1
                    proxy.most_in_flight[self.command] = max(
                        proxy.most_in_flight[self.command], proxy.in_flight[self.command])
                try:
                    self._handled()
                finally:
                    with proxy._lock:
                        proxy.in_flight[self.command] -= 1

            def _handled(self) -> None:
                body = self._body()
                fault = proxy._decide(self.command, self.path)
                if fault == "500":
                    return self._error(500, "InternalError", "injected fault")
                if fault == "409":
                    return self._error(409, "ConditionalRequestConflict",
                                       "A conflicting operation occurred.")
                if fault == "503":
                    return self._error(503, "SlowDown", "Please reduce your request rate.")
                if fault == "reset_before":
                    return self._reset()
                if fault == "slow":
                    time.sleep(proxy.slow_s)
                response, data = self._forward(body)
                if fault == "reset_after":
                    return self._reset()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
                        self.send_header(name, value)
                length = response.getheader("Content-Length")
                if self.command == "HEAD" and length is not None:
                    self.send_header("Content-Length", length)
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:
                    pass  # the connection was reset on purpose

        return Handler


class SilentEndpoint:
    """Accepts TCP connections and never answers: an S3 endpoint that hangs."""

    def __init__(self):
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self._accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._accepted.append(connection)

    def __enter__(self) -> SilentEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._socket.close()
        for connection in self._accepted:
            connection.close()
