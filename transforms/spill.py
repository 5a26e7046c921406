"""Sliced bounded runs on local disk: memory for a window, or a slice of a device shard.

A local runner (the FnApiRunner, Prism) holds all that it groups in memory
until the run ends, and does it in its own process, on one core. A sliced run
(`pipeline.sliced`) groups on local disk instead, in the workers, and gives
the runner only the names of what to work on next. Fixed windows and one batch
per event (a batch's arrival gives its file window):

1. `SpillBatches`: every device-keyed batch (`ShuffledBatch`) is appended to a
   file per file window and bundle; when its bundle finishes, it emits the
   windows it wrote.
2. `WriteSpilledWindow`, once per window: its batches grouped per device and
   merged as the unsliced run does (`Grouping`: `transforms.batching`'s keys and
   merging), grouped per file (app, date folder, shard), packed and written as
   the unsliced run writes them (`transforms.write`), several uploads at once.

Sessions, whose windows are known only once a device's batches meet:

1. `SpillBatches`: to a file per device shard, slice of arrival time
   (`--arrival_slice_s`) and bundle; emits the shards.
2. `GroupShard`, once per shard: the shard's slices in time order, each read
   into memory and grouped into sessions per device, and the outbound batches
   appended as file lines to a file per file window and bundle. A session still
   open at a slice's end is kept in memory and grouped with the next slice, so
   it comes out whole. Emits the file windows it wrote.
3. `WriteSpilledWindow`, once per file window, from the lines.

    <spill dir>/windows/<file window start, epoch µs>/<bundle id>.spill
    <spill dir>/batches/<device shard>/<slice start, epoch s>/<bundle id>.spill
    <spill dir>/lines/<file window start, epoch µs>/<bundle id>.spill

A file is a sequence of zstd-compressed blocks of up to about a MiB, each
after its 4-byte big-endian length; a block is a sequence of frames, each a
4-byte length and then one element in Beam's own coders. (Compressing a MiB at
once takes a fraction of the time of compressing each 2 KB batch alone, so
what is spilled goes uncompressed until then: `shuffled.UNCOMPRESSED`.) Files
are named `.part` until their bundle has finished, so workers never share a
file and a bundle that failed leaves nothing a later step reads. Slices are
UTC-aligned multiples of the slice length, so fixed windows (whose size
divides it) never span two.

Memory, per worker: one file window's batches and lines, or for sessions one
slice of one device shard (BATCH_SHARDS shards). The runner holds only window
starts and shard numbers.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid
from collections import defaultdict
from multiprocessing.pool import ThreadPool
from typing import Any, Iterator

import apache_beam as beam
import zstandard
from apache_beam import coders, pvalue
from apache_beam.transforms import window

from transforms import batching, progress, s3, write
from transforms.batching import BatchingMode, ForwardedBatch, Merger
from transforms.grouping import split_sessions, window_start_us
from transforms.naming import DateFolders
from transforms.shuffled import ShuffleCodec, ShuffledBatch

SUFFIX = ".spill"
_PART = ".part"
_FRAME = struct.Struct(">I")
BATCH_CODER = coders.TupleCoder(
    [coders.StrUtf8Coder(), coders.registry.get_coder(ShuffledBatch)]
)
# ((app, date folder, shard, file window start), `write.file_entry`)
LINE_CODER = coders.TupleCoder([
    coders.TupleCoder([coders.StrUtf8Coder(), coders.StrUtf8Coder(), coders.VarIntCoder(),
                       coders.VarIntCoder()]),
    coders.TupleCoder([coders.VarIntCoder(), coders.VarIntCoder(), coders.BytesCoder()]),
])
# Devices are spread over this many shards (by a stable hash): a worker groups a
# slice of one shard at a time, and shards keep two or more workers busy.
BATCH_SHARDS = 16
# A bundle keeps up to this much per file before appending it, and up to
# _BUFFERED_BYTES over all its files (then it appends its largest buffers until it
# holds half that): memory stays small, and blocks large, whatever the input.
_FLUSH_BYTES = 1 << 20
_BUFFERED_BYTES = 32 << 20
_ZSTD_LEVEL = 1
# Files of one window written at once (gzip and the PUT release the GIL).
UPLOAD_THREADS = 4


def slice_start_s(arrival_ms: int, slice_s: int) -> int:
    """The start (epoch seconds) of the UTC-aligned slice holding an arrival time."""
    arrival_s = arrival_ms // 1000
    return arrival_s - arrival_s % slice_s


def batch_folder(spill_dir: str, shard: int, slice_start: int) -> str:
    return os.path.join(spill_dir, "batches", str(shard), str(slice_start))


def window_folder(spill_dir: str, window_start_us: int) -> str:
    return os.path.join(spill_dir, "windows", str(window_start_us))


def line_folder(spill_dir: str, window_start_us: int) -> str:
    return os.path.join(spill_dir, "lines", str(window_start_us))


def spill_files(folder: str) -> list[str]:
    """The finished spill files in a folder."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith(SUFFIX))


