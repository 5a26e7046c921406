"""Files as the forwarder writes them, shaped as Beam's `fileio` shapes a sink: a file
format (how lines become a file's bytes) and a file naming (what key a file gets)
are two separate values, so a new format touches no naming, and the reverse.

- Formats: `Ndjson` (mParticle's newline-delimited JSON, gzipped or not) and
  `Parquet` (`transforms.rules.parquet_rows`). A CSV format would be one more class
  here with `body`, `extension` and `content_type`, and a choice in `format_of`.
- Namings: `BatchFileNaming` (mParticle's `[folder/][YYYY-MM-DD/]<App>_<timestamp>_<digits>`)
  and `DeadLetterNaming` (`dead_letters_<content hash>[_<attempt>]`); the format's
  extension ends the name.
- `FileWriter`: writes a file once under the name its content gives (a retried or
  re-run write finds its own file), several at once (`Uploads`), and counts it.
- File entries and packing: what a forwarded batch is on its way into a file, and
  how a file group's entries are packed into files within the layout's bounds.

Used by the Beam path (`transforms.write`) and by sliced runs (`transforms.spill`).
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import zlib
from multiprocessing.pool import ThreadPool
from typing import Any, Callable, Iterable, Iterator, Protocol

from transforms import metrics
from transforms.io import progress, retries, s3, stores
from transforms.machinery.shuffled import ShuffleCodec
from transforms.rules import naming, packing, parquet_rows
from transforms.rules.grouping import window_start_us
from transforms.values import FileContent, FileLayout, FileWritten, ForwardedBatch

__all__ = [
    "BATCH_FILE_COUNTERS", "DEAD_LETTER_COUNTERS", "GZIP_LEVEL", "UPLOAD_THREADS",
    "BatchFileNaming", "DeadLetterNaming", "FileFormat", "FileNaming", "FileWriter",
    "Ndjson", "Parquet", "Uploads", "file_contents", "file_entry", "file_entry_at", "format_of",
    "group_entry", "packed_files", "stable_shard", "write_file",
]

GZIP_LEVEL = 6  # zlib's default: most of level 9's ratio at a fraction of its CPU
# Files written at once where a stage has several at hand (`FileWriter.start`).
UPLOAD_THREADS = 4


class FileFormat(Protocol):
    """How a file's lines become its bytes."""

    extension: str  # what ends the file's name, such as ".txt.gz"
    content_type: str  # the object's media type

    def body(self, lines: list[bytes]) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Ndjson:
    """Each line and a newline; gzip (`compress`) with no timestamp, so the same lines
    give the same bytes (and the same name) on every run. `stem_extension`: ".txt"
    as mParticle names its files, ".ndjson" for dead letters."""

    compress: bool = False
    stem_extension: str = ".txt"
    content_type: str = "text/plain"  # gzipped too: `.txt.gz` is read by its extension

    @property
    def extension(self) -> str:
        return self.stem_extension + (".gz" if self.compress else "")

    def body(self, lines: list[bytes]) -> bytes:
        body = b"\n".join([*lines, b""])  # one copy of the lines (`+ b"\n"` made a second)
        return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0) if self.compress else body


@dataclasses.dataclass(frozen=True)
class Parquet:
    """The lines' rows in Parquet (`parquet_rows`), deterministic too; `compress`:
    inside the file, as Parquet compresses."""

    compress: bool = False
    extension: str = ".parquet"
    content_type: str = "application/vnd.apache.parquet"  # Parquet's registered media type

    def body(self, lines: list[bytes]) -> bytes:
        return parquet_rows.file_bytes(lines, self.compress)


def format_of(layout: FileLayout) -> FileFormat:
    """The format `--output_format` and `--use_compression` ask for."""
    if layout.output_format == "parquet":
        return Parquet(layout.compress)
    return Ndjson(layout.compress)


class FileNaming(Protocol):
    """What key a file gets, before the format's extension."""

    def stem(self, content: FileContent, sha256: str, attempt: int) -> str: ...


@dataclasses.dataclass(frozen=True)
class BatchFileNaming:
    """`[folder/][YYYY-MM-DD/]<App>_<timestamp>_<digits>`."""

    folder: str | None

    def stem(self, content: FileContent, sha256: str, attempt: int) -> str:
        name = naming.file_stem(content.app_name, content.newest_arrival_ms,
                                naming.file_digits(sha256, attempt))
        return naming.join_key(self.folder, content.date_folder, name)


@dataclasses.dataclass(frozen=True)
class DeadLetterNaming:
    """`dead_letters_<content hash>[_<attempt>]`."""

    def stem(self, content: FileContent, sha256: str, attempt: int) -> str:
        suffix = f"_{attempt}" if attempt else ""
        return f"dead_letters_{sha256[:20]}{suffix}"


