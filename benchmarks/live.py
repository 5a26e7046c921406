"""Live throughput: a Pub/Sub backlog drained, and a steady stream kept up with.

    .venv/bin/python -m benchmarks.live                        # both runners, full size
    .venv/bin/python -m benchmarks.live --backlog 2000 --rate 100 --seconds 10

Starts the embedded S3 server and a local Pub/Sub server (pstest), then for each
runner (the DirectRunner with Beam's ReadFromPubSub, Prism with PubSubSource):
  1. drain: publishes `--backlog` batches, starts `python -m pipeline` on the
     subscription with 10-second windows, and times from the pipeline's start to
     the moment every forwarded event is in S3: batches/s;
  2. steady: starts the pipeline, publishes `--rate` batches a second for
     `--seconds`, and notes when each file first shows in S3 against the end of its
     window: the lag distribution, and whether every event arrived.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3

from pipeline.tools.local_services import free_port, moto_server, pstest_binary
from pipeline.tools.publish_sample import moved_to
from pipeline.tools.sample_data import generate
from transforms.rules import batch_json
from transforms.rules.settings import ForwardingSettings, apply_settings

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 10
PROJECT = "bench-project"
_names = itertools.count()


def forwarded_events(batches: list[dict]) -> int:
    return sum(len(apply_settings(b, ForwardingSettings())[0]["events"]) for b in batches)


class Bucket:
    """Counts the events in new objects, and when each object was first seen."""

    def __init__(self, client, name: str):
        self.client, self.name = client, name
        self.first_seen: dict[str, float] = {}
        self.events = 0

    def poll(self) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name):
            for item in page.get("Contents", ()):
                key = item["Key"]
                if key in self.first_seen or "Verification" in key or "_dead_letters" in key:
                    continue
                self.first_seen[key] = time.time()
                body = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
                self.events += sum(len(json.loads(line)["events"])
                                   for line in body.splitlines())

    def lags(self) -> list[float]:
        """Seconds from each file's window end to its first sight."""
        lags = []
        for key, seen in self.first_seen.items():
            stamp = key.rsplit("_", 2)[-2]  # newest arrival, %Y%m%d%H%M%S + microseconds
            newest = time.mktime(time.strptime(stamp[:14], "%Y%m%d%H%M%S")) - time.timezone
            lags.append(seen - (newest // WINDOW_S + 1) * WINDOW_S)
        return sorted(lags)


def new_subscription(publisher, subscriber) -> tuple[str, str]:
    name = f"live-{next(_names)}"
    topic = f"projects/{PROJECT}/topics/{name}"
    subscription = f"projects/{PROJECT}/subscriptions/{name}"
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    return topic, subscription


def start_pipeline(runner: str, endpoint: str, bucket: str, subscription: str, log: Path):
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", f"--s3_bucket_name={bucket}",
         f"--s3_endpoint_url={endpoint}", f"--input_subscription={subscription}",
         f"--window_size_s={WINDOW_S}", "--skip_bucket_check=true", f"--runner={runner}",
         *os.environ.get("LIVE_FLAGS", "").split()],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env=dict(os.environ))


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def publish(publisher, topic: str, batches: list[dict]) -> None:
    futures = [publisher.publish(topic, batch_json.encode(moved_to(b, int(time.time() * 1000))))
               for b in batches]
    for future in futures:
        future.result()


def drain(runner, endpoint, s3, publisher, subscriber, backlog, work) -> dict:
    topic, subscription = new_subscription(publisher, subscriber)
    batches = list(generate(backlog, 2_000, seed=71))
    expected = forwarded_events(batches)
    publish(publisher, topic, batches)
    bucket = f"drain-{runner.lower()}"
    s3.create_bucket(Bucket=bucket)
    watched = Bucket(s3, bucket)
    started = time.time()
    process = start_pipeline(runner, endpoint, bucket, subscription, work / f"drain-{runner}.log")
    try:
        while watched.events < expected and time.time() - started < 900:
            time.sleep(1)
            watched.poll()
            if os.environ.get("LIVE_DEBUG"):
                print(f"    {time.time() - started:.0f} s: {watched.events:,} of {expected:,} "
                      "events in S3", flush=True)
    finally:
        stop(process)
    seconds = time.time() - started
    return {"batches": backlog, "seconds": seconds, "per_s": backlog / seconds,
            "complete": watched.events == expected}


