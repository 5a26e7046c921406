"""PackFiles, WriteBatchFiles and WriteDeadLetters: NDJSON files, written once.

Forwarded batches are packed per app name × date folder × shard × window
pane into files bounded by batches and bytes, then each file is written under
a key derived from its content (see `naming`), so a retried or re-run write
finds its own file instead of adding a second copy.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import time
import zlib
from multiprocessing.pool import ThreadPool
from typing import Callable, ClassVar, Iterable, Iterator

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from transforms import metrics
from transforms.batching import late_firing_windowing, numbered
from transforms.io import progress, retries, s3, stores
from transforms.outputs import as_is
from transforms.rules import batch_json, naming, packing, parquet_rows
from transforms.rules.grouping import window_start_us
from transforms.shuffled import NO_DICTIONARY, ShuffleCodec
from transforms.values import Batching, FileContent, FileLayout, FileWritten, ForwardedBatch

DEFAULT_LAYOUT = FileLayout()
GZIP_LEVEL = 6  # zlib's default: most of level 9's ratio at a fraction of its CPU
# Files written at once where a stage has several at hand (`FileWriter.start`).
UPLOAD_THREADS = 4


def stable_shard(text: str, shards: int) -> int:
    """A shard that does not change between runs or workers (unlike hash())."""
    return zlib.crc32(text.encode("utf-8")) % shards if shards > 1 else 0


@dataclasses.dataclass(frozen=True)
class BatchFileNamer:
    """`[folder/][YYYY-MM-DD/]<App>_<timestamp>_<digits>.txt[.gz]` (`.parquet`)."""

    folder: str | None
    compress: bool
    parquet: bool = False

    @classmethod
    def of(cls, layout: FileLayout) -> BatchFileNamer:
        return cls(layout.folder, layout.compress, layout.output_format == "parquet")

    def key(self, content: FileContent, sha256: str, attempt: int) -> str:
        name = naming.file_name(
            content.app_name,
            content.newest_arrival_ms,
            naming.file_digits(sha256, attempt),
            self.compress,
            self.parquet,
        )
        return naming.join_key(self.folder, content.date_folder, name)


@dataclasses.dataclass(frozen=True)
class DeadLetterNamer:
    """`<prefix>/dead_letters_<content hash>[_<attempt>].ndjson`."""

    prefix: str
    # Dead letters are plain NDJSON, whatever the output's compression and format.
    compress: ClassVar[bool] = False
    parquet: ClassVar[bool] = False

    def key(self, content: FileContent, sha256: str, attempt: int) -> str:
        suffix = f"_{attempt}" if attempt else ""
        return naming.join_key(self.prefix, f"dead_letters_{sha256[:20]}{suffix}.ndjson")


def file_body(lines: list[bytes], compress: bool, parquet: bool = False) -> bytes:
    """NDJSON: each line and a newline; gzip with no timestamp, so the same lines
    give the same bytes (and the same name) on every run. Or the lines' rows in
    Parquet (`parquet_rows`), deterministic too."""
    if parquet:
        return parquet_rows.file_bytes(lines, compress)
    body = b"\n".join([*lines, b""])  # one copy of the lines (`+ b"\n"` made a second)
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0) if compress else body


def _entry_bytes(entry: tuple[int, int, bytes]) -> int:
    return packing.line_bytes(entry[2])


def file_entry(
    arrival_ms: int, events: int, line: bytes, codec: ShuffleCodec
) -> tuple[int, int, bytes]:
    """One line of a file as it crosses the shuffle to _PackFilesFn (compressed)."""
    return arrival_ms, events, codec.compress(line)


def file_contents(
    app_name: str, date_folder: str, entries: Iterable[tuple[int, int, bytes]],
    max_batches: int, max_bytes: int,
) -> Iterator[FileContent]:
    """(arrival_ms, events, line) entries of one file group → its files, within the
    bounds, in a stable order (sorted, so input order never matters)."""
    for chunk in packing.pack(sorted(entries), _entry_bytes, max_batches, max_bytes):
        yield FileContent(
            app_name,
            date_folder,
            [line for _, _, line in chunk],
            max(arrival for arrival, _, _ in chunk),
            sum(events for _, events, _ in chunk),
        )


def write_file(
    store: stores.ObjectStore, prefix: str, namer, content: FileContent
) -> tuple[str, stores.Outcome, int]:
    """One file, written once under the name its content gives: (key, outcome, bytes)."""
    body = file_body(content.lines, namer.compress, namer.parquet)
    sha256 = hashlib.sha256(body).hexdigest()

    def key_for_attempt(attempt: int) -> str:
        return naming.join_key(prefix, namer.key(content, sha256, attempt))

    key, outcome = stores.write_once(store, key_for_attempt, body, sha256)
    return key, outcome, len(body)


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


def packed_files(
    element: tuple[tuple, Iterable[tuple]], max_batches: int, max_bytes: int, codec: ShuffleCodec,
    upload_day: str | None,
) -> Iterator[FileContent]:
    """One file group ((app, date[, ...]), [file_entry]) → its files; a date folder of
    naming.UPLOAD_DAY becomes `upload_day`."""
    (app_name, date_folder, *_), values = element
    decompress = codec.decompress
    entries = [(arrival, events, decompress(line)) for arrival, events, line in values]
    folder = naming.resolve_upload_day(date_folder, upload_day)
    yield from file_contents(app_name, folder, entries, max_batches, max_bytes)


class _WriteFilesFn(beam.DoFn):
    """FileContent → FileWritten: one write-once object per file, counted.

    A bundle's files are written UPLOAD_THREADS at once (`FileWriter.start`: the gzip,
    the digest and the PUT release the GIL, so a window's files are compressed on
    every core rather than one after another on one), at most that many held in
    memory; each comes out in its own window and pane once written, in order."""

    def __init__(self, location: str, connection: s3.S3Connection, namer, counter_names: dict):
        self._location = location
        self._connection = connection
        self._namer = namer
        self._counter_names = counter_names

    def setup(self):
        self._writer = FileWriter(self._location, self._connection, self._namer,
                                  self._counter_names)

    def start_bundle(self):
        self._writing: collections.deque = collections.deque()

    def process(
        self, content: FileContent, timestamp=beam.DoFn.TimestampParam,
        file_window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam,
    ) -> Iterator[WindowedValue]:
        self._writing.append((self._writer.start(content), timestamp, file_window, pane))
        while len(self._writing) > UPLOAD_THREADS:
            yield self._first_written()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        while self._writing:
            yield self._first_written()
        progress.flush()

    def _first_written(self) -> WindowedValue:
        written, timestamp, file_window, pane = self._writing.popleft()
        value = WindowedValue(written(), timestamp, [file_window], pane)
        if isinstance(file_window, IntervalWindow):  # live: windows in time, not in keys
            latency_ms = max(int(time.time() * 1000) - file_window.end.micros // 1000, 0)
            metrics.counter(metrics.window_to_file_bucket(latency_ms)).inc()
            metrics.counter(metrics.WINDOW_TO_FILE_SUM).inc(latency_ms)
        return value

    def teardown(self):
        self._writer.close()


class FileWriter:
    """Writes files once and counts them; made in a DoFn's `setup`, counted in the
    bundle's thread (Beam's counters belong to it)."""

    def __init__(self, location: str, connection: s3.S3Connection, namer, counter_names: dict):
        self._store, self._prefix = stores.open_store(location, connection)
        self._namer = namer
        self._counters = {k: metrics.counter(v) for k, v in counter_names.items()}
        self._present = metrics.counter(metrics.FILES_ALREADY_PRESENT)
        self._uploads: ThreadPool | None = None

    def write(self, content: FileContent) -> FileWritten:
        return self.count(content, self.upload(content))

    def start(self, content: FileContent) -> Callable[[], FileWritten]:
        """Starts writing `content` in one of UPLOAD_THREADS threads (gzip and the PUT
        release the GIL) → what, called in the bundle's thread, waits for it (raising
        what it raised) and counts it."""
        if self._uploads is None:
            # Daemon threads (unlike concurrent.futures'): a worker whose runner is gone
            # exits instead of waiting out its uploads' retries.
            self._uploads = ThreadPool(UPLOAD_THREADS)
        uploading = self._uploads.apply_async(self.upload, (content,))
        return lambda: self.count(content, uploading.get())

    def write_all(self, contents: list[FileContent]) -> Iterator[FileWritten]:
        """Several files at once (`start`), counted in order."""
        for written in [self.start(content) for content in contents]:
            yield written()

    def close(self) -> None:
        """Ends the upload threads (a DoFn's `teardown`)."""
        if self._uploads is not None:
            self._uploads.close()
            self._uploads.join()
            self._uploads = None

    def upload(self, content: FileContent) -> tuple[str, stores.Outcome, int]:
        """The upload alone, safe in any thread: (key, outcome, bytes)."""
        return write_file(self._store, self._prefix, self._namer, content)

    def count(
        self, content: FileContent, uploaded: tuple[str, stores.Outcome, int]
    ) -> FileWritten:
        """Counts an upload, in the bundle's thread."""
        key, outcome, size = uploaded
        retries.report_outcomes()
        if outcome is stores.Outcome.ALREADY_PRESENT:
            self._present.inc()
        self._counters["files"].inc()
        self._counters["bytes"].inc(size)
        self._counters["lines"].inc(len(content.lines))
        if "events" in self._counters:
            self._counters["events"].inc(content.event_count)
            progress.report(events=content.event_count, files=1)
        return FileWritten(key, outcome.value, len(content.lines), content.event_count, size)


BATCH_FILE_COUNTERS = {
    "files": metrics.FILES_WRITTEN,
    "bytes": metrics.BYTES_WRITTEN,
    "lines": metrics.BATCHES_FORWARDED,
    "events": metrics.EVENTS_FORWARDED,
}
_DEAD_LETTER_COUNTERS = {
    "files": metrics.DEAD_LETTER_FILES,
    "bytes": metrics.DEAD_LETTER_BYTES,
    "lines": metrics.DEAD_LETTER_RECORDS,
}


def _file_entry_in_window(
    forwarded: ForwardedBatch, layout: FileLayout, codec: ShuffleCodec, size_us: int,
    timestamp=beam.DoFn.TimestampParam,
):
    return file_entry_at(forwarded, timestamp.micros, layout, codec, size_us)


def file_entry_at(
    forwarded: ForwardedBatch, timestamp_us: int, layout: FileLayout, codec: ShuffleCodec,
    size_us: int,
) -> tuple[tuple, tuple[int, int, bytes]]:
    """((app, date folder, shard, file window start), file_entry) of an outbound batch
    at its time (bounded input: the file's window in the key)."""
    group, value = _file_entry(forwarded, layout, codec)
    return (*group, window_start_us(timestamp_us, size_us)), value


def _file_entry(forwarded: ForwardedBatch, layout: FileLayout, codec: ShuffleCodec):
    folder = naming.batch_date_folder(forwarded.first_event_ms, layout.date_folders)
    group = (forwarded.app_name, folder, stable_shard(forwarded.device, layout.shards))
    return group, file_entry(
        forwarded.newest_arrival_ms, forwarded.event_count, forwarded.line, codec
    )


class WriteBatchFiles(beam.PTransform):
    """ForwardedBatch → FileWritten: packed into files per window pane, written to S3."""

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
        placed: Callable[..., beam.PTransform] = as_is,
    ):
        """Files are packed per fixed window of `batching`; late panes within its
        allowed lateness go out as further files.
        `early_firing_s`, `late_firing_s`: see `transforms.batching.late_firing_windowing`.
        `keyed_windows`: bounded input only; the file's window goes into the key
        and the grouping is in the global window (see `transforms.batching`).
        `codec`: how lines are compressed on their way through the shuffle.
        `upload_day`: YYYY-MM-DD for date folders by upload time in a bounded run;
        None: each file's window close (live).
        `placed`: each step before the files' grouping (which a runner runs in the
        stage that made the batches) and the part of the batches it takes → the step
        applied, for example in that stage's SDK harness
        (`transforms.batching.BatchPerDevice.placed`). The batches may be a tuple of
        PCollections, each made in a harness of its own: each part is keyed by file
        where it was made, then they are grouped together."""
        super().__init__()
        self._output = output
        self._connection = connection
        self._layout = layout
        self._batching = batching
        self._early_firing_s = early_firing_s
        self._late_firing_s = late_firing_s
        self._keyed_windows = keyed_windows
        self._codec = codec
        self._upload_day = upload_day
        self._placed = placed

    def _grouped(self, forwarded):
        layout, placed = self._layout, self._placed
        if self._keyed_windows:
            return forwarded | "KeyByFileWindow" >> placed(beam.Map(
                _file_entry_in_window, layout, self._codec, self._batching.window_size_us
            )) | "GroupPerFile" >> beam.GroupByKey()
        parts = forwarded if isinstance(forwarded, tuple) else (forwarded,)
        # One windowing for every part (one trigger object: Beam compares triggers by
        # identity, and warns at a Flatten of unequal windowings).
        files = late_firing_windowing(
            window.FixedWindows(self._batching.window_size_s),
            self._batching.allowed_lateness_s,
            self._early_firing_s,
            self._late_firing_s,
        ).windowing
        keyed = [
            batches
            | numbered("KeyByFile", part, len(parts)) >> placed(
                beam.Map(_file_entry, layout, self._codec), part)
            | numbered("WindowForFiles", part, len(parts)) >> placed(
                beam.WindowInto(files, allowed_lateness=files.allowed_lateness), part)
            for part, batches in enumerate(parts)]
        if len(keyed) > 1:
            keyed = [keyed | "AllKeyed" >> beam.Flatten()]
        return keyed[0] | "GroupPerFile" >> beam.GroupByKey()

    def expand(self, forwarded):
        return _packed_and_written(
            self._grouped(forwarded), self._layout, self._codec, self._upload_day,
            _WriteFilesFn(self._output, self._connection, BatchFileNamer.of(self._layout),
                          BATCH_FILE_COUNTERS),
            count_panes=not self._keyed_windows,
        )


def _packed_and_written(grouped, layout: FileLayout, codec: ShuffleCodec,
                        upload_day: str | None, write_fn: _WriteFilesFn, count_panes: bool = False):
    """File groups → their files packed within the layout's bounds → written."""
    return (
        grouped
        | "PackFiles" >> beam.ParDo(
            _PackFilesFn(layout.max_batches, layout.max_bytes, codec, upload_day, count_panes))
        | "WriteFiles" >> beam.ParDo(write_fn)
    )


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
        `late_firing_s`: `pipeline.runners.batches_late_files`)."""
        super().__init__()
        self._write_fn = _WriteFilesFn(location, connection, DeadLetterNamer(""),
                                       _DEAD_LETTER_COUNTERS)
        self._bounds = bounds
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
        codec = NO_DICTIONARY  # dead letters are few and unlike each other
        grouped = (
            letters
            | "Encode" >> beam.Map(
                lambda letter: (("", "", 0), file_entry(0, 0, batch_json.encode(letter), codec))
            )
            | "WindowForFiles" >> self._windowing()
            | "GroupPerFile" >> beam.GroupByKey()
        )
        return _packed_and_written(grouped, self._bounds, codec, None, self._write_fn)
