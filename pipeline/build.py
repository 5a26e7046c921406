"""The graph builder: one function that reads like the pipeline diagram.

    ReadBatches (files) | ReadPubSubRecords (live)
      → ParseBatches → ApplySettings → StampArrival → BatchPerDevice
      → WriteBatchFiles                       (forwarded files in the bucket)
    dead letters of reading and parsing → WriteDeadLetters

Files and Pub/Sub share everything after the source; only the time domain
differs (arrival time from the batch, or the publish time).

A sliced bounded run (`pipeline.sliced`, on runners of this machine) shares
the graph up to StampArrival, then groups and packs on local disk in the
workers, with the same rules (`build_sliced`, `transforms.spill`).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import apache_beam as beam

from pipeline import runners
from pipeline.config import ForwarderConfig
from transforms.apply_settings import ApplySettings
from transforms.batching import (
    BY_DEVICE,
    BatchPerDevice,
    LiveSessions,
    StampArrival,
    in_reading_harness,
    numbered,
)
from transforms.io.inputs import input_client, sample_records
from transforms.io.pubsub_source import sample_messages
from transforms.parse import ParseBatches
from transforms.pubsub import ReadPubSubRecords
from transforms.read import ReadBatches
from transforms.shuffled import NO_DICTIONARY, ShuffleCodec
from transforms.spill import SpillGroupAndWrite
from transforms.values import BatchingMode
from transforms.write import WriteBatchFiles, WriteDeadLetters

_LOG = logging.getLogger(__name__)


class Outputs(NamedTuple):
    files: beam.PCollection  # FileWritten per forwarded file
    dead_letter_files: beam.PCollection  # FileWritten per dead-letter file


def forward(
    records: beam.PCollection,
    config: ForwarderConfig,
    read_dead_letters: beam.PCollection | None = None,
    keyed_windows: bool | None = None,
    codec: ShuffleCodec = NO_DICTIONARY,
    live_sessions: LiveSessions = BY_DEVICE,
    late_files_batched: bool = False,
) -> Outputs:
    """Raw records (from files or Pub/Sub) → forwarded files and dead letters.

    `keyed_windows` (default: for bounded input) groups with the window in the
    key rather than through Beam's triggers; the results are the same.
    `codec` compresses what crosses the shuffles (see `transforms.shuffled`).
    `live_sessions`: see `BatchPerDevice` and `pipeline.runners.live_sessions`.
    `late_files_batched`: in streaming, a file window's late batches go out together
    `--file_flush_s` after the first of them (`pipeline.runners.batches_late_files`),
    rather than a file per late batch; and late dead letters `--dead_letter_flush_s`
    after the first of them.
    `records` may be a list, one per read of a live run (`build`; several, each in an
    SDK harness of its own): each is parsed, set and stamped in its read's harness
    (`in_reading_harness`), as far as the first shuffle (`BatchPerDevice`).
    """
    if keyed_windows is None:
        keyed_windows = not config.streaming
    reads = records if isinstance(records, list) else [records]
    keyed, dead_letters = [], []
    for read, its_records in enumerate(reads):
        its_keyed, its_dead_letters = arrive(its_records, config, codec, read, len(reads))
        keyed.append(its_keyed)
        dead_letters += its_dead_letters
    keyed = keyed[0] if len(keyed) == 1 else tuple(keyed)
    if read_dead_letters is not None:
        dead_letters.append(read_dead_letters)
    files, more_dead_letters = batch_and_write(keyed, config, codec, keyed_windows,
                                               live_sessions, late_files_batched)
    return Outputs(files, write_dead_letters(dead_letters + more_dead_letters, config,
                                             late_files_batched))


def arrive(
    records: beam.PCollection, config: ForwarderConfig, codec: ShuffleCodec,
    read: int = 0, reads: int = 1,
) -> tuple[beam.PCollection, list[beam.PCollection]]:
    """Raw records → (device, ShuffledBatch) at arrival time, and the dead letters;
    of the `read`th of `reads` reads, in its SDK harness (`in_reading_harness`)."""
    def step(label: str, transform: beam.PTransform) -> beam.PTransform:
        return numbered(label, read, reads) >> in_reading_harness(transform, read)

    parsed = records | step("ParseBatches", ParseBatches(config.max_batch_bytes,
                                                         config.app_name))
    applied = parsed["batches"] | step("ApplySettings", ApplySettings(
        config.settings, config.send_batches_without_events))
    keyed = applied["batches"] | step("StampArrival", StampArrival(codec))
    return keyed, [parsed["dead_letters"], applied["dead_letters"]]


def batch_and_write(
    keyed: beam.PCollection,
    config: ForwarderConfig,
    codec: ShuffleCodec,
    keyed_windows: bool,
    live_sessions: LiveSessions = BY_DEVICE,
    late_files_batched: bool = False,
) -> tuple[beam.PCollection, list[beam.PCollection]]:
    """(device, ShuffledBatch) → (files written, [dead letters])."""
    # Files are packed per fixed window. In streaming, one-event batches and
    # sessions (which end at any time) go out within seconds of being complete
    # rather than when that packing window closes.
    not_fixed = config.batching.mode is not BatchingMode.FIXED
    early_firing_s = config.file_flush_s if config.streaming and not_fixed else 0
    late_firing_s = config.file_flush_s if config.streaming and late_files_batched else 0
    batcher = BatchPerDevice(
        config.batching, keyed_windows=keyed_windows, codec=codec,
        input_connection=config.connection, live_sessions=live_sessions,
        reads=len(keyed) if isinstance(keyed, tuple) else 1,
    )
    batched = keyed | "BatchPerDevice" >> batcher
    files = batched["batches"] | "WriteBatchFiles" >> WriteBatchFiles(
        config.output_location,
        config.connection,
        config.layout,
        config.batching,
        early_firing_s=early_firing_s,
        late_firing_s=late_firing_s,
        keyed_windows=keyed_windows,
        codec=codec,
        upload_day=config.upload_day,
        placed=batcher.placed,  # in the stage, and so the harness, that made the batches
    )
    return files, [batched["dead_letters"]]


def write_dead_letters(
    dead_letters: list[beam.PCollection], config: ForwarderConfig, late_batched: bool = False
) -> beam.PCollection:
    return (dead_letters | "AllDeadLetters" >> beam.Flatten()) | "WriteDeadLetters" >> (
        WriteDeadLetters(
            config.dead_letter_location,
            config.connection,
            flush_after_s=config.dead_letter_flush_s if config.streaming else None,
            allowed_lateness_s=config.batching.allowed_lateness_s,
            late_batched=late_batched,
        )
    )


def build_sliced(
    pipeline: beam.Pipeline, config: ForwarderConfig, codec: ShuffleCodec, spill_dir: str
) -> Outputs:
    """A sliced bounded run (`transforms.spill`): the input, as far as StampArrival as
    in `build`, then grouped, merged, packed and written on local disk in the workers."""
    read = pipeline | "ReadBatches" >> ReadBatches(list(config.inputs), config.connection)
    keyed, dead_letters = arrive(read["records"], config, codec)
    dead_letters.append(read["dead_letters"])
    written = keyed | "SpillGroupAndWrite" >> SpillGroupAndWrite(
        spill_dir, config.arrival_slice_s, config.batching, config.layout, codec,
        config.output_location, config.connection, config.upload_day,
    )
    dead_letters.append(written["dead_letters"])
    return Outputs(written["files"], write_dead_letters(dead_letters, config))


def build(
    pipeline: beam.Pipeline,
    config: ForwarderConfig,
    runner: str = "DirectRunner",
    codec: ShuffleCodec | None = None,
) -> Outputs:
    """The whole pipeline: live from Pub/Sub, or bulk from `--input` files.

    `runner`: the runner's name (`pipeline.runners`), which decides how live input is
    read (the forwarder's own source, and how many readers, or Beam's ReadFromPubSub)
    and how live sessions are kept. `codec`: the shuffle codec (default: one trained on
    the input, `trained_codec`).
    """
    if codec is None:
        codec = trained_codec(config)
    if config.streaming:
        reads = runners.reading_harnesses(runner, config.pubsub_readers)
        records = [pipeline | numbered("ReadPubSub", read, reads) >> in_reading_harness(
                       ReadPubSubRecords(config.subscription, readers=runners.pubsub_readers(
                           runner, config.pubsub_readers)), read)
                   for read in range(reads)]
        return forward(records, config, codec=codec,
                       live_sessions=runners.live_sessions(runner, config.session_harnesses),
                       late_files_batched=runners.batches_late_files(runner))
    read = pipeline | "ReadBatches" >> ReadBatches(list(config.inputs), config.connection)
    return forward(read["records"], config, read["dead_letters"], codec=codec)


def trained_codec(config: ForwarderConfig) -> ShuffleCodec:
    """A shuffle codec with a dictionary trained on the first records of the input,
    or on the messages waiting in the subscription (handed back at once, for the run
    to read). A live run that starts on an empty subscription goes without one.
    """
    if config.streaming:
        samples = sample_messages(config.subscription)
        codec = ShuffleCodec.trained_on(samples)
        _LOG.info("the shuffle's dictionary: %s",
                  f"trained on {len(samples)} waiting messages" if codec.dictionary
                  else f"none ({len(samples)} messages waiting)")
        return codec
    client = input_client(config.inputs, config.connection)
    return ShuffleCodec.trained_on(list(sample_records(list(config.inputs), client)))
