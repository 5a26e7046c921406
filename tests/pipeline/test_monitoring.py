"""The --metrics_port server on a real loopback port: what a scrape and the health
checks answer for given counters, gauges and readiness."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from pipeline.errors import ConfigError
from pipeline.monitoring import MetricsServer
from pipeline.tools.local_services import free_port
from transforms import metrics


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def values(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in re.findall(r"^(forwarder_\S+) (\S+)$", text,
                                                             re.M)}


def test_a_scrape_shows_the_counters_gauges_and_histogram():
    counters = {metrics.RECORDS_READ: 120, metrics.EVENTS_FORWARDED: 300,
                metrics.FILES_WRITTEN: 4, metrics.BYTES_WRITTEN: 9000,
                metrics.DEAD_LETTER_RECORDS: 2, metrics.LATE_BATCHES: 1, metrics.S3_RETRIES: 3,
                metrics.MESSAGES_ACKNOWLEDGED: 118, "events_filtered.duplicate": 5,
                metrics.window_to_file_bucket(1500): 3, metrics.window_to_file_bucket(700_000): 1,
                metrics.WINDOW_TO_FILE_SUM: 704_500}
    with MetricsServer(0) as server:
        server.update(counters, {metrics.OLDEST_UNACKED_MS: 2500})
        status, text = get(server.port, "/metrics")
    assert status == 200
    scraped = values(text)
    assert scraped["forwarder_messages_pulled_total"] == 120
    assert scraped["forwarder_messages_acked_total"] == 118
    assert scraped["forwarder_events_forwarded_total"] == 300
    assert scraped["forwarder_files_written_total"] == 4
    assert scraped["forwarder_bytes_written_total"] == 9000
    assert scraped["forwarder_dead_letters_total"] == 2
    assert scraped["forwarder_late_batches_total"] == 1
    assert scraped["forwarder_s3_retries_total"] == 3
    assert scraped['forwarder_counter_total{name="events_filtered.duplicate"}'] == 5
    assert not any("window_end_to_file_ms" in name for name in scraped)  # the histogram's
    assert scraped["forwarder_oldest_unacked_message_age_seconds"] == 2.5
    assert scraped['forwarder_window_end_to_file_seconds_bucket{le="1.0"}'] == 0
    assert scraped['forwarder_window_end_to_file_seconds_bucket{le="2.0"}'] == 3
    assert scraped['forwarder_window_end_to_file_seconds_bucket{le="600.0"}'] == 3
    assert scraped['forwarder_window_end_to_file_seconds_bucket{le="+Inf"}'] == 4
    assert scraped["forwarder_window_end_to_file_seconds_count"] == 4
    assert scraped["forwarder_window_end_to_file_seconds_sum"] == 704.5
    assert scraped["forwarder_up"] == 1 and scraped["forwarder_ready"] == 1


def test_readiness_follows_the_source_and_the_latest_s3_call():
    problem = []
    with MetricsServer(0, not_ready=lambda: problem[0] if problem else None) as server:
        assert get(server.port, "/readyz") == (503, "not ready: starting\n")
        assert get(server.port, "/healthz") == (200, "ok\n")
        server.update({}, {metrics.S3_LAST_CALL_OK: 1})
        assert get(server.port, "/readyz") == (200, "ready\n")
        server.update({}, {metrics.S3_LAST_CALL_OK: 0})
        assert get(server.port, "/readyz") == (503, "not ready: the workers' latest S3 call "
                                               "failed\n")
        problem.append("the subscription is gone")
        server.update({}, {metrics.S3_LAST_CALL_OK: 1})
        assert get(server.port, "/readyz") == (503, "not ready: the subscription is gone\n")
        server.stopped({metrics.EVENTS_FORWARDED: 7})
        status, text = get(server.port, "/metrics")
        assert values(text)["forwarder_up"] == 0
        assert values(text)["forwarder_events_forwarded_total"] == 7
        assert get(server.port, "/readyz") == (503, "not ready: the run is over\n")
        assert get(server.port, "/healthz") == (200, "ok\n")


def test_a_port_in_use_is_one_sentence():
    port = free_port()
    with MetricsServer(port):
        with pytest.raises(ConfigError, match=rf"^--metrics_port {port} cannot be served: "):
            MetricsServer(port).__enter__()


@pytest.mark.parametrize("latency_ms, bucket", [
    (0, "le_1"), (1000, "le_1"), (1001, "le_2"), (599_999, "le_600"), (600_001, "le_inf")])
def test_latency_buckets(latency_ms, bucket):
    assert metrics.window_to_file_bucket(latency_ms) == metrics.WINDOW_TO_FILE_PREFIX + bucket
