"""The graph builder: one function that reads like the pipeline diagram.

    ReadBatches (files) | ReadPubSubRecords (live)
      → ParseBatches → ApplySettings → StampArrival → BatchPerDevice
      → WriteBatchFiles                       (forwarded files in the bucket)
    dead letters of reading and parsing → WriteDeadLetters

Files and Pub/Sub share everything after the source; only the time domain
differs (arrival time from the batch, or the publish time).
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam

from pipeline.config import ForwarderConfig
from transforms.apply_settings import ApplySettings
from transforms.batching import BatchingMode, BatchPerDevice, StampArrival
from transforms.parse import ParseBatches
from transforms.pubsub import ReadPubSubRecords
from transforms.read import ReadBatches, input_client, sample_records
from transforms.shuffled import NO_DICTIONARY, ShuffleCodec
from transforms.write import WriteBatchFiles, WriteDeadLetters


class Outputs(NamedTuple):
    files: beam.PCollection  # FileWritten per forwarded file
    dead_letter_files: beam.PCollection  # FileWritten per dead-letter file


def forward(
    records: beam.PCollection,
    config: ForwarderConfig,
    read_dead_letters: beam.PCollection | None = None,
    keyed_windows: bool | None = None,
    codec: ShuffleCodec = NO_DICTIONARY,
) -> Outputs:
    """Raw records (from files or Pub/Sub) → forwarded files and dead letters.

    `keyed_windows` (default: for bounded input) groups with the window in the
    key rather than through Beam's triggers; the results are the same.
    `codec` compresses what crosses the shuffles (see `transforms.shuffled`).
    """
    if keyed_windows is None:
        keyed_windows = not config.streaming
    # Files are packed per fixed window. In streaming, one-event batches and
    # sessions (which end at any time) go out within seconds of being complete
    # rather than when that packing window closes.
    not_fixed = config.batching is not BatchingMode.FIXED
    early_firing_s = config.file_flush_s if config.streaming and not_fixed else 0
    parsed = records | "ParseBatches" >> ParseBatches(config.max_batch_bytes, config.app_name)
    applied = parsed["batches"] | "ApplySettings" >> ApplySettings(
        config.settings, config.send_batches_without_events
    )
    batched = (
        applied["batches"]
        | "StampArrival" >> StampArrival()
        | "BatchPerDevice" >> BatchPerDevice(
            config.batching,
            config.window_size_s,
            config.session_gap_s,
            config.allowed_lateness_s,
            keyed_windows=keyed_windows,
            codec=codec,
        )
    )
    files = batched["batches"] | "WriteBatchFiles" >> WriteBatchFiles(
        config.output_location,
        config.connection,
        folder=config.folder,
        compress=config.compress,
        date_folders=config.date_folders,
        window_size_s=config.window_size_s,
        allowed_lateness_s=config.allowed_lateness_s,
        max_batches_per_file=config.max_batches_per_file,
        max_file_bytes=config.max_file_bytes,
        file_shards=config.file_shards,
        early_firing_s=early_firing_s,
        keyed_windows=keyed_windows,
        codec=codec,
    )
    dead_letters = [parsed["dead_letters"], applied["dead_letters"], batched["dead_letters"]]
    if read_dead_letters is not None:
        dead_letters.append(read_dead_letters)
    dead_letter_files = (
        dead_letters | "AllDeadLetters" >> beam.Flatten()
    ) | "WriteDeadLetters" >> WriteDeadLetters(
        config.dead_letter_location,
        config.connection,
        flush_after_s=config.dead_letter_flush_s if config.streaming else None,
        allowed_lateness_s=config.allowed_lateness_s,
    )
    return Outputs(files, dead_letter_files)


def build(pipeline: beam.Pipeline, config: ForwarderConfig, portable: bool = False) -> Outputs:
    """The whole pipeline: live from Pub/Sub, or bulk from `--input` files.

    `portable`: a portable runner (Prism, Flink, Spark) runs it, which reads Pub/Sub
    through the forwarder's own source (see `transforms.pubsub`).
    """
    if config.streaming:
        records = pipeline | "ReadPubSub" >> ReadPubSubRecords(
            config.input_subscription, config.input_topic, portable=portable
        )
        return forward(records, config)
    read = pipeline | "ReadBatches" >> ReadBatches(list(config.inputs), config.connection)
    return forward(read["records"], config, read["dead_letters"], codec=trained_codec(config))


def trained_codec(config: ForwarderConfig) -> ShuffleCodec:
    """A shuffle codec with a dictionary trained on the first records of the input.

    Live input has no sample to train on before it starts, and goes without.
    """
    client = input_client(config.inputs, config.connection)
    return ShuffleCodec.trained_on(list(sample_records(list(config.inputs), client)))
