"""Sliced bounded runs on local disk: memory for a window, or a slice of a device shard.

A local runner (`RunnerProfile.slices`) holds all that it groups in memory
until the run ends, and does it in its own process, on one core. A sliced run
(`pipeline.sliced`) groups on local disk instead, in the workers, and gives
the runner only the names of what to work on next. Fixed windows and one batch
per event (a batch's arrival gives its file window):

1. `_SpillBatchesFn`: every device-keyed batch (`ShuffledBatch`) is appended to a
   file per file window and bundle; when its bundle finishes, it emits the
   windows it wrote.
2. `_WriteWindowFn`, once per window: its batches grouped per device and
   merged as the unsliced run does (`Mode.in_memory`: BatchPerDevice's keyed windows
   and merging), grouped per file (app, date folder, shard), packed and written as
   the unsliced run writes them (`transforms.machinery.files`: the same entries,
   packing and FileWriter), several uploads at once.

Sessions, whose windows are known only once a device's batches meet:

1. `_SpillBatchesFn`: to a file per device shard, slice of arrival time
   (`--arrival_slice_s`) and bundle; emits the shards.
2. `_GroupShardFn`, once per shard: the shard's slices in time order, each read
   into memory and grouped into sessions per device, and the outbound batches
   appended as file lines to a file per file window and bundle. A session still
   open at a slice's end is kept in memory and grouped with the next slice, so
   it comes out whole. Emits the file windows it wrote.
3. `_WriteWindowFn`, once per file window, from the lines.

The files and their format: `transforms.machinery.spill_files`.

Memory, per worker: one file window's batches and lines, or for sessions one
slice of one device shard (BATCH_SHARDS shards). The runner holds only window
starts and shard numbers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterator

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms import window

from transforms.io import progress, s3
from transforms.machinery import files
from transforms.machinery.merging import Merger
from transforms.machinery.modes import mode_of
from transforms.machinery.shuffled import ShuffleCodec, ShuffledBatch
from transforms.machinery.spill_files import (
    BATCH_CODER,
    LINE_CODER,
    BundleFiles,
    batch_folder,
    line_folder,
    read_frames,
    shard_slices,
    slice_start_s,
    spill_files,
    window_folder,
)
from transforms.outputs import flattened, numbered, with_dead_letters
from transforms.rules.grouping import window_start_us
from transforms.values import Batching, FileLayout

__all__ = ["BATCH_SHARDS", "SpillGroupAndWrite"]

# Devices are spread over this many shards (by a stable hash): a worker groups a
# slice of one shard at a time, and shards keep two or more workers busy.
BATCH_SHARDS = 16


def _in_global_window(value: Any) -> window.WindowedValue:
    return window.GlobalWindows.windowed_value(value)


class _Spill:
    """What every stage of a sliced run shares: where it spills, and the grouping,
    layout and codec of the run."""

    def __init__(self, spill_dir: str, slice_s: int, batching: Batching, layout: FileLayout,
                 codec: ShuffleCodec):
        self.dir = spill_dir
        self.slice_s = slice_s
        self.batching = batching
        self.layout = layout
        self.codec = codec
        self.mode = mode_of(batching)

    @property
    def per_device(self) -> bool:
        """Whether a device's batches must meet before their windows are known
        (sessions); else a batch's arrival gives its file window."""
        return self.mode.per_device

    def outbound_entries(self, keyed: list, merger: Merger, open_after_ms: int | None = None):
        """Batches held in memory → ((file group, file_entry) in their file windows or
        dead letters, as BatchPerDevice and WriteBatchFiles make them; the batches of
        sessions still open at `open_after_ms`)."""
        outbound, carried = self.mode.in_memory(
            keyed, self.batching, self.codec, merger, open_after_ms)
        entries = [
            each if isinstance(each, pvalue.TaggedOutput) else files.file_entry_at(
                each, timestamp_us, self.layout, self.codec, self.batching.window_size_us)
            for each, timestamp_us in outbound
        ]
        return entries, carried


