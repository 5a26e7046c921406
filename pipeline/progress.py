"""Progress lines of a bounded run on this machine, every `--progress_every_s`.

    progress: 212.4 of 518.3 MiB read (41%), 102,000 records, 260,512 events forwarded
    in 180 files, 5.2 MiB/s, 25,104 events/s, about 59 s left to read

and a live run's status, as often (`LiveStatus`, from the runner's metrics):

    live: 1,204 messages/s pulled, 260,512 events forwarded in 180 files, 3 dead
    letters, 0 late batches, oldest message unacknowledged for 2.1 s

Workers report through `transforms.io.progress` (a loopback UDP port named in the
environment). The time left is that of reading the input at the rate so far;
grouping and writing follow it. On a terminal the line is rewritten in place;
otherwise (a log, CI) each report is a line of its own.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections import Counter
from typing import IO, Callable, Mapping

from pipeline.logs import json_logs, say
from transforms import metrics
from transforms.io import progress

MIB = 1024 * 1024


def progress_line(done: Counter, total_bytes: int, elapsed_s: float) -> str:
    """One report: bytes read of the total, records, events, rate, time left."""
    read = done["bytes"]
    share = f" ({read / total_bytes:.0%})" if total_bytes else ""
    line = (f"progress: {read / MIB:,.1f} of {total_bytes / MIB:,.1f} MiB read{share}, "
            f"{done['records']:,} records, {done['events']:,} events forwarded in "
            f"{done['files']:,} files")
    rate = read / elapsed_s if elapsed_s > 0 else 0
    if rate > 0:
        line += f", {rate / MIB:,.1f} MiB/s, {done['events'] / elapsed_s:,.0f} events/s"
        left = max(total_bytes - read, 0) / rate
        line += f", about {left:,.0f} s left to read" if left >= 1 else ", input read"
    return line


class ProgressReporter:
    """`with ProgressReporter(total_bytes, every_s):` around a run: prints progress
    (unless `quiet`), and hands what is done so far to `listener`, every `every_s`."""

    def __init__(self, total_bytes: int, every_s: float, out: IO[str] | None = None,
                 listener: Callable[[Counter], None] | None = None, quiet: bool = False):
        self.total_bytes = total_bytes
        self._listener = listener
        self._quiet = quiet
        self.every_s = every_s
        self.out = out or sys.stderr
        self.done: Counter[str] = Counter()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="progress", daemon=True)
        self._previous_address: str | None = None

    def __enter__(self) -> ProgressReporter:
        self._previous_address = os.environ.get(progress.ADDRESS_ENV)
        host, port = self._socket.getsockname()
        os.environ[progress.ADDRESS_ENV] = f"{host}:{port}"  # workers inherit it
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        self._socket.close()
        self._print()  # where the run ended
        if self._previous_address is None:
            os.environ.pop(progress.ADDRESS_ENV, None)
        else:
            os.environ[progress.ADDRESS_ENV] = self._previous_address
        if self._terminal and not self._quiet:
            print(file=self.out)  # end the line rewritten in place

    @property
    def _terminal(self) -> bool:
        return self.out.isatty() and not json_logs()

    def _listen(self) -> None:
        next_report = time.monotonic() + self.every_s
        while not self._stop.is_set():
            try:
                self.done.update(progress.parse(self._socket.recv(256)))
            except (TimeoutError, ValueError):
                pass  # nothing came, or not a report
            if time.monotonic() >= next_report:
                next_report += self.every_s
                self._print()

    def _drain(self) -> None:
        """Takes the reports the workers sent as the run ended."""
        self._socket.settimeout(0.05)
        try:
            while True:
                self.done.update(progress.parse(self._socket.recv(256)))
        except (TimeoutError, ValueError):
            pass

    def _print(self) -> None:
        if self._listener is not None:
            self._listener(self.done)
        if self._quiet:
            return
        line = progress_line(self.done, self.total_bytes, time.monotonic() - self._started)
        if self._terminal:
            print(f"\r{line}", end="", file=self.out, flush=True)
        else:
            say(line, self.out, logger="pipeline.progress")


def live_status_line(
    counters: Mapping[str, int], previous: Mapping[str, int], interval_s: float,
    oldest_unacked_ms: int | None, problem: tuple[str, float] | None = None,
) -> str:
    """One status line of a live run: the rate of messages pulled since `previous`,
    and the counts so far; and `problem`, what is wrong with the source and for how
    long (s), if anything is."""
    pulled = counters.get(metrics.RECORDS_READ, 0) - previous.get(metrics.RECORDS_READ, 0)
    line = (f"live: {pulled / interval_s if interval_s > 0 else 0:,.0f} messages/s pulled, "
            f"{counters.get(metrics.EVENTS_FORWARDED, 0):,} events forwarded in "
            f"{counters.get(metrics.FILES_WRITTEN, 0):,} files, "
            f"{counters.get(metrics.RECORDS_DEAD_LETTERED, 0):,} dead letters, "
            f"{counters.get(metrics.LATE_BATCHES, 0):,} late batches")
    if oldest_unacked_ms is not None:
        line += f", oldest message unacknowledged for {oldest_unacked_ms / 1000:,.1f} s"
    if problem is not None:
        line += f"; SOURCE UNAVAILABLE for {problem[1]:,.0f} s: {problem[0]}"
    return line


class LiveStatus:
    """`with LiveStatus(read_metrics, every_s):` around a live run: a status line every
    `every_s` from the runner's metrics. `read_metrics()` → (counters, the oldest
    unacknowledged message's age in ms or None); a failed read skips one line.
    `problem()`: what is wrong with the source and for how long, or None."""

    def __init__(self, read_metrics: Callable[[], tuple[Mapping[str, int], int | None]],
                 every_s: float, out: IO[str] | None = None,
                 problem: Callable[[], tuple[str, float] | None] = lambda: None):
        self._read = read_metrics
        self._problem = problem
        self.every_s = every_s
        self.out = out or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, name="live-status", daemon=True)

    def __enter__(self) -> LiveStatus:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)

    def _report(self) -> None:
        previous: Mapping[str, int] = {}
        last = time.monotonic()
        while not self._stop.wait(self.every_s):
            try:
                counters, oldest_ms = self._read()
            except Exception as err:  # noqa: BLE001 - a status line is not worth a run
                say(f"live: status unavailable ({type(err).__name__}: {err})", self.out,
                    level="WARNING", logger="pipeline.status")
                continue
            now = time.monotonic()
            say(live_status_line(counters, previous, now - last, oldest_ms, self._problem()),
                self.out, logger="pipeline.status")
            previous, last = counters, now