def write_file(
    store: stores.ObjectStore, prefix: str, file_format: FileFormat, file_naming: FileNaming,
    content: FileContent,
) -> tuple[str, stores.Outcome, int]:
    """One file, written once under the name its content gives: (key, outcome, bytes)."""
    body = file_format.body(content.lines)
    sha256 = hashlib.sha256(body).hexdigest()

    def key_for_attempt(attempt: int) -> str:
        return naming.join_key(
            prefix, file_naming.stem(content, sha256, attempt) + file_format.extension)

    key, outcome = stores.write_once(store, key_for_attempt, body, sha256,
                                     file_format.content_type)
    return key, outcome, len(body)


# Which counters a FileWriter counts its files, bytes, lines and events in; without
# "events", it reports no progress either (dead letters are not what a run forwards).
BATCH_FILE_COUNTERS = {
    "files": metrics.FILES_WRITTEN,
    "bytes": metrics.BYTES_WRITTEN,
    "lines": metrics.BATCHES_FORWARDED,
    "events": metrics.EVENTS_FORWARDED,
}
DEAD_LETTER_COUNTERS = {
    "files": metrics.DEAD_LETTER_FILES,
    "bytes": metrics.DEAD_LETTER_BYTES,
    "lines": metrics.DEAD_LETTER_RECORDS,
}


class FileWriter:
    """Writes files once and counts them; made in a DoFn's `setup`, counted in the
    bundle's thread (Beam's counters belong to it).

    `location`: an s3:// prefix or a local directory; `counter_names`: which counters
    (BATCH_FILE_COUNTERS or DEAD_LETTER_COUNTERS)."""

    def __init__(self, location: str, connection: s3.S3Connection, file_format: FileFormat,
                 file_naming: FileNaming, counter_names: dict):
        self._store, self._prefix = stores.open_store(location, connection)
        self._format = file_format
        self._naming = file_naming
        self._counters = {k: metrics.counter(v) for k, v in counter_names.items()}
        self._forwards = "events" in counter_names
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

    def close(self) -> None:
        """Ends the upload threads (a DoFn's `teardown`)."""
        if self._uploads is not None:
            self._uploads.close()
            self._uploads.join()
            self._uploads = None

    def upload(self, content: FileContent) -> tuple[str, stores.Outcome, int]:
        """The upload alone, safe in any thread: (key, outcome, bytes)."""
        return write_file(self._store, self._prefix, self._format, self._naming, content)

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
        if self._forwards:
            self._counters["events"].inc(content.event_count)
            progress.report(events=content.event_count, files=1)
        return FileWritten(key, outcome.value, len(content.lines), content.event_count, size)


class Uploads:
    """A bundle's files on their way, written by a FileWriter UPLOAD_THREADS at once
    (`FileWriter.start`), each given back once written, in the order started: the
    bundle goes on (merging its next window) while they are compressed and sent."""

    def __init__(self, writer: FileWriter):
        self._writer = writer
        self._writing: collections.deque = collections.deque()

    def start(self, content: FileContent, context: Any = None) -> None:
        """Starts writing `content`; `finished` gives `context` back with it."""
        self._writing.append((self._writer.start(content), context))

    def finished(self, keep: int = UPLOAD_THREADS) -> Iterator[tuple[FileWritten, Any]]:
        """(FileWritten, context) of the files started, in order, each waited for,
        until at most `keep` are still on their way (0 at the bundle's end)."""
        while len(self._writing) > keep:
            waiting, context = self._writing.popleft()
            yield waiting(), context


def stable_shard(text: str, shards: int) -> int:
    """A shard that does not change between runs or workers (unlike hash())."""
    return zlib.crc32(text.encode("utf-8")) % shards if shards > 1 else 0


def file_entry(
    arrival_ms: int, events: int, line: bytes, codec: ShuffleCodec
) -> tuple[int, int, bytes]:
    """One line of a file as it crosses the shuffle to the packing (compressed)."""
    return arrival_ms, events, codec.compress(line)


def group_entry(forwarded: ForwardedBatch, layout: FileLayout, codec: ShuffleCodec
                ) -> tuple[tuple, tuple[int, int, bytes]]:
    """((app, date folder, shard), file_entry): the file group an outbound batch goes
    into, and its entry there."""
    folder = naming.batch_date_folder(forwarded.first_event_ms, layout.date_folders)
    group = (forwarded.app_name, folder, stable_shard(forwarded.device, layout.shards))
    return group, file_entry(
        forwarded.newest_arrival_ms, forwarded.event_count, forwarded.line, codec
    )


def file_entry_at(
    forwarded: ForwardedBatch, timestamp_us: int, layout: FileLayout, codec: ShuffleCodec,
    size_us: int,
) -> tuple[tuple, tuple[int, int, bytes]]:
    """((app, date folder, shard, file window start), file_entry) of an outbound batch
    at its time (bounded input: the file's window in the key)."""
    group, value = group_entry(forwarded, layout, codec)
    return (*group, window_start_us(timestamp_us, size_us)), value


def _entry_bytes(entry: tuple[int, int, bytes]) -> int:
    return packing.line_bytes(entry[2])


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
