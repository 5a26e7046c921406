"""WriteBatchFiles and WriteDeadLetters: files written once.

Forwarded batches are keyed by file group (app name × date folder × shard) and
windowed (`KeyForFiles`), then grouped per window pane and packed into files bounded
by batches and bytes, each written under a key derived from its content
(`PackAndWriteFiles`), so a retried or re-run write finds its own file instead of
adding a second copy. The file format and the file naming are values of their own
(`transforms.machinery.files`).

WriteBatchFiles is those two steps: whoever builds a graph whose batches are made in
several places may key them where each was made, flatten them, and pack and write
them together.
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from transforms import metrics
from transforms.io import progress, s3
from transforms.machinery.files import (
    BATCH_FILE_COUNTERS,
    DEAD_LETTER_COUNTERS,
    UPLOAD_THREADS,
    BatchFileNaming,
    DeadLetterNaming,
    FileFormat,
    FileNaming,
    FileWriter,
    Ndjson,
    Uploads,
    file_entry,
    file_entry_at,
    format_of,
    group_entry,
    packed_files,
)
from transforms.machinery.shuffled import NO_DICTIONARY, ShuffleCodec
from transforms.machinery.windows import late_firing_windowing
from transforms.rules import batch_json, naming
from transforms.values import Batching, FileContent, FileLayout, FileWritten, ForwardedBatch

__all__ = ["DEAD_LETTER_FORMAT", "KeyForFiles", "PackAndWriteFiles", "WriteBatchFiles",
           "WriteDeadLetters", "files_windowing"]

DEFAULT_LAYOUT = FileLayout()
# Dead letters are plain NDJSON, whatever the output's compression and format.
DEAD_LETTER_FORMAT = Ndjson(stem_extension=".ndjson")


class _PackFilesFn(beam.DoFn):
    """((app, date, shard[, window]), [file_entry]) → FileContent, in a stable order.

    `upload_day`: the day that names files whose date folder is their upload day;
    None: the day their window closes (live files).
    `count_panes`: count the groups by their pane's timing (`metrics.FILE_PANES_PREFIX`):
    how many fired early, on time and late, which is what decides how many files a
    live run writes per window."""

    def __init__(
        self, max_batches: int, max_bytes: int, codec: ShuffleCodec, upload_day: str | None = None,
        count_panes: bool = False,
    ):
        self._max_batches = max_batches
        self._max_bytes = max_bytes
        self._codec = codec
        self._upload_day = upload_day
        self._count_panes = count_panes

    def setup(self):
        self._panes = {
            timing: metrics.counter(metrics.FILE_PANES_PREFIX + name)
            for timing, name in _PANE_TIMINGS.items()
        } if self._count_panes else {}

    def process(
        self, element: tuple[tuple, Iterable[tuple]], window=beam.DoFn.WindowParam,
        pane=beam.DoFn.PaneInfoParam,
    ) -> Iterator[FileContent]:
        if self._panes:
            self._panes[pane.timing].inc()
        upload_day = self._upload_day
        if upload_day is None and isinstance(window, IntervalWindow):
            upload_day = naming.window_close_day(window.end.micros // 1000)
        yield from packed_files(
            element, self._max_batches, self._max_bytes, self._codec, upload_day
        )


_PANE_TIMINGS = {
    PaneInfoTiming.EARLY: "early",
    PaneInfoTiming.ON_TIME: "on_time",
    PaneInfoTiming.LATE: "late",
    PaneInfoTiming.UNKNOWN: "unknown",  # a runner that says none
}


class _WriteFilesFn(beam.DoFn):
    """FileContent → FileWritten: one write-once object per file, counted.

    A bundle's files are written UPLOAD_THREADS at once (`FileWriter.start`: the gzip,
    the digest and the PUT release the GIL, so a window's files are compressed on
    every core rather than one after another on one), at most that many held in
    memory; each comes out in its own window and pane once written, in order."""

    def __init__(self, location: str, connection: s3.S3Connection, file_format: FileFormat,
                 file_naming: FileNaming, counter_names: dict):
        self._location = location
        self._connection = connection
        self._format = file_format
        self._naming = file_naming
        self._counter_names = counter_names

    def setup(self):
        self._writer = FileWriter(self._location, self._connection, self._format,
                                  self._naming, self._counter_names)

    def start_bundle(self):
        self._uploads = Uploads(self._writer)

    def process(
        self, content: FileContent, timestamp=beam.DoFn.TimestampParam,
        file_window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam,
    ) -> Iterator[WindowedValue]:
        self._uploads.start(content, (timestamp, file_window, pane))
        yield from self._written()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        yield from self._written(keep=0)
        progress.flush()

    def _written(self, keep: int = UPLOAD_THREADS) -> Iterator[WindowedValue]:
        for written, (timestamp, file_window, pane) in self._uploads.finished(keep):
            yield self._windowed(written, timestamp, file_window, pane)

    @staticmethod
    def _windowed(written: FileWritten, timestamp, file_window, pane) -> WindowedValue:
        value = WindowedValue(written, timestamp, [file_window], pane)
        if isinstance(file_window, IntervalWindow):  # live: windows in time, not in keys
            latency_ms = max(int(time.time() * 1000) - file_window.end.micros // 1000, 0)
            metrics.counter(metrics.window_to_file_bucket(latency_ms)).inc()
            metrics.counter(metrics.WINDOW_TO_FILE_SUM).inc(latency_ms)
        return value

    def teardown(self):
        self._writer.close()


def _file_entry_in_window(
    forwarded: ForwardedBatch, layout: FileLayout, codec: ShuffleCodec, size_us: int,
    timestamp=beam.DoFn.TimestampParam,
):
    return file_entry_at(forwarded, timestamp.micros, layout, codec, size_us)


def files_windowing(batching: Batching, early_firing_s: float = 0, late_firing_s: float = 0):
    """The windowing of a live run's files: fixed windows of `batching`, late panes
    within its allowed lateness as further files. `early_firing_s`, `late_firing_s`:
    see `transforms.machinery.windows.late_firing_windowing`. One object for every
    part of a graph's batches (Beam compares triggers by identity, and warns at a
    Flatten of unequal windowings)."""
    return late_firing_windowing(
        window.FixedWindows(batching.window_size_s), batching.allowed_lateness_s,
        early_firing_s, late_firing_s,
    ).windowing


class KeyForFiles(beam.PTransform):
    """ForwardedBatch → ((app, date folder, shard[, file window start]), file_entry):
    each batch keyed by the file group it goes into, in its file window.

    `keyed_windows`: bounded input only; the file's window goes into the key and the
    grouping is in the global window (see `transforms.batching`); else `windowing`
    (`files_windowing`) puts each batch in its window."""

    def __init__(self, layout: FileLayout, batching: Batching, codec: ShuffleCodec,
                 keyed_windows: bool = False, windowing=None):
        super().__init__()
        self._layout = layout
        self._batching = batching
        self._codec = codec
        self._keyed_windows = keyed_windows
        self._windowing = windowing if windowing is not None else files_windowing(batching)

    def expand(self, forwarded):
        if self._keyed_windows:
            return forwarded | "KeyByFileWindow" >> beam.Map(
                _file_entry_in_window, self._layout, self._codec, self._batching.window_size_us)
        return (forwarded
                | "KeyByFile" >> beam.Map(group_entry, self._layout, self._codec)
                | "WindowForFiles" >> beam.WindowInto(
                    self._windowing, allowed_lateness=self._windowing.allowed_lateness))


class PackAndWriteFiles(beam.PTransform):
    """(file group, file_entry) → FileWritten: grouped per file group and window pane,
    packed into files within the layout's bounds, each written once.

    `output`: an s3:// prefix or a local directory. `file_format`, `file_naming`: how
    a file's lines become its bytes, and its key (`transforms.machinery.files`).
    `upload_day`: YYYY-MM-DD for date folders by upload time in a bounded run; None:
    each file's window close (live). `counters`: BATCH_FILE_COUNTERS or
    DEAD_LETTER_COUNTERS. `count_panes`: count the file groups per pane timing."""

    def __init__(self, output: str, connection: s3.S3Connection, layout: FileLayout,
                 file_format: FileFormat, file_naming: FileNaming, *,
                 codec: ShuffleCodec = NO_DICTIONARY, upload_day: str | None = None,
                 counters: dict = BATCH_FILE_COUNTERS, count_panes: bool = False):
        super().__init__()
        self._pack_fn = _PackFilesFn(layout.max_batches, layout.max_bytes, codec, upload_day,
                                     count_panes)
        self._write_fn = _WriteFilesFn(output, connection, file_format, file_naming, counters)

    def expand(self, keyed):
        return (
            keyed
            | "GroupPerFile" >> beam.GroupByKey()
            | "PackFiles" >> beam.ParDo(self._pack_fn)
            | "WriteFiles" >> beam.ParDo(self._write_fn)
        )


class WriteBatchFiles(beam.PTransform):
    """ForwardedBatch → FileWritten: packed into files per window pane, written to S3.

    `output`, `connection`: where (an s3:// prefix or a local directory), and how to
    reach it. `layout`: the files' folder, bounds, shards, format and compression.
    `batching`: files are packed per fixed window of it; late panes within its allowed
    lateness go out as further files. `early_firing_s`, `late_firing_s`: see
    `transforms.machinery.windows.late_firing_windowing`. `keyed_windows`, `codec`:
    see `KeyForFiles`. `upload_day`: see `PackAndWriteFiles`."""

    def __init__(
        self,
        output: str,
        connection: s3.S3Connection,
        layout: FileLayout,
        batching: Batching,
        *,
        early_firing_s: float = 0,
        late_firing_s: float = 0,
        keyed_windows: bool = False,
        codec: ShuffleCodec = NO_DICTIONARY,
        upload_day: str | None = None,
    ):
        super().__init__()
        self._key_for_files = KeyForFiles(
            layout, batching, codec, keyed_windows,
            files_windowing(batching, early_firing_s, late_firing_s))
        self._pack_and_write = PackAndWriteFiles(
            output, connection, layout, format_of(layout), BatchFileNaming(layout.folder),
            codec=codec, upload_day=upload_day, count_panes=not keyed_windows)

    def key_for_files(self) -> KeyForFiles:
        """The first step, for a graph that runs it where each part of its batches is
        made (it keeps the one windowing that every part must share)."""
        return self._key_for_files

    def pack_and_write(self) -> PackAndWriteFiles:
        """The second step, on the keyed batches of every part flattened."""
        return self._pack_and_write

    def expand(self, forwarded):
        return (forwarded | "KeyForFiles" >> self._key_for_files
                | "PackAndWriteFiles" >> self._pack_and_write)


class WriteDeadLetters(beam.PTransform):
    """Dead-letter dicts → NDJSON files under an s3:// prefix or a local directory."""

    def __init__(
        self,
        location: str,
        connection: s3.S3Connection,
        bounds: FileLayout = DEFAULT_LAYOUT,
        flush_after_s: int | None = None,
        allowed_lateness_s: int = 0,
        late_batched: bool = False,
    ):
        """`bounds`: the records and bytes of one file (its `max_batches`, `max_bytes`).
        `flush_after_s`: in streaming, a file per that many seconds of records.
        `late_batched`: a window's late records go out together, a pane `flush_after_s`
        after the first of them, rather than a file each (as `WriteBatchFiles`'s
        `late_firing_s`)."""
        super().__init__()
        # Dead letters are few and unlike each other: the default codec, no dictionary.
        self._pack_and_write = PackAndWriteFiles(
            location, connection, bounds, DEAD_LETTER_FORMAT, DeadLetterNaming(),
            counters=DEAD_LETTER_COUNTERS)
        self._flush_after_s = flush_after_s
        self._allowed_lateness_s = allowed_lateness_s
        self._late_batched = late_batched

    def _windowing(self):
        if self._flush_after_s is None:
            return beam.WindowInto(window.GlobalWindows())  # bounded: one pane at the end
        # Streaming: windows over the records' own time (the publish time), as for
        # forwarded files; late records go out in a further file.
        return late_firing_windowing(
            window.FixedWindows(self._flush_after_s), allowed_lateness_s=self._allowed_lateness_s,
            late_firing_s=self._flush_after_s if self._late_batched else 0,
        )

    def expand(self, letters):
        return (
            letters
            | "Encode" >> beam.Map(lambda letter: (
                ("", "", 0), file_entry(0, 0, batch_json.encode(letter), NO_DICTIONARY)))
            | "WindowForFiles" >> self._windowing()
            | "PackAndWriteFiles" >> self._pack_and_write
        )