class _SpillBatchesFn(beam.DoFn):
    """(device, ShuffledBatch) → appended to this bundle's file of its file window
    or (sessions) of its device shard and slice; emits, once the bundle has
    finished, each window or shard it wrote to."""

    def __init__(self, spill: _Spill):
        self._spill = spill

    def start_bundle(self):
        self._files = BundleFiles(BATCH_CODER)
        self._written: set[int] = set()

    def process(self, keyed: tuple[str, ShuffledBatch]) -> Iterator:
        spill = self._spill
        arrival_ms = keyed[1].arrival_ms
        if spill.per_device:
            unit = files.stable_shard(keyed[0], BATCH_SHARDS)
            folder = batch_folder(spill.dir, unit, slice_start_s(arrival_ms, spill.slice_s))
        else:
            unit = window_start_us(arrival_ms * 1000, spill.batching.window_size_us)
            folder = window_folder(spill.dir, unit)
        self._files.add(folder, keyed)
        self._written.add(unit)
        return iter(())

    def finish_bundle(self):
        self._files.commit()
        for unit in sorted(self._written):
            yield _in_global_window(unit)


class _GroupShardFn(beam.DoFn):
    """Device shard → its outbound batches (sessions), as file lines spilled per
    file window; emits, once the bundle has finished, each file window it wrote
    to. Groups that cannot be merged go to DEAD_LETTERS (see `Merger`)."""

    def __init__(self, spill: _Spill, input_connection: s3.S3Connection):
        self._spill = spill
        self._input_connection = input_connection

    def setup(self):
        self._merger = Merger(self._spill.codec, self._input_connection)

    def start_bundle(self):
        self._lines = BundleFiles(LINE_CODER)
        self._windows: set[int] = set()

    def process(self, shard: int) -> Iterator:
        spill = self._spill
        carried: list[tuple[str, ShuffledBatch]] = []  # sessions open at the last slice's end
        starts = shard_slices(spill.dir, shard)
        for index, start in enumerate(starts):
            keyed = carried + [
                element for path in spill_files(batch_folder(spill.dir, shard, start))
                for element in read_frames(path)
            ]
            open_after_ms = (start + spill.slice_s) * 1000 if index + 1 < len(starts) else None
            entries, carried = spill.outbound_entries(keyed, self._merger, open_after_ms)
            for entry in entries:
                if isinstance(entry, pvalue.TaggedOutput):
                    yield entry
                    continue
                window_start = entry[0][-1]
                self._lines.add(line_folder(spill.dir, window_start), entry)
                self._windows.add(window_start)

    def finish_bundle(self):
        self._lines.commit()
        for window_start in sorted(self._windows):
            yield _in_global_window(window_start)


class _WriteWindowFn(beam.DoFn):
    """File window start → its files: the window's spilled batches grouped and
    merged (or, for sessions, its spilled file lines), grouped per file (app, date
    folder, shard), packed and written (`files.Uploads`: a window's last files are
    on their way while the next is merged). Groups that cannot be merged go to
    DEAD_LETTERS."""

    def __init__(self, spill: _Spill, location: str, connection: s3.S3Connection,
                 upload_day: str | None):
        self._spill = spill
        self._location = location
        self._connection = connection
        self._upload_day = upload_day

    def setup(self):
        self._merger = Merger(self._spill.codec, self._connection)
        layout = self._spill.layout
        self._writer = files.FileWriter(
            self._location, self._connection, files.format_of(layout),
            files.BatchFileNaming(layout.folder), files.BATCH_FILE_COUNTERS)

    def start_bundle(self):
        self._uploads = files.Uploads(self._writer)

    def process(self, window_start_us: int) -> Iterator:
        spill = self._spill
        if spill.per_device:  # lines that _GroupShardFn wrote
            folder = line_folder(spill.dir, window_start_us)
            entries = (entry for path in spill_files(folder)
                       for entry in read_frames(path, LINE_CODER))
        else:
            folder = window_folder(spill.dir, window_start_us)
            keyed = [element for path in spill_files(folder) for element in read_frames(path)]
            entries = spill.outbound_entries(keyed, self._merger)[0]
        groups: dict[tuple, list] = defaultdict(list)
        for entry in entries:
            if isinstance(entry, pvalue.TaggedOutput):
                yield entry
            else:
                groups[entry[0]].append(entry[1])
        for group in sorted(groups):
            for content in files.packed_files(
                (group, groups.pop(group)), spill.layout.max_batches, spill.layout.max_bytes,
                spill.codec, self._upload_day,
            ):
                self._uploads.start(content)
        # The window's last files on their way while the bundle's next window is merged.
        for written, _ in self._uploads.finished():
            yield written

    def finish_bundle(self):
        for written, _ in self._uploads.finished(keep=0):
            yield _in_global_window(written)
        progress.flush()

    def teardown(self):
        if hasattr(self, "_writer"):
            self._writer.close()


