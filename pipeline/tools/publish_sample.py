"""Publishes realistic mParticle batches to a Pub/Sub topic, as apps would send them.

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python -m pipeline.tools.publish_sample \\
        --topic projects/local-project/topics/mparticle --per_second 20 --seconds 60

Batches come from `pipeline.tools.sample_data` with their times moved to now, so
date folders and windows follow the wall clock. With --create, the topic and
a subscription of the same name are made first.
"""

from __future__ import annotations

import argparse
import json
import time

from pipeline.tools.sample_data import generate
from transforms.rules import grouping

TIME_FIELDS = ("timestamp_unixtime_ms", "session_start_unixtime_ms")


def _shift(value, by_ms: int):
    return type(value)(int(value) + by_ms) if str(value).lstrip("-").isdigit() else value


def moved_to(batch: dict, now_ms: int) -> dict:
    """The batch with its own and its events' times moved so it arrives at `now_ms`."""
    by_ms = now_ms - grouping.arrival_time_ms(batch)
    batch = {**batch, "timestamp_unixtime_ms": _shift(batch["timestamp_unixtime_ms"], by_ms)}
    for event in batch["events"]:
        for field in TIME_FIELDS:
            if field in event["data"]:
                event["data"][field] = _shift(event["data"][field], by_ms)
    return batch


def create_topic_and_subscription(topic: str) -> str:
    from google.cloud import pubsub_v1

    subscription = topic.replace("/topics/", "/subscriptions/")
    pubsub_v1.PublisherClient().create_topic(name=topic)
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
    return subscription


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", required=True, help="projects/<project>/topics/<name>")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--per_second", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--create", action="store_true")
    args = parser.parse_args()

    from google.cloud import pubsub_v1

    if args.create:
        print("subscription:", create_topic_and_subscription(args.topic))
    publisher = pubsub_v1.PublisherClient()
    started = time.monotonic()
    published = 0
    for batch in generate(int(args.per_second * args.seconds) + 1, args.devices):
        due = started + published / args.per_second
        time.sleep(max(0.0, due - time.monotonic()))
        if time.monotonic() - started > args.seconds:
            break
        data = json.dumps(moved_to(batch, int(time.time() * 1000))).encode()
        publisher.publish(args.topic, data).result()
        published += 1
    print(f"published {published} batches in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
