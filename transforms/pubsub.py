"""ReadPubSubRecords: Pub/Sub messages → raw records, one batch per message.

The element timestamp, and the batch's arrival time, is the message's publish
time: mParticle batches by when it received data, and so does the forwarder.
Runs on the DirectRunner through Beam's `ReadFromPubSub` and the standard
client (set PUBSUB_EMULATOR_HOST to reach a local server).
"""

from __future__ import annotations

import apache_beam as beam

from transforms.read import RawRecord


def message_record(message) -> RawRecord:
    """A Beam PubsubMessage → RawRecord with source `pubsub:<message id>`."""
    publish_time_ms = None
    if message.publish_time is not None:
        publish_time_ms = int(message.publish_time.timestamp() * 1000)
    return RawRecord(f"pubsub:{message.message_id}", message.data or b"", publish_time_ms)


class ReadPubSubRecords(beam.PTransform):
    """A subscription or a topic (read through a temporary subscription) → RawRecord."""

    def __init__(self, subscription: str | None = None, topic: str | None = None):
        super().__init__()
        if (subscription is None) == (topic is None):
            raise ValueError("ReadPubSubRecords needs a subscription or a topic, not both")
        self._subscription = subscription
        self._topic = topic

    def expand(self, pbegin):
        from apache_beam.io.gcp.pubsub import ReadFromPubSub

        return (
            pbegin
            | "ReadFromPubSub" >> ReadFromPubSub(
                topic=self._topic, subscription=self._subscription, with_attributes=True
            )
            | "ToRecord" >> beam.Map(message_record)
        )
