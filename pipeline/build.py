"""The graph builder: one function that reads like the pipeline diagram.

    ReadBatches (files) | ReadPubSubRecords (live)
      → ParseBatches → ApplySettings → StampArrival → BatchPerDevice
      → WriteBatchFiles                       (forwarded files in the bucket)
    dead letters of reading and parsing → WriteDeadLetters

Files and Pub/Sub share everything after the source; only the time domain
differs (arrival time from the batch, or the publish time).

What differs between runners comes in one value, the run's `RunnerProfile`
(`pipeline.runners`): how many reads a live run makes, how live sessions are kept,
whether late files are batched, and in which worker process each step runs
(`_Places`). The transforms take one PCollection each; where a live run reads
several times, the reads are flattened here.

A sliced bounded run (`pipeline.sliced`, on runners of this machine) shares
the graph up to StampArrival, then groups and packs on local disk in the
workers, with the same rules (`build_sliced`, `transforms.spill`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import NamedTuple

import apache_beam as beam

from pipeline.config import ForwarderConfig
from pipeline.runners import RunnerProfile
from transforms.apply_settings import ApplySettings
from transforms.batching import BatchPerDevice, SplitByKey, StampArrival, in_global_window
from transforms.io.inputs import input_client, sample_records
from transforms.io.pubsub_source import sample_messages
from transforms.machinery.modes import mode_of
from transforms.machinery.shuffled import NO_DICTIONARY, ShuffleCodec
from transforms.outputs import flattened, numbered
from transforms.parse import ParseBatches
from transforms.pubsub import ReadPubSubRecords
from transforms.read import ReadBatches
from transforms.spill import SpillGroupAndWrite
from transforms.write import WriteBatchFiles, WriteDeadLetters

_LOG = logging.getLogger(__name__)

# The profile of a graph built for no runner in particular (tests of the graph).
ANY_RUNNER = RunnerProfile("")


class Outputs(NamedTuple):
    files: beam.PCollection  # FileWritten per forwarded file
    dead_letter_files: beam.PCollection  # FileWritten per dead-letter file


@dataclasses.dataclass(frozen=True)
class _Places:
    """Which worker process each step of a live run (or a sliced one, `build_sliced`)
    goes to (`RunnerProfile.in_process`; "": the pipeline's default one, which also
    packs and writes the files).

    Each read, as far as the first shuffle, in a process of its own (the first in the
    default one). After the shuffle, `parts` groups of keys, each merged in its place:
    - live sessions kept by timer: in `session_processes` of their own (or one), each
      with its part of the keys, split in each read's process; their files keyed in
      the sessions' process if there is one, else in the default one;
    - live windows of several reads: each read's process merges a part of the devices
      (a backlog's windows close together once it is read, and their merging is then
      shared by as many processes as read it), and keys their files;
    - live windows of one read: merged, and their files keyed, in a process of their
      own if the profile has session processes;
    - else (bounded runs, one batch per event) in the default one."""

    profile: RunnerProfile
    reads: int
    parts: int
    merge_places: tuple[str, ...]
    files_apart: bool  # the files of each part keyed where it was merged

    @classmethod
    def of(cls, profile: RunnerProfile, reads: int, batcher: BatchPerDevice,
           keyed_windows: bool) -> _Places:
        apart = profile.session_processes
        if batcher.keeps_live_sessions and apart:
            names = (("live sessions",) if apart == 1 else
                     tuple(f"live sessions {part}" for part in range(apart)))
            return cls(profile, reads, apart, names, files_apart=apart == 1)
        if batcher.keeps_live_sessions:
            return cls(profile, reads, 1, ("",), files_apart=False)
        if batcher.merges and not keyed_windows and reads > 1:
            return cls(profile, reads, reads, tuple(cls.read_place(read) for read in range(reads)),
                       files_apart=True)
        if batcher.merges and not keyed_windows and apart:
            return cls(profile, reads, 1, ("live sessions",), files_apart=True)
        return cls(profile, reads, 1, ("",), files_apart=False)

    @staticmethod
    def read_place(read: int) -> str:
        return f"reading {read}" if read else ""

    def in_read(self, read: int, label: str, transform: beam.PTransform):
        return numbered(label, read, self.reads) >> self.profile.in_process(
            transform, self.read_place(read))

    def in_part(self, part: int, label: str, transform: beam.PTransform):
        return numbered(label, part, self.parts) >> self.profile.in_process(
            transform, self.merge_places[part])

    def for_files(self, part: int, label: str, transform: beam.PTransform):
        """In the place of the part's merging (`files_apart`: each part's files keyed
        apart, numbered), or in the default one (every part's batches flattened)."""
        if not self.files_apart:
            return label >> transform
        return numbered(label, part, self.parts) >> self.profile.in_process(
            transform, self.merge_places[part])


def forward(
    records: beam.PCollection | list[beam.PCollection],
    config: ForwarderConfig,
    read_dead_letters: beam.PCollection | None = None,
    keyed_windows: bool | None = None,
    codec: ShuffleCodec = NO_DICTIONARY,
    profile: RunnerProfile = ANY_RUNNER,
) -> Outputs:
    """Raw records (from files or Pub/Sub) → forwarded files and dead letters.

    `records`: one PCollection, or a list, one per read of a live run (`build`).
    `keyed_windows` (default: for bounded input) groups with the window in the
    key rather than through Beam's triggers; the results are the same.
    `codec` compresses what crosses the shuffles (see `transforms.machinery.shuffled`).
    `profile`: what the run does differently on its runner.
    """
    if keyed_windows is None:
        keyed_windows = not config.streaming
    reads = records if isinstance(records, list) else [records]
    batcher = BatchPerDevice(
        config.batching, keyed_windows=keyed_windows, codec=codec,
        input_connection=config.connection, live_sessions=profile.sessions,
        worker_setup=profile.worker_setup)
    places = _Places.of(profile, len(reads), batcher, keyed_windows)
    keyed, dead_letters = [], []
    for read, its_records in enumerate(reads):
        its_keyed, its_dead_letters = arrive(its_records, config, codec, places, read)
        keyed.append(its_keyed)
        dead_letters += its_dead_letters
    if read_dead_letters is not None:
        dead_letters.append(read_dead_letters)
    files, more_dead_letters = batch_and_write(keyed, config, codec, keyed_windows, batcher,
                                               places)
    return Outputs(files, write_dead_letters(dead_letters + more_dead_letters, config,
                                             profile.late_files_batched))


def arrive(
    records: beam.PCollection, config: ForwarderConfig, codec: ShuffleCodec,
    places: _Places | None = None, read: int = 0, stamped: bool = True,
) -> tuple[beam.PCollection, list[beam.PCollection]]:
    """Raw records → (device, ShuffledBatch) at arrival time (`stamped`: as Beam's
    timestamp too), and the dead letters; of the `read`th read, in its place
    (`_Places.in_read`)."""
    def step(label: str, transform: beam.PTransform):
        return places.in_read(read, label, transform) if places else label >> transform

    parsed = records | step("ParseBatches", ParseBatches(config.max_batch_bytes,
                                                         config.app_name))
    applied = parsed["batches"] | step("ApplySettings", ApplySettings(
        config.settings, config.send_batches_without_events))
    keyed = applied["batches"] | step("StampArrival", StampArrival(codec, stamped))
    return keyed, [parsed["dead_letters"], applied["dead_letters"]]


def batch_and_write(
    keyed: list[beam.PCollection],
    config: ForwarderConfig,
    codec: ShuffleCodec,
    keyed_windows: bool,
    batcher: BatchPerDevice,
    places: _Places,
) -> tuple[beam.PCollection, list[beam.PCollection]]:
    """(device, ShuffledBatch) of each read → (files written, [dead letters]): grouped
    and merged per device in `places.parts` parts, each part's files keyed where it
    was merged, then packed and written together."""
    # Files are packed per fixed window. In a live run, one-event batches and
    # sessions (which end at any time) go out within seconds of being complete
    # rather than when that packing window closes.
    live = config.streaming
    writer = WriteBatchFiles(
        config.output_location, config.connection, config.layout, config.batching,
        early_firing_s=config.file_flush_s if live and mode_of(config.batching).files_early
        else 0,
        late_firing_s=config.file_flush_s if live and places.profile.late_files_batched else 0,
        keyed_windows=keyed_windows, codec=codec, upload_day=config.upload_day)

    before = batcher.before_shuffle()
    if before is not None:
        keyed = [each | places.in_read(read, "ToGroupPerDevice", before)
                 for read, each in enumerate(keyed)]
    if places.parts == 1:
        grouped = [flattened(keyed, "AllArrived")]
    else:
        split = [each | places.in_read(read, "SplitDevices", SplitByKey(places.parts))
                 for read, each in enumerate(keyed)]
        grouped = [flattened([parts[part] for parts in split], f"AllOfPart{part}")
                   for part in range(places.parts)]
    merged = [each | places.in_part(part, "BatchPerDevice", batcher.after_shuffle())
              for part, each in enumerate(grouped)]
    batches = [each["batches"] for each in merged]
    if not places.files_apart:
        batches = [flattened(batches, "AllBatches")]
    keyed_files = [each | places.for_files(part, "KeyForFiles", writer.key_for_files())
                   for part, each in enumerate(batches)]
    files = flattened(keyed_files, "AllKeyedForFiles") | "PackAndWriteFiles" >> (
        writer.pack_and_write())
    dead_letters = in_global_window(flattened([each["dead_letters"] for each in merged],
                                               "AllMergeDeadLetters"))
    return files, [dead_letters]


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
    pipeline: beam.Pipeline, config: ForwarderConfig, codec: ShuffleCodec, spill_dir: str,
    profile: RunnerProfile = ANY_RUNNER,
) -> Outputs:
    """A sliced bounded run (`transforms.spill`): the input, as far as StampArrival as
    in `build`, then grouped, merged, packed and written on local disk in the workers.

    The files are read in `profile.reads` parts, each as far as the spill in a worker
    process of its own (`_Places.in_read`), and each part's share of the shards and
    windows is grouped and written there: Prism runs a harness process per place, so
    the parts run at once, on as many cores (the DirectRunner, one read, spreads its
    bundles over its own workers)."""
    reads = profile.reads
    places = _Places(profile, reads, reads, tuple(map(_Places.read_place, range(reads))),
                     files_apart=True)
    keyed, dead_letters = [], []
    for read in range(reads):
        records = pipeline | places.in_read(read, "ReadBatches", ReadBatches(
            list(config.inputs), config.connection, part=read, parts=reads))
        its_keyed, its_dead_letters = arrive(records["records"], config, codec, places, read,
                                             stamped=False)
        keyed.append(its_keyed)
        dead_letters += [records["dead_letters"], *its_dead_letters]
    written = tuple(keyed) | "SpillGroupAndWrite" >> SpillGroupAndWrite(
        spill_dir, config.arrival_slice_s, config.batching, config.layout, codec,
        config.output_location, config.connection, config.upload_day,
        placed=lambda step, part: profile.in_process(step, places.merge_places[part]),
    )
    dead_letters.append(written["dead_letters"])
    return Outputs(written["files"], write_dead_letters(dead_letters, config))


