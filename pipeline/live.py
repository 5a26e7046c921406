"""A live run from its start to its stop.

Ctrl-C (SIGINT, to the launcher alone or to its whole process group), SIGTERM and
SIGHUP stop it. Where the runner can drain (`RunnerProfile.drains_on_stop`: Prism, whose
SDK harnesses share the launcher's machine), a stop is a drain: the source pulls no
more, the runner writes every open window, the job ends, and the run prints its
summary. A second stop, or a drain past its deadline (--drain_timeout_s), cancels the
job instead.
The launcher also watches the subscription (`SourceWatch`): gone or unreachable for
--pubsub_unavailable_s, the run drains as if stopped, and says why.

The engine's processes (Prism, the SDK harnesses) are started in process groups of
their own (`runners.engine_shielded`): a terminal's Ctrl-C reaches the launcher
alone, which decides how they stop.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import logging
import os
import signal
import tempfile
import threading
import time
from typing import Callable, Iterator

import apache_beam as beam

from transforms.io import pubsub_resources

_LOG = logging.getLogger("pipeline")

# How often the launcher asks Pub/Sub whether the subscription is still there.
WATCH_EVERY_S = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP, each a KeyboardInterrupt in the main thread (which
    waits on the job), counted; `stop_for` asks for a stop from another thread."""

    def __init__(self) -> None:
        self.count = 0
        self.reason: str | None = None  # why the launcher stopped the run itself
        self._raising = True
        self.install()

    def install(self) -> None:
        """Puts the handlers (back) in place: starting a portable job, Beam's job server
        puts in a SIGINT handler of its own that stops the engine at once."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._stop)

    def _stop(self, signum, frame) -> None:
        self.count += 1
        if self._raising:
            raise KeyboardInterrupt

    def settle(self) -> None:
        """The job has ended: further signals are counted, and change nothing."""
        self._raising = False

    def stop_for(self, reason: str) -> None:
        """Stops the run as a signal would, for `reason` (said at the end)."""
        if self.reason is None:
            self.reason = reason
            _thread.interrupt_main(signal.SIGINT)


class _Job:
    """A running job, waited for in a thread of its own, so that the stop signals
    reach the launcher's main thread while Beam watches the job's state."""

    def __init__(self, result):
        self.result = result
        self._finished = threading.Event()
        self._error: BaseException | None = None
        threading.Thread(target=self._wait, name="wait-for-job", daemon=True).start()

    def _wait(self) -> None:
        try:
            self.result.wait_until_finish()
        except BaseException as err:  # noqa: BLE001 - raised again in the main thread
            self._error = err
        finally:
            self._finished.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Whether the job ended within `timeout_s` (None: waits for its end); raises
        its error if it failed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._finished.wait(0.5):
            if deadline is not None and time.monotonic() > deadline:
                return False
        if self._error is not None:
            raise self._error
        return True


class SourceWatch:
    """Asks Pub/Sub every WATCH_EVERY_S (or a third of `unavailable_s`, if less, but
    not more than once a second) whether the subscription can be read; once it could
    not for `unavailable_s`, stops the run (`StopSignals.stop_for`).

    `problem`: what is wrong now (one sentence) and for how long, for the status line
    and the metrics; None while the subscription answers."""

    def __init__(self, subscription: str, unavailable_s: float, stops: StopSignals):
        self.subscription = subscription
        self.unavailable_s = unavailable_s
        self.every_s = min(WATCH_EVERY_S, max(unavailable_s / 3, 1.0))
        self._stops = stops
        self._since: float | None = None  # monotonic time of the first failed check
        self._problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="source-watch", daemon=True)

    def __enter__(self) -> SourceWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def problem(self) -> tuple[str, float] | None:
        since, problem = self._since, self._problem
        if since is None or problem is None:
            return None
        return problem, time.monotonic() - since

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            problem = pubsub_resources.subscription_problem(
                self.subscription, timeout_s=min(pubsub_resources.CHECK_TIMEOUT_S, self.every_s))
            if problem is None:
                if self._since is not None:
                    _LOG.info("Pub/Sub subscription %s answers again", self.subscription)
                self._since = self._problem = None
                continue
            if self._since is None:
                self._since = time.monotonic()
                _LOG.warning("%s The run stops if this lasts %d s (--pubsub_unavailable_s).",
                             problem, self.unavailable_s)
            self._problem = problem
            if time.monotonic() - self._since >= self.unavailable_s:
                self._stops.stop_for(
                    f"{problem} (for {self.unavailable_s} s, --pubsub_unavailable_s)")
                return


@contextlib.contextmanager
def drain_file(drains: bool) -> Iterator[str | None]:
    """Where the launcher asks its workers' sources to drain (a file it creates, which
    the graph's source is given: `pubsub_source.PubSubSource`); None where it cannot."""
    if not drains:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="mparticle-s3-drain-") as folder:
        yield os.path.join(folder, "drain")


@dataclasses.dataclass(frozen=True)
class Stopped:
    """How a live job ended: `drained` (every open window written, or the job ended by
    itself), or cancelled; `stopped_for`: why the launcher stopped it itself, if it did."""

    result: object  # Beam's PipelineResult
    drained: bool
    stopped_for: str | None


def run_until_stopped(pipeline: beam.Pipeline, stops: StopSignals, drain_at: str | None,
                      drain_timeout_s: float,
                      around: Callable[[object], contextlib.AbstractContextManager]
                      ) -> Stopped:
    """Starts the job and waits for its end or a stop; then drains (`drain_at`: the
    drain file, None where the runner cannot drain) within `drain_timeout_s`, or
    cancels it. `around(result)`: what runs beside the job while it runs (status
    lines, the watch, metrics)."""
    job = _Job(pipeline.run())
    stops.install()
    drained = False
    try:
        with around(job.result):
            try:
                job.wait()
                drained = True  # the job ended by itself
            except KeyboardInterrupt:
                drained = drain_at is not None and _drain(job, drain_at, drain_timeout_s)
    except KeyboardInterrupt:  # another stop as what ran beside the job ended
        pass
    if not drained:
        with contextlib.suppress(Exception):  # a job that failed as it was stopped
            job.result.cancel()
    stops.settle()
    return Stopped(job.result, drained, stops.reason)


def _drain(job: _Job, drain_at: str, timeout_s: float) -> bool:
    """Asks the source to drain; whether the job then ended within `timeout_s` (a
    second stop gives up at once)."""
    _LOG.info("stopping: pulling no more, writing the open windows (at most %d s; Ctrl-C "
              "again stops at once)", timeout_s)
    open(drain_at, "w").close()
    try:
        if job.wait(timeout_s):
            _LOG.info("stopped: every window written")
            return True
        _LOG.warning("the drain did not end within %d s (--drain_timeout_s)", timeout_s)
    except KeyboardInterrupt:
        _LOG.warning("stopped again during the drain")
    return False