def shard_slices(spill_dir: str, shard: int) -> list[int]:
    """The starts of a shard's slices that have spill files, earliest first."""
    folder = os.path.join(spill_dir, "batches", str(shard))
    if not os.path.isdir(folder):
        return []
    return sorted(int(name) for name in os.listdir(folder)
                  if spill_files(batch_folder(spill_dir, shard, int(name))))


def frame(element: Any, coder: coders.Coder = BATCH_CODER) -> bytes:
    """One element as it is stored in a block: its length, then its bytes."""
    encoded = coder.encode(element)
    return _FRAME.pack(len(encoded)) + encoded


def block(frames: bytes) -> bytes:
    """Frames as they are stored in a file: compressed, after their length."""
    compressed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(frames)
    return _FRAME.pack(len(compressed)) + compressed


def read_frames(path: str, coder: coders.Coder = BATCH_CODER) -> Iterator:
    """The elements of one spill file, in the order written."""
    decompressor = zstandard.ZstdDecompressor()
    with open(path, "rb") as stream:
        while True:
            head = stream.read(_FRAME.size)
            if not head:
                return
            if len(head) < _FRAME.size:
                raise EOFError(f"{path}: spill file ends inside a block header")
            (size,) = _FRAME.unpack(head)
            compressed = stream.read(size)
            if len(compressed) < size:
                raise EOFError(f"{path}: spill file ends inside a block")
            frames = decompressor.decompress(compressed)
            at = 0
            while at < len(frames):
                (size,) = _FRAME.unpack_from(frames, at)
                at += _FRAME.size
                yield coder.decode(frames[at:at + size])
                at += size


class BundleFiles:
    """One bundle's spill files, a file per folder, appended through small buffers;
    each named `.part` until `commit` (at the bundle's end)."""

    def __init__(self, coder: coders.Coder):
        self._coder = coder
        self._name = uuid.uuid4().hex + SUFFIX
        self._buffers: dict[str, bytearray] = {}
        self._buffered = 0
        self._written: set[str] = set()

    def add(self, folder: str, element: Any) -> None:
        buffer = self._buffers.setdefault(folder, bytearray())
        framed = frame(element, self._coder)
        buffer += framed
        self._buffered += len(framed)
        if len(buffer) >= _FLUSH_BYTES:
            self._flush(folder)
        elif self._buffered >= _BUFFERED_BYTES:  # many folders at once: the largest first
            for each in sorted(self._buffers, key=lambda f: len(self._buffers[f]), reverse=True):
                self._flush(each)
                if self._buffered < _BUFFERED_BYTES // 2:
                    break

    def commit(self) -> None:
        """Makes the files visible."""
        for folder in list(self._buffers):
            self._flush(folder)
        for folder in self._written:
            path = os.path.join(folder, self._name)
            os.replace(path + _PART, path)

    def _flush(self, folder: str) -> None:
        buffer = self._buffers.pop(folder)
        self._buffered -= len(buffer)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, self._name) + _PART, "ab") as out:
            out.write(block(buffer))
        self._written.add(folder)


