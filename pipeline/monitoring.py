"""`--metrics_port`: the run's metrics for Prometheus, and health checks.

    /metrics   Prometheus' text format: forwarder_* counters, gauges and a histogram
    /healthz   200 while the process runs
    /readyz    200 while the run forwards: the job runs, the source answers, and the
               workers' latest S3 call was accepted; 503 with the reason otherwise

The values are the run's Beam counters (the same as its status line and summary),
read every `every_s` from the runner (`watch`, live runs), or given by the launcher
(`update`: a bounded run's progress; `stopped`: the final counters).
"""

from __future__ import annotations

import logging
import socketserver
import threading
import wsgiref.simple_server
from typing import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from pipeline.errors import ConfigError
from transforms import metrics

_LOG = logging.getLogger("pipeline")

# forwarder_<name>_total ← the Beam counter it shows, and its help text.
COUNTERS = {
    "messages_pulled": (metrics.RECORDS_READ,
                        "Pub/Sub messages pulled (live), or input records read (bounded)."),
    "messages_acked": (metrics.MESSAGES_ACKNOWLEDGED,
                       "Pub/Sub messages acknowledged by the forwarder's source."),
    "events_forwarded": (metrics.EVENTS_FORWARDED, "Events written to S3."),
    "files_written": (metrics.FILES_WRITTEN, "Forwarded files written to S3."),
    "bytes_written": (metrics.BYTES_WRITTEN, "Bytes of forwarded files written to S3."),
    "dead_letters": (metrics.DEAD_LETTER_RECORDS, "Dead-letter records written."),
    "late_batches": (metrics.LATE_BATCHES, "Batches that came after their window was written."),
    "s3_retries": (metrics.S3_RETRIES, "S3 calls retried after a transient error."),
}


class _Snapshot:
    """The latest values, swapped whole under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, int] = {}
        self.running = True
        self.not_ready: str | None = "starting"


class _Collector:
    """Turns the snapshot into Prometheus metric families at each scrape."""

    def __init__(self, snapshot: _Snapshot):
        self._snapshot = snapshot

    def collect(self) -> Iterator:
        with self._snapshot.lock:
            counters = dict(self._snapshot.counters)
            gauges = dict(self._snapshot.gauges)
            running, ready = self._snapshot.running, self._snapshot.not_ready is None
        for name, (beam_name, help_text) in COUNTERS.items():
            yield CounterMetricFamily(f"forwarder_{name}", help_text,
                                      value=counters.get(beam_name, 0))
        every = CounterMetricFamily("forwarder_counter", "Every Beam counter of the run, "
                                    "as in its summary.", labels=["name"])
        for name in sorted(counters):
            if not name.startswith(metrics.WINDOW_TO_FILE_PREFIX):
                every.add_metric([name], counters[name])
        yield every
        yield GaugeMetricFamily(
            "forwarder_oldest_unacked_message_age_seconds",
            "How long the oldest message pulled and not yet acknowledged has waited.",
            value=gauges.get(metrics.OLDEST_UNACKED_MS, 0) / 1000)
        yield GaugeMetricFamily("forwarder_up", "1 while the run runs.", value=int(running))
        yield GaugeMetricFamily("forwarder_ready", "1 while /readyz answers 200.",
                                value=int(ready))
        yield _window_to_file_histogram(counters)


def _window_to_file_histogram(counters: Mapping[str, int]) -> HistogramMetricFamily:
    buckets, total = [], 0
    for bound_s in metrics.WINDOW_TO_FILE_BOUNDS_S:
        total += counters.get(f"{metrics.WINDOW_TO_FILE_PREFIX}le_{bound_s}", 0)
        buckets.append((str(float(bound_s)), total))
    total += counters.get(f"{metrics.WINDOW_TO_FILE_PREFIX}le_inf", 0)
    buckets.append(("+Inf", total))
    return HistogramMetricFamily(
        "forwarder_window_end_to_file_seconds",
        "Live files: time from the end of their window to their upload's end.",
        buckets=buckets, sum_value=counters.get(metrics.WINDOW_TO_FILE_SUM, 0) / 1000)


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args) -> None:  # a scrape every few seconds is not news
        pass


class MetricsServer:
    """`with MetricsServer(port) as server:` serves the endpoints above in a thread
    (port 0: a free one, `server.port`). `not_ready()`: why the run cannot forward
    now, or None."""

    def __init__(self, port: int, not_ready: Callable[[], str | None] = lambda: None,
                 every_s: float = 5.0, host: str = ""):
        self._snapshot = _Snapshot()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self._snapshot))
        self._metrics_app = make_wsgi_app(registry)
        self._not_ready = not_ready
        self.every_s = every_s
        self.port, self._host = port, host
        self._stop = threading.Event()

    def __enter__(self) -> MetricsServer:
        try:
            self._server = wsgiref.simple_server.make_server(
                self._host, self.port, self._app, server_class=_ThreadingWSGIServer,
                handler_class=_QuietHandler)
        except OSError as err:
            raise ConfigError(f"--metrics_port {self.port} cannot be served: "
                              f"{err.strerror or err}.") from None
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, name="metrics-server",
                         daemon=True).start()
        _LOG.info("metrics on http://localhost:%d/metrics (health: /healthz, /readyz)",
                  self.port)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def update(self, counters: Mapping[str, int] | None = None,
               gauges: Mapping[str, int] | None = None) -> None:
        """New values (whole: they replace the old ones), and readiness asked again."""
        not_ready = self._not_ready()
        with self._snapshot.lock:
            if counters is not None:
                self._snapshot.counters = dict(counters)
            if gauges is not None:
                self._snapshot.gauges = dict(gauges)
            if not_ready is None and self._snapshot.gauges.get(metrics.S3_LAST_CALL_OK) == 0:
                not_ready = "the workers' latest S3 call failed"
            self._snapshot.not_ready = not_ready

    def stopped(self, counters: Mapping[str, int] | None) -> None:
        """The run is over: its final counters, not ready, not up."""
        self.update(counters)
        with self._snapshot.lock:
            self._snapshot.running = False
            self._snapshot.not_ready = "the run is over"

    def watch(self, read: Callable[[], tuple[dict, dict]],
              not_ready: Callable[[], str | None]) -> None:
        """From now on, `read()` → (counters, gauges) every `every_s` (a live job's Beam
        metrics), and `not_ready` says when the run cannot forward."""
        self._not_ready = not_ready
        threading.Thread(target=self._poll, args=(read,), name="metrics-poll",
                         daemon=True).start()

    def _poll(self, read: Callable[[], tuple[dict, dict]]) -> None:
        while True:
            try:
                self.update(*read())
            except Exception as err:  # noqa: BLE001 - one failed read is one stale scrape
                _LOG.debug("metrics not read: %s", err)
            if self._stop.wait(self.every_s):
                return

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok")
        if path == "/readyz":
            with self._snapshot.lock:
                reason = self._snapshot.not_ready
            if reason is None:
                return _text(start_response, "200 OK", "ready")
            return _text(start_response, "503 Service Unavailable", f"not ready: {reason}")
        return self._metrics_app(environ, start_response)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    """One thread per request: a slow scrape never holds up a health check."""

    daemon_threads = True


def _text(start_response, status: str, body: str):
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode() + b"\n"]
