"""ReadPubSubRecords: Pub/Sub messages → raw records, one batch per message.

The element timestamp, and the batch's arrival time, is the message's publish
time: mParticle batches by when it received data, and so does the forwarder.
A topic is read through a subscription the launcher makes once and keeps
(`transforms.io.pubsub_resources.ensure_subscription`), never made here: a graph is
built without calling Pub/Sub. Two sources, as the run's profile says
(`RunnerProfile.pubsub_readers`; set PUBSUB_EMULATOR_HOST to reach a local server):
- `readers` > 0: `PubSubSource`, an unbounded source run as a splittable DoFn,
  which acknowledges a message only when the bundle that read it is finalized,
  after the runner committed its output;
- `readers` = 0: Beam's `ReadFromPubSub`, for a runner that runs it natively (and
  acknowledges on pull, or after its own durable commit).
"""

from __future__ import annotations

import apache_beam as beam

from transforms.values import RawRecord

__all__ = ["ReadPubSubRecords", "message_record"]


def message_record(message) -> RawRecord:
    """A Beam PubsubMessage → RawRecord with source `pubsub:<message id>`."""
    publish_time_ms = None
    if message.publish_time is not None:
        publish_time_ms = int(message.publish_time.timestamp() * 1000)
    return RawRecord(f"pubsub:{message.message_id}", message.data or b"", publish_time_ms)


class ReadPubSubRecords(beam.PTransform):
    """A subscription → RawRecord."""

    def __init__(self, subscription: str, readers: int = 0, drain_file: str | None = None):
        """`readers`: how many PubSubSource readers; 0: Beam's ReadFromPubSub.
        `drain_file`: a file whose creation drains PubSubSource's readers."""
        super().__init__()
        self._subscription = subscription
        self._readers = readers
        self._drain_file = drain_file

    def expand(self, pbegin):
        if self._readers:
            from transforms.io.pubsub_source import PubSubSource

            return pbegin | "ReadPubSubSource" >> beam.io.Read(
                PubSubSource(self._subscription, self._readers, drain_file=self._drain_file)
            ).with_output_types(RawRecord)
        from apache_beam.io.gcp.pubsub import ReadFromPubSub

        return (
            pbegin
            | "ReadFromPubSub" >> ReadFromPubSub(
                subscription=self._subscription, with_attributes=True)
            | "ToRecord" >> beam.Map(message_record)
        )