def _in_global_window(value: Any) -> window.WindowedValue:
    return window.GlobalWindows.windowed_value(value)


@dataclasses.dataclass(frozen=True)
class Grouping:
    """The unsliced run's grouping, per device and window (`transforms.batching`),
    as a sliced run applies it in a worker to batches read from its spill."""

    mode: BatchingMode
    window_size_s: int
    session_gap_s: int
    codec: ShuffleCodec
    date_folders: DateFolders
    file_shards: int

    @property
    def per_device(self) -> bool:
        """Whether a device's batches must meet before their windows are known
        (sessions); else a batch's arrival gives its file window."""
        return self.mode is BatchingMode.SESSIONS

    def outbound(
        self, keyed: list, merger: Merger, open_after_ms: int | None = None
    ) -> tuple[list, list]:
        """(outbound batches or dead letters, each with its time in µs; the batches of
        sessions still open at `open_after_ms`)."""
        size_us = self.window_size_s * 1_000_000
        if self.mode is BatchingMode.PER_EVENT:
            return [(forwarded, element[1].arrival_ms * 1000) for element in keyed
                    for forwarded in batching.per_event(element, self.codec)], []
        groups: dict[Any, list[ShuffledBatch]] = defaultdict(list)
        if self.mode is BatchingMode.FIXED:
            for element in keyed:
                key, shuffled = batching.fixed_window_key(element, size_us)
                groups[key].append(shuffled)
            return [(out, batching.window_end_us(start, size_us))
                    for (device, start), batches in groups.items()
                    for out in merger.merged(device, batches)], []
        for device, shuffled in keyed:
            groups[device].append(shuffled)
        outbound: list[tuple[ForwardedBatch | pvalue.TaggedOutput, int]] = []
        carried = []
        for device, batches in groups.items():
            for session, end_ms in split_sessions(batches, self.session_gap_s * 1000):
                if open_after_ms is not None and end_ms > open_after_ms:
                    carried += [(device, item) for item in session]
                else:
                    outbound += [(out, batching.session_end_us(end_ms))
                                 for out in merger.merged(device, session)]
        return outbound, carried

    def file_entries(self, outbound: list) -> Iterator:
        """Outbound batches → (file group, file_entry) in their file windows; dead
        letters as they are."""
        for forwarded, timestamp_us in outbound:
            if isinstance(forwarded, pvalue.TaggedOutput):
                yield forwarded
            else:
                yield write.file_entry_at(
                    forwarded, timestamp_us, self.date_folders, self.file_shards, self.codec,
                    self.window_size_s * 1_000_000,
                )


class SpillBatches(beam.DoFn):
    """(device, ShuffledBatch) → appended to this bundle's file of its file window
    or (sessions) of its device shard and slice; emits, once the bundle has
    finished, each window or shard it wrote to."""

    def __init__(self, spill_dir: str, slice_s: int, grouping: Grouping):
        self._spill_dir = spill_dir
        self._slice_s = slice_s
        self._grouping = grouping

    def start_bundle(self):
        self._files = BundleFiles(BATCH_CODER)
        self._written: set[int] = set()

    def process(self, keyed: tuple[str, ShuffledBatch]) -> Iterator:
        arrival_ms = keyed[1].arrival_ms
        if self._grouping.per_device:
            unit = write.stable_shard(keyed[0], BATCH_SHARDS)
            folder = batch_folder(
                self._spill_dir, unit, slice_start_s(arrival_ms, self._slice_s)
            )
        else:
            unit = window_start_us(arrival_ms * 1000, self._grouping.window_size_s * 1_000_000)
            folder = window_folder(self._spill_dir, unit)
        self._files.add(folder, keyed)
        self._written.add(unit)
        return iter(())

    def finish_bundle(self):
        self._files.commit()
        for unit in sorted(self._written):
            yield _in_global_window(unit)


