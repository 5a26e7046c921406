"""Progress of a run on this machine: workers tell the launcher what they have done.

The launcher (`pipeline.progress.ProgressReporter`) listens on a loopback UDP
port named in the environment, which the worker processes of a runner of this
machine inherit (and in-process DoFns share; `RunnerProfile.reports_progress`).
Workers add what they did (input bytes read, records, events forwarded, files
written) and send the sums
at most once a second and at the end of each bundle. On a cluster the variable
is not set and reporting does nothing: the runner's own UI shows progress there.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter

ADDRESS_ENV = "MPARTICLE_S3_PROGRESS"
SEND_EVERY_S = 1.0
KINDS = ("bytes", "records", "events", "files")


class _Sender:
    def __init__(self, address: str):
        host, port = address.rsplit(":", 1)
        self._address = (host, int(port))
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._pending: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._last_sent = time.monotonic()

    def add(self, counts: dict[str, int]) -> None:
        with self._lock:
            self._pending.update(counts)
            if time.monotonic() - self._last_sent < SEND_EVERY_S:
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            message = " ".join(str(self._pending[kind]) for kind in KINDS)
            self._pending.clear()
            self._last_sent = time.monotonic()
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError:
            pass  # progress is a courtesy; it never fails a run


_senders: dict[str, _Sender] = {}


def _sender() -> _Sender | None:
    address = os.environ.get(ADDRESS_ENV)
    if not address:
        return None
    if address not in _senders:
        _senders[address] = _Sender(address)
    return _senders[address]


def report(**counts: int) -> None:
    """Adds to this process's progress: bytes=, records=, events=, files=."""
    sender = _sender()
    if sender is not None:
        sender.add(counts)


def flush() -> None:
    """Sends what this process has not sent yet (at the end of a bundle)."""
    sender = _sender()
    if sender is not None:
        sender.flush()


def parse(message: bytes) -> dict[str, int]:
    """One datagram → the counts it adds."""
    return dict(zip(KINDS, (int(value) for value in message.split()), strict=True))
