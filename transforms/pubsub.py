"""ReadPubSubRecords: Pub/Sub messages → raw records, one batch per message.

The element timestamp, and the batch's arrival time, is the message's publish
time: mParticle batches by when it received data, and so does the forwarder.
A topic is read through a subscription the launcher makes once and keeps
(`transforms.io.pubsub_resources.ensure_subscription`), never made here: a graph is
built without calling Pub/Sub. Two sources, one per kind of runner (set
PUBSUB_EMULATOR_HOST to reach a local server):
- portable runners (Prism, Flink, Spark): `PubSubSource`, an unbounded source
  run as a splittable DoFn, which acknowledges a message only when the bundle
  that read it is finalized, after the runner committed its output;
- the DirectRunner and Dataflow: Beam's `ReadFromPubSub`, which those two run
  natively (the BundleBasedDirectRunner cannot run an unbounded splittable DoFn;
  it acknowledges on pull; Dataflow acknowledges after its durable commit).
"""

from __future__ import annotations

import apache_beam as beam

from transforms.values import RawRecord


def message_record(message) -> RawRecord:
    """A Beam PubsubMessage → RawRecord with source `pubsub:<message id>`."""
    publish_time_ms = None
    if message.publish_time is not None:
        publish_time_ms = int(message.publish_time.timestamp() * 1000)
    return RawRecord(f"pubsub:{message.message_id}", message.data or b"", publish_time_ms)


class ReadPubSubRecords(beam.PTransform):
    """A subscription → RawRecord."""

    def __init__(self, subscription: str, readers: int = 0):
        """`readers`: how many PubSubSource readers (portable runners); 0: Beam's
        ReadFromPubSub."""
        super().__init__()
        self._subscription = subscription
        self._readers = readers

    def expand(self, pbegin):
        if self._readers:
            from transforms.io.pubsub_source import PubSubSource

            return pbegin | "ReadPubSubSource" >> beam.io.Read(
                PubSubSource(self._subscription, self._readers)
            ).with_output_types(RawRecord)
        from apache_beam.io.gcp.pubsub import ReadFromPubSub

        return (
            pbegin
            | "ReadFromPubSub" >> ReadFromPubSub(
                subscription=self._subscription, with_attributes=True)
            | "ToRecord" >> beam.Map(message_record)
        )
