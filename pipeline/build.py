"""The graph builder: one function that reads like the pipeline diagram.

    ReadBatches → ParseBatches → ApplySettings → StampArrival → BatchPerDevice
      → WriteBatchFiles                       (forwarded files in the bucket)
    ParseBatches' dead letters → WriteDeadLetters
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam

from pipeline.config import ForwarderConfig
from transforms.apply_settings import ApplySettings
from transforms.batching import BatchPerDevice, StampArrival
from transforms.parse import ParseBatches
from transforms.read import ReadBatches
from transforms.write import WriteBatchFiles, WriteDeadLetters


class Outputs(NamedTuple):
    files: beam.PCollection  # FileWritten per forwarded file
    dead_letter_files: beam.PCollection  # FileWritten per dead-letter file


# In streaming, dead letters are written this often rather than at the end.
DEAD_LETTER_FLUSH_S = 30


def forward(
    records: beam.PCollection,
    config: ForwarderConfig,
    read_dead_letters: beam.PCollection | None = None,
    streaming: bool = False,
) -> Outputs:
    """Raw records (from files or Pub/Sub) → forwarded files and dead letters."""
    parsed = records | "ParseBatches" >> ParseBatches(config.max_batch_bytes, config.app_name)
    dead_letters = [parsed["dead_letters"]]
    if read_dead_letters is not None:
        dead_letters.append(read_dead_letters)
    files = (
        parsed["batches"]
        | "ApplySettings" >> ApplySettings(config.settings, config.send_batches_without_events)
        | "StampArrival" >> StampArrival()
        | "BatchPerDevice" >> BatchPerDevice(
            config.batching, config.window_size_s, config.session_gap_s, config.allowed_lateness_s
        )
        | "WriteBatchFiles" >> WriteBatchFiles(
            config.output_location,
            config.connection,
            folder=config.folder,
            compress=config.compress,
            store_by_date=config.store_by_date,
            window_size_s=config.window_size_s,
            allowed_lateness_s=config.allowed_lateness_s,
            max_batches_per_file=config.max_batches_per_file,
            max_file_bytes=config.max_file_bytes,
            file_shards=config.file_shards,
        )
    )
    dead_letter_files = (
        dead_letters | "AllDeadLetters" >> beam.Flatten()
    ) | "WriteDeadLetters" >> WriteDeadLetters(
        config.dead_letter_location,
        config.connection,
        flush_after_s=DEAD_LETTER_FLUSH_S if streaming else None,
    )
    return Outputs(files, dead_letter_files)


def build(pipeline: beam.Pipeline, config: ForwarderConfig) -> Outputs:
    """The whole bulk pipeline from `--input` files."""
    read = pipeline | "ReadBatches" >> ReadBatches(list(config.inputs), config.connection)
    return forward(read["records"], config, read["dead_letters"])