def steady(runner, endpoint, s3, publisher, subscriber, rate, duration, work) -> dict:
    topic, subscription = new_subscription(publisher, subscriber)
    bucket = f"steady-{runner.lower()}"
    s3.create_bucket(Bucket=bucket)
    watched = Bucket(s3, bucket)
    log = work / f"steady-{runner}.log"
    process = start_pipeline(runner, endpoint, bucket, subscription, log)
    try:
        while "live; Ctrl-C stops" not in log.read_text():
            time.sleep(0.5)
        time.sleep(5)  # the source is pulling
        batches = iter(generate(rate * duration, 5_000, seed=72))
        sent: list[dict] = []
        done = threading.Event()

        def watch():
            while not done.is_set():
                watched.poll()
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        began = time.time()
        for second in range(duration):
            chunk = list(itertools.islice(batches, rate))
            publish(publisher, topic, chunk)
            sent += chunk
            time.sleep(max(0.0, began + second + 1 - time.time()))
        published_s = time.time() - began
        expected = forwarded_events(sent)
        deadline = time.time() + 3 * WINDOW_S + 30
        while watched.events < expected and time.time() < deadline:
            time.sleep(1)
            if os.environ.get("LIVE_DEBUG"):
                print(f"    {time.time() - began:.0f} s: {watched.events:,} of {expected:,} "
                      "events in S3", flush=True)
        done.set()
        watcher.join()
        watched.poll()
    finally:
        stop(process)
    lags = watched.lags()
    return {"rate": rate, "seconds": duration, "published_per_s": len(sent) / published_s,
            "files": len(lags), "complete": watched.events == expected,
            "lag_p50": lags[len(lags) // 2] if lags else None,
            "lag_p95": lags[int(len(lags) * 0.95)] if lags else None,
            "lag_max": lags[-1] if lags else None,
            "within_10s": sum(1 for lag in lags if lag <= 10) / len(lags) if lags else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=40_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--runners", default="DirectRunner,PrismRunner")
    args = parser.parse_args()
    port = free_port()
    pstest = subprocess.Popen([pstest_binary(), "-port", str(port)], stdout=subprocess.PIPE,
                              text=True)
    pstest.stdout.readline()
    os.environ.update(PUBSUB_EMULATOR_HOST=f"127.0.0.1:{port}", AWS_ACCESS_KEY_ID="local",
                      AWS_SECRET_ACCESS_KEY="local", AWS_DEFAULT_REGION="us-east-1")
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.05))
    subscriber = pubsub_v1.SubscriberClient()
    try:
        with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
            tmp = os.environ.get("LIVE_LOGS", tmp)
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            for runner in args.runners.split(","):
                print(f"{runner}: draining {args.backlog:,} batches ...", flush=True)
                result = drain(runner, endpoint, s3, publisher, subscriber, args.backlog,
                               Path(tmp))
                print(f"  drain: {result['seconds']:.1f} s, {result['per_s']:,.0f} batches/s, "
                      f"every event in S3: {result['complete']}", flush=True)
                print(f"{runner}: {args.rate:,} batches/s for {args.seconds} s ...", flush=True)
                result = steady(runner, endpoint, s3, publisher, subscriber, args.rate,
                                args.seconds, Path(tmp))
                lags = (f"window end to file: median {result['lag_p50']:.1f} s, p95 "
                        f"{result['lag_p95']:.1f} s, max {result['lag_max']:.1f} s, within "
                        f"10 s: {result['within_10s']:.0%}") if result["files"] else "no file"
                print(f"  steady: published {result['published_per_s']:,.0f} batches/s, "
                      f"{result['files']:,} files, {lags}; every event in S3: "
                      f"{result['complete']}", flush=True)
    finally:
        pstest.terminate()


if __name__ == "__main__":
    main()
