"""What an operator does to a live run, each as a real run of the console command's
entry point on Prism, a local Pub/Sub server (pstest) and the S3 server: stop it
with Ctrl-C (to the launcher, or to its process group as a terminal sends it) and
SIGTERM, stop it twice, point it at what does not exist, restart a topic run that
crashed, lose the subscription under it, scrape its metrics, read its JSON logs.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipeline.tools.local_services import free_port
from tests.conftest import ROOT, list_keys, poll, run_main
from tests.fault_proxy import FaultProxy

PROJECT = "local-project"
_names = itertools.count()


@pytest.fixture
def pubsub(pubsub_emulator, monkeypatch):
    """A new topic and a subscription of it: (publisher, topic, subscription)."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    from google.cloud import pubsub_v1

    name = f"operate-{os.getpid()}-{next(_names)}"
    topic, subscription = (f"projects/{PROJECT}/topics/{name}",
                           f"projects/{PROJECT}/subscriptions/{name}")
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=topic)
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
    return publisher, topic, subscription


_RUNNING: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_run_left():
    """A test that fails half-way leaves no launcher, nor its engine, running."""
    yield
    while _RUNNING:
        process = _RUNNING.pop()
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()


class Launcher:
    """`python -m pipeline` in a session of its own, as a terminal's foreground job
    would be, its output in a log file."""

    def __init__(self, log: Path, flags: list[str]):
        self.log = log
        with open(log, "a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", *flags], cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True)
        _RUNNING.append(self.process)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, deadline_s: float = 90) -> str:
        """Waits for a line matching `pattern` in the log; returns the log."""
        found = poll(lambda: re.search(pattern, self.text(), re.M), deadline_s, every_s=0.2)
        assert found, f"no {pattern!r} in:\n{self.text()[-3000:]}"
        return self.text()

    def ended(self, timeout_s: float = 180) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"still running:\n{self.text()[-3000:]}") from None

    def engine(self) -> list[psutil.Process]:
        """Prism and the SDK harnesses the launcher started."""
        return [child for child in psutil.Process(self.process.pid).children(recursive=True)
                if child.name() == "prism" or "SdkHarness(" in " ".join(child.cmdline())]


def summary_of(text: str) -> dict[str, int]:
    summary = text[text.rindex("Run summary:"):]
    return {name: int(value.replace(",", ""))
            for name, value in re.findall(r"^  (\w[\w.]*)\s+([\d,]+)$", summary, re.M)}


def publish(publisher, topic: str, event_ids: range, devices: int = 10) -> None:
    now_ms = int(time.time() * 1000)
    futures = [publisher.publish(topic, json.dumps({
        "events": [{"event_type": "custom_event",
                    "data": {"event_id": i, "timestamp_unixtime_ms": now_ms}}],
        "application_info": {"application_name": "Ops App"},
        "mp_deviceid": f"device-{i % devices}", "timestamp_unixtime_ms": now_ms,
    }).encode()) for i in event_ids]
    for future in futures:
        future.result()


def forwarded_ids(s3_client, bucket: str) -> list[int]:
    ids = []
    for key in list_keys(s3_client, bucket, "ops/"):
        if "Verification" in key:  # the start-up write check's {}
            continue
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        ids += [event["data"]["event_id"] for line in body.splitlines()
                for event in json.loads(line)["events"]]
    return ids


def live_flags(s3_endpoint: str, bucket: str, *flags: str) -> list[str]:
    return [f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
            "--folder_name=ops", "--runner=PrismRunner", "--progress_every_s=1", *flags]


def started_with_metrics(log: Path, flags: list[str]) -> tuple[Launcher, int]:
    """A launcher with --metrics_port on a free port, once it forwards; and the port."""
    port = free_port()
    run = Launcher(log, [*flags, f"--metrics_port={port}"])
    run.wait_for(r"live; Ctrl-C stops")
    return run, port


@pytest.mark.parametrize("to", ["process group", "launcher"])
def test_ctrl_c_drains_every_open_window_and_exits_0(
    s3_endpoint, s3_client, bucket, pubsub, prism, tmp_path, to
):
    """Ten-minute windows: what was read is in open windows when Ctrl-C comes, and the
    drain writes it. A terminal sends SIGINT to the whole foreground process group;
    the engine's processes are in groups of their own, so no process but the
    launcher sees it, and none prints a traceback."""
    publisher, topic, subscription = pubsub
    run, port = started_with_metrics(tmp_path / "run.log", live_flags(
        s3_endpoint, bucket, f"--input_subscription={subscription}", "--window_size_s=600"))
    publish(publisher, topic, range(1, 41))
    assert poll(lambda: prometheus_values(scrape(port, "/metrics")[1]).get(
        "forwarder_messages_pulled_total") == 40, 60), run.text()[-3000:]
    assert len(run.engine()) >= 2, "no engine processes to shield"
    if to == "process group":
        os.killpg(run.process.pid, signal.SIGINT)
    else:
        run.process.send_signal(signal.SIGINT)
    assert run.ended() == 0, run.text()[-3000:]
    text = run.text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert "stopped: every window written" in text
    counters = summary_of(text)
    assert counters["events_forwarded"] == 40, counters
    assert sorted(forwarded_ids(s3_client, bucket)) == list(range(1, 41))