def _together(step: beam.PTransform, part: int) -> beam.PTransform:
    return step


class SpillGroupAndWrite(beam.PTransform):
    """(device, ShuffledBatch) → {"files": FileWritten, "dead_letters": dict}: what
    BatchPerDevice and WriteBatchFiles do, grouped on local disk in the workers
    (see above). Only window starts and shard numbers cross the runner.

    Its input is one PCollection, or a tuple of `parts` (each read in a place of its
    own: `placed`), each spilled where it was read; then each part's share of the
    shards and windows is grouped and written in that part's place."""

    def __init__(
        self, spill_dir: str, slice_s: int, batching: Batching, layout: FileLayout,
        codec: ShuffleCodec, output: str, connection: s3.S3Connection, upload_day: str | None,
        placed: Callable[[beam.PTransform, int], beam.PTransform] = _together,
    ):
        """`spill_dir`: the run's spill directory, on the workers' local disk.
        `slice_s`: the slice of arrival time a device shard's sessions are grouped by
        (`--arrival_slice_s`). `batching`, `layout`: how batches are grouped and files
        packed, as in an unsliced run. `codec`: how what is spilled is compressed.
        `output`, `connection`: where the files go (an s3:// prefix or a local
        directory) and how to reach it, also to read the input again for a dead
        letter's record. `upload_day`: the day that names date folders by upload time.
        `placed`: a step and a part's number → the step where that part runs."""
        super().__init__()
        self._spill = _Spill(spill_dir, slice_s, batching, layout, codec)
        self._output = output
        self._connection = connection
        self._upload_day = upload_day
        self._placed = placed

    def expand(self, keyed):
        reads = list(keyed) if isinstance(keyed, tuple) else [keyed]
        parts = len(reads)
        spilled = [each | numbered("SpillBatches", part, parts) >> self._placed(
                       beam.ParDo(_SpillBatchesFn(self._spill)), part)
                   for part, each in enumerate(reads)]
        units = flattened(spilled, "AllSpilled")
        dead_letters = []
        if self._spill.per_device:
            shards = self._split(units | "EachShardOnce" >> beam.Distinct(), "Shards", parts,
                                 lambda shard: shard)
            grouped = [with_dead_letters(
                each, numbered("GroupShards", part, parts),
                _GroupShardFn(self._spill, self._connection), main="windows",
                placed=lambda step, part=part: self._placed(step, part))
                for part, each in enumerate(shards)]
            dead_letters += [each["dead_letters"] for each in grouped]
            windows = [each["windows"] for each in grouped]
            units = flattened(windows, "AllGrouped")
        size_us = self._spill.batching.window_size_us
        windows = self._split(units | "EachWindowOnce" >> beam.Distinct(), "Windows", parts,
                              lambda start: start // size_us)
        written = [with_dead_letters(
            each, numbered("WriteWindows", part, parts),
            _WriteWindowFn(self._spill, self._output, self._connection, self._upload_day),
            main="files", placed=lambda step, part=part: self._placed(step, part))
            for part, each in enumerate(windows)]
        dead_letters += [each["dead_letters"] for each in written]
        files = [each["files"] for each in written]
        return {"files": flattened(files, "AllWritten"),
                "dead_letters": tuple(dead_letters) | "SpillDeadLetters" >> beam.Flatten()}

    @staticmethod
    def _split(units, label: str, parts: int, number: Callable[[int], int]) -> list:
        """Units (shards, window starts) → `parts` PCollections, the units whose
        `number` is the part's modulo `parts` in each (consecutive windows apart)."""
        if parts == 1:
            return [units]
        return list(units | f"Split{label}" >> beam.Partition(
            lambda unit, count: number(unit) % count, parts))