def build(
    pipeline: beam.Pipeline,
    config: ForwarderConfig,
    profile: RunnerProfile = ANY_RUNNER,
    codec: ShuffleCodec | None = None,
    drain_file: str | None = None,
) -> Outputs:
    """The whole pipeline: live from Pub/Sub, or bulk from `--input` files.

    `profile`: what the run does differently on its runner (`pipeline.runners`): how
    live input is read (the forwarder's own source, and how many readers, or Beam's
    ReadFromPubSub; how many reads), how live sessions are kept, and where steps run.
    `codec`: the shuffle codec (default: one trained on the input, `trained_codec`).
    `drain_file`: a file whose creation drains a live run (`pipeline.live.drain_file`).
    """
    if codec is None:
        codec = trained_codec(config)
    if config.streaming:
        reads = profile.reads
        records = [pipeline | numbered("ReadPubSub", read, reads) >> profile.in_process(
                       ReadPubSubRecords(config.subscription, readers=profile.pubsub_readers,
                                         drain_file=drain_file),
                       _Places.read_place(read))
                   for read in range(reads)]
        return forward(records, config, codec=codec, profile=profile)
    read = pipeline | "ReadBatches" >> ReadBatches(list(config.inputs), config.connection)
    return forward(read["records"], config, read["dead_letters"], codec=codec, profile=profile)


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