def test_a_second_ctrl_c_during_the_drain_cancels_and_exits_5(
    s3_endpoint, bucket, pubsub, prism, tmp_path
):
    """S3 refuses every forwarded file (the fault proxy answers 500): /readyz says so,
    and the drain cannot end; a second Ctrl-C cancels, and the sentence says what may
    be lost."""
    publisher, topic, subscription = pubsub

    def forwarded_file(method: str, path: str) -> bool:
        return method == "PUT" and "/ops/" in path and "Verification" not in path

    with FaultProxy(s3_endpoint, fault_rate=0, faults=("500",),
                    fault_always=forwarded_file) as proxy:
        run, port = started_with_metrics(tmp_path / "run.log", live_flags(
            proxy.endpoint, bucket, f"--input_subscription={subscription}", "--window_size_s=2"))
        publish(publisher, topic, range(1, 11))
        # The window's file meets S3's errors: the run is not ready, and says why.
        assert poll(lambda: scrape(port, "/readyz") == (
            503, "not ready: the workers' latest S3 call failed"), 60), run.text()[-3000:]
        assert prometheus_values(scrape(port, "/metrics")[1])["forwarder_s3_retries_total"] > 0
        os.killpg(run.process.pid, signal.SIGINT)
        run.wait_for(r"stopping: pulling no more")
        os.killpg(run.process.pid, signal.SIGINT)
        assert run.ended() == 5, run.text()[-3000:]
    text = run.text()
    assert "stopped again during the drain" in text
    assert "error: stopped before the drain ended: the batches in open windows" in text


def test_a_drain_past_its_deadline_cancels_and_exits_5(
    s3_endpoint, bucket, pubsub, prism, tmp_path
):
    publisher, topic, subscription = pubsub
    with FaultProxy(s3_endpoint, fault_rate=0, faults=("500",), fault_always=lambda m, p: (
            m == "PUT" and "/ops/" in p and "Verification" not in p)) as proxy:
        run = Launcher(tmp_path / "run.log", live_flags(
            proxy.endpoint, bucket, f"--input_subscription={subscription}",
            "--window_size_s=600", "--drain_timeout_s=3"))
        run.wait_for(r"live; Ctrl-C stops")
        publish(publisher, topic, range(1, 11))
        run.wait_for(r"^live: [1-9]")
        run.process.terminate()
        assert run.ended() == 5, run.text()[-3000:]
    assert "the drain did not end within 3 s (--drain_timeout_s)" in run.text()


@pytest.mark.parametrize("source, sentence", [
    ("--input_subscription=projects/local-project/subscriptions/no-such-thing",
     "has no subscription projects/local-project/subscriptions/no-such-thing."),
    ("--input_topic=projects/local-project/topics/no-such-thing",
     "has no topic projects/local-project/topics/no-such-thing."),
])
def test_a_source_that_does_not_exist_exits_3_with_one_sentence(
    s3_endpoint, bucket, pubsub_emulator, monkeypatch, source, sentence
):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    started = time.monotonic()
    code, out, err = run_main([f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
                               source])
    assert code == 3, err
    [line] = [each for each in err.splitlines() if each.startswith("error:")]
    assert line == f"error: the Pub/Sub server at {pubsub_emulator} {sentence}"
    assert time.monotonic() - started < 30


def test_an_unreachable_pubsub_exits_3_within_30_s(s3_endpoint, bucket, monkeypatch):
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
    started = time.monotonic()
    code, _, err = run_main([f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
                             "--input_subscription=projects/local-project/subscriptions/s"])
    assert code == 3, err
    assert (f"error: the Pub/Sub server at {host} could not be reached to read subscription "
            "projects/local-project/subscriptions/s within 10 s") in err
    assert time.monotonic() - started < 30


def test_a_topic_run_that_crashed_reads_on_where_it_stopped(
    s3_endpoint, s3_client, bucket, pubsub, prism, tmp_path
):
    """A topic is read through a durable subscription: what is published while the
    forwarder is down (killed with SIGKILL, as a crash would) waits there for the
    next start, which forwards it. The engine ends with its launcher."""
    publisher, topic, _ = pubsub
    flags = live_flags(s3_endpoint, bucket, f"--input_topic={topic}", "--window_size_s=2")
    first = Launcher(tmp_path / "first.log", flags)
    first.wait_for(r"live; Ctrl-C stops")
    assert re.search(r"through subscription \S+-s3-forwarder-\w{8} \(made now\)", first.text())
    publish(publisher, topic, range(1, 21))
    assert poll(lambda: sorted(forwarded_ids(s3_client, bucket)) == list(range(1, 21)), 60)
    engine = first.engine()
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    outlived = psutil.wait_procs(engine, timeout=30)[1]
    for process in outlived:
        process.kill()
    assert not outlived, f"engine processes outlived their launcher: {outlived}"
    publish(publisher, topic, range(21, 41))  # while no forwarder runs

    second = Launcher(tmp_path / "second.log", flags)
    second.wait_for(r"live; Ctrl-C stops")
    assert "(made by an earlier run)" in second.text()
    assert poll(lambda: sorted(set(forwarded_ids(s3_client, bucket))) == list(range(1, 41)), 90), \
        second.text()[-3000:]
    second.process.terminate()
    assert second.ended() == 0, second.text()[-3000:]
    assert sorted(forwarded_ids(s3_client, bucket)) == list(range(1, 41))  # once each