class GroupShard(beam.DoFn):
    """Device shard → its outbound batches (sessions), as file lines spilled per
    file window; emits, once the bundle has finished, each file window it wrote
    to. Groups that cannot be merged go to DEAD_LETTERS (see `Merger`)."""

    def __init__(
        self, spill_dir: str, slice_s: int, grouping: Grouping, input_connection: s3.S3Connection
    ):
        self._spill_dir = spill_dir
        self._slice_s = slice_s
        self._grouping = grouping
        self._input_connection = input_connection

    def setup(self):
        self._merger = Merger(self._grouping.codec, self._input_connection)

    def start_bundle(self):
        self._lines = BundleFiles(LINE_CODER)
        self._windows: set[int] = set()

    def process(self, shard: int) -> Iterator:
        carried: list[tuple[str, ShuffledBatch]] = []  # sessions open at the last slice's end
        starts = shard_slices(self._spill_dir, shard)
        for index, start in enumerate(starts):
            keyed = carried + [
                element for path in spill_files(batch_folder(self._spill_dir, shard, start))
                for element in read_frames(path)
            ]
            open_after_ms = (start + self._slice_s) * 1000 if index + 1 < len(starts) else None
            outbound, carried = self._grouping.outbound(keyed, self._merger, open_after_ms)
            for entry in self._grouping.file_entries(outbound):
                if isinstance(entry, pvalue.TaggedOutput):
                    yield entry
                    continue
                window_start = entry[0][-1]
                self._lines.add(line_folder(self._spill_dir, window_start), entry)
                self._windows.add(window_start)

    def finish_bundle(self):
        self._lines.commit()
        for window_start in sorted(self._windows):
            yield _in_global_window(window_start)


class WriteSpilledWindow(beam.DoFn):
    """File window start → its files: the window's spilled batches grouped and
    merged (or, for sessions, its spilled file lines), grouped per file (app, date
    folder, shard), packed and written, UPLOAD_THREADS at once. Groups that cannot
    be merged go to DEAD_LETTERS."""

    def __init__(
        self,
        spill_dir: str,
        grouping: Grouping,
        location: str,
        connection: s3.S3Connection,
        namer: write.BatchFileNamer,
        max_batches: int,
        max_bytes: int,
        upload_day: str | None,
    ):
        self._spill_dir = spill_dir
        self._grouping = grouping
        self._location = location
        self._connection = connection
        self._namer = namer
        self._max_batches = max_batches
        self._max_bytes = max_bytes
        self._upload_day = upload_day

    def setup(self):
        self._merger = Merger(self._grouping.codec, self._connection)
        self._writer = write.FileWriter(self._location, self._connection, self._namer,
                                        write.BATCH_FILE_COUNTERS)
        # Daemon threads (unlike concurrent.futures'): a worker whose runner is gone
        # exits instead of waiting out its uploads' retries.
        self._uploads = ThreadPool(UPLOAD_THREADS)

    def process(self, window_start_us: int) -> Iterator:
        if self._grouping.per_device:  # lines that GroupShard wrote
            folder = line_folder(self._spill_dir, window_start_us)
            entries = (entry for path in spill_files(folder)
                       for entry in read_frames(path, LINE_CODER))
        else:
            folder = window_folder(self._spill_dir, window_start_us)
            keyed = [element for path in spill_files(folder) for element in read_frames(path)]
            entries = self._grouping.file_entries(self._grouping.outbound(keyed, self._merger)[0])
        groups: dict[tuple, list] = defaultdict(list)
        for entry in entries:
            if isinstance(entry, pvalue.TaggedOutput):
                yield entry
            else:
                groups[entry[0]].append(entry[1])
        contents = [
            content for group in sorted(groups)
            for content in write.packed_files(
                (group, groups.pop(group)), self._max_batches, self._max_bytes,
                self._grouping.codec, self._upload_day,
            )
        ]
        # Uploaded in threads, counted here: Beam's counters belong to the bundle's thread.
        for content, uploaded in zip(
            contents, self._uploads.imap(self._writer.upload, contents), strict=True
        ):
            yield self._writer.count(content, uploaded)

    def finish_bundle(self):
        progress.flush()

    def teardown(self):
        uploads = getattr(self, "_uploads", None)
        if uploads is not None:
            uploads.close()
            uploads.join()