def test_losing_the_subscription_drains_and_exits_6(
    s3_endpoint, s3_client, bucket, pubsub, prism, tmp_path
):
    """Deleted under a running forwarder: the status line says so, /readyz answers 503,
    and after --pubsub_unavailable_s the run writes what it holds and exits 6."""
    from google.cloud import pubsub_v1

    publisher, topic, subscription = pubsub
    run, port = started_with_metrics(tmp_path / "run.log", live_flags(
        s3_endpoint, bucket, f"--input_subscription={subscription}", "--window_size_s=600",
        "--pubsub_unavailable_s=6"))
    publish(publisher, topic, range(1, 11))
    run.wait_for(r"^live: [1-9]")
    assert scrape(port, "/readyz") == (200, "ready")
    pubsub_v1.SubscriberClient().delete_subscription(subscription=subscription)
    run.wait_for(r"SOURCE UNAVAILABLE for \d+ s: .* has no subscription")
    assert poll(lambda: scrape(port, "/readyz")[0] == 503, 10, every_s=0.5)
    assert run.ended() == 6, run.text()[-3000:]
    assert "error: stopped after writing what it held: " in run.text()
    assert sorted(forwarded_ids(s3_client, bucket)) == list(range(1, 11))


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode().strip()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode().strip()
    except OSError:
        return 0, ""


def prometheus_values(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in
            re.findall(r"^(forwarder_\S+) (\S+)$", text, re.M)}


def test_metrics_during_a_live_run_equal_its_summary(
    s3_endpoint, s3_client, bucket, pubsub, prism, tmp_path
):
    publisher, topic, subscription = pubsub
    run, port = started_with_metrics(tmp_path / "run.log", live_flags(
        s3_endpoint, bucket, f"--input_subscription={subscription}", "--window_size_s=2"))
    assert scrape(port, "/healthz") == (200, "ok")
    publish(publisher, topic, range(1, 51))
    assert poll(lambda: sorted(forwarded_ids(s3_client, bucket)) == list(range(1, 51)), 60)

    def settled():  # every file counted, and two scrapes alike
        first = prometheus_values(scrape(port, "/metrics")[1])
        time.sleep(6)
        second = prometheus_values(scrape(port, "/metrics")[1])
        return second if first == second and second.get(
            "forwarder_events_forwarded_total") == 50 else None

    scraped = poll(settled, 60, every_s=0)
    assert scraped, scrape(port, "/metrics")[1]
    assert scrape(port, "/readyz") == (200, "ready")
    run.process.terminate()
    assert run.ended() == 0, run.text()[-3000:]
    counters = summary_of(run.text())
    for name, beam_name in [("messages_pulled", "records_read"),
                            ("events_forwarded", "events_forwarded"),
                            ("files_written", "files_written"),
                            ("bytes_written", "bytes_written")]:
        assert scraped[f"forwarder_{name}_total"] == counters[beam_name], (name, scraped)
    for name, value in counters.items():
        if name != "messages_acknowledged":  # the last acks are counted in the drain
            assert scraped[f'forwarder_counter_total{{name="{name}"}}'] == value, name
    assert scraped["forwarder_messages_acked_total"] > 0
    assert scraped["forwarder_up"] == 1 and scraped["forwarder_ready"] == 1
    files = scraped['forwarder_window_end_to_file_seconds_bucket{le="+Inf"}']
    assert files == counters["files_written"], scraped
    assert scraped['forwarder_window_end_to_file_seconds_bucket{le="10.0"}'] == files


def test_json_logs_are_one_object_a_line_and_a_clean_start_warns_of_nothing(
    s3_endpoint, bucket, pubsub, prism, tmp_path
):
    publisher, topic, subscription = pubsub
    run = Launcher(tmp_path / "run.log", live_flags(
        s3_endpoint, bucket, f"--input_subscription={subscription}", "--window_size_s=2",
        "--log_format=json"))
    run.wait_for(r'"message": "forwarding .* live; Ctrl-C stops"')
    publish(publisher, topic, range(1, 11))
    run.wait_for(r'"logger": "pipeline.status", "message": "live: .* 10 events forwarded')
    run.process.terminate()
    assert run.ended() == 0, run.text()[-3000:]
    records = [json.loads(line) for line in run.text().splitlines()]  # every line
    assert {"time", "level", "logger", "message"} <= set(records[0])
    [summary] = [r for r in records if r["logger"] == "pipeline.summary"]
    assert summary["counters"]["events_forwarded"] == 10 and summary["reconciled"]
    warnings = [r for r in records if r["level"] in ("WARNING", "ERROR")]
    assert not warnings, warnings
