"""Input files: listing (local, s3://, gs://, globs), opening (.gz and other
compressions by extension), and splitting into raw records.

A file is newline-delimited JSON (one batch a line) or one JSON document
(a batch, or an array of batches, possibly pretty-printed). Each record keeps
its source, `path:line` or `path#index`, for dead letters; `record_at` reads a
record again from its source.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import io
import logging
import os
import zlib
from typing import IO, Any, Iterable, Iterator

import botocore.exceptions
import smart_open
import smart_open.compression

from transforms.io import progress, s3
from transforms.io.locations import Location, is_s3, is_url
from transforms.rules import batch_json
from transforms.rules.dead_letters import REPLAY_MARKER, replayed
from transforms.values import RawRecord

_LOG = logging.getLogger(__name__)
# A file whose first line is not a whole JSON value is read as one document
# only up to this size; past it, it is read line by line.
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
READ_BUFFER_BYTES = 1024 * 1024


_NOT_JSON = object()


def _decoded(data: bytes) -> Any:
    """The JSON value of `data`, or _NOT_JSON."""
    try:
        return batch_json.decode(data)
    except batch_json.BadRecord:
        return _NOT_JSON


def read_records(path: str, stream: IO[bytes]) -> Iterator[RawRecord]:
    """Splits one decompressed file into records; blank lines are skipped.

    A UTF-8 byte-order mark (which some Windows tools write) at the start of the
    file is not part of the first record.
    """
    skipped = 0
    first = stream.readline().removeprefix(codecs.BOM_UTF8)
    while first and not first.strip():
        skipped += 1
        first = stream.readline()
    if not first:
        return
    if first.lstrip().startswith(b"[") or _decoded(first) is _NOT_JSON:
        rest = stream.read(MAX_DOCUMENT_BYTES)
        document = first + rest
        value = _decoded(document) if len(rest) < MAX_DOCUMENT_BYTES else _NOT_JSON
        if value is not _NOT_JSON:
            yield from _document_records(path, value, document)
            return
        stream = io.BufferedReader(_Chain(document, stream))
        first = stream.readline()
    line_number = skipped + 1
    line = first
    while line:
        if line.strip():
            yield RawRecord(f"{path}:{line_number}", line.rstrip(b"\r\n"))
        line = stream.readline()
        line_number += 1


def _document_records(path: str, value: Any, document: bytes) -> Iterator[RawRecord]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield RawRecord(f"{path}#{index}", batch_json.encode(item))
    else:
        yield RawRecord(path, document.strip())


def record_at(source: str, client: Any = None) -> bytes | None:
    """The record a file source names (`path:line`, `path#index` or `path`), read again
    from its file as it came; None for a source that names no file (a Pub/Sub message)
    or a file that no longer holds it. For dead letters of stages that no longer hold
    the record (merging); rare, so the file is read from its start."""
    if source.startswith("pubsub:"):
        return None
    outer, replay_marker, _ = source.partition(REPLAY_MARKER)
    if replay_marker:  # a record replayed from a dead-letter file: the one that line holds
        line = record_at(outer, client)
        try:
            replay = replayed(batch_json.decode(line)) if line is not None else None
        except (batch_json.BadRecord, ValueError):
            replay = None
        return replay[1] if replay else None
    path = source
    for separator in ("#", ":"):
        head, _, number = source.rpartition(separator)
        if head and number.isdigit():
            path = head
            break
    try:
        with open_input(path, client) as stream:
            return next((r.data for r in read_records(path, stream) if r.source == source), None)
    except (OSError, EOFError, zlib.error, botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError) as err:
        _LOG.warning("%s: cannot be read again for its dead letter: %s", source, err)
        return None


def sample_records(
    patterns: list[str], client: Any = None, max_records: int = 1000
) -> Iterator[bytes]:
    """Up to `max_records` raw records from the first files the patterns name.

    For training the shuffle's compression dictionary, so a file that cannot be
    read is passed over here: the pipeline itself reports it.
    """
    for pattern in patterns:
        for path in expand_pattern(pattern, client):
            try:
                with open_input(path, client) as stream:
                    for record in read_records(path, stream):
                        yield record.data
                        max_records -= 1
                        if max_records <= 0:
                            return
            except (OSError, EOFError, zlib.error, botocore.exceptions.BotoCoreError,
                    botocore.exceptions.ClientError) as err:
                _LOG.info("%s: not sampled for the shuffle's dictionary: %s", path, err)


class _Chain(io.RawIOBase):
    """Bytes already read, then the rest of the stream."""

    def __init__(self, head: bytes, tail: IO[bytes]):
        self._head = io.BytesIO(head)
        self._tail = tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._head.read(len(buffer)) or self._tail.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _glob_s3(client: Any, pattern: str) -> list[tuple[str, int]]:
    location = Location.of(pattern)
    key_pattern = location.path
    prefix = key_pattern.split("*")[0].split("?")[0].split("[")[0]
    matched = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", ()):
            if fnmatch.fnmatchcase(item["Key"], key_pattern):
                matched.append((location.url_of(item["Key"]), item["Size"]))
    return matched


def input_client(patterns: Iterable[str], connection: s3.S3Connection) -> Any:
    """The S3 client that reading these patterns needs, or None if none is on S3."""
    return s3.make_client(connection) if any(is_s3(p) for p in patterns) else None


def matched_files(pattern: str, client: Any = None) -> list[tuple[str, int]]:
    """(path, size as stored) of the files a path or glob names, sorted by path;
    local, s3:// or any Beam filesystem."""
    if is_s3(pattern):
        return sorted(_glob_s3(client, pattern))
    if is_url(pattern):
        from apache_beam.io.filesystems import FileSystems

        return sorted((m.path, m.size_in_bytes)
                      for r in FileSystems.match([pattern]) for m in r.metadata_list)
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*")
    return sorted((path, os.path.getsize(path)) for path in glob.glob(pattern)
                  if os.path.isfile(path))


def expand_pattern(pattern: str, client: Any = None) -> list[str]:
    """The files a path or glob names, sorted."""
    return [path for path, _ in matched_files(pattern, client)]


def open_input(path: str, client: Any = None) -> IO[bytes]:
    """A decompressing binary stream (gzip and others by extension) that reports the
    bytes it reads from the file as stored (`transforms.io.progress`)."""
    if is_s3(path):
        raw = smart_open.open(
            path, "rb", compression="disable", transport_params={"client": client}
        )
    elif is_url(path):
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    else:
        raw = open(path, "rb")  # noqa: SIM115 - closed with the stream that wraps it
    counted = io.BufferedReader(_Counted(raw), buffer_size=READ_BUFFER_BYTES)
    return smart_open.compression.compression_wrapper(
        counted, "rb", smart_open.compression.INFER_FROM_EXTENSION, filename=path
    )


class _Counted(io.RawIOBase):
    """A file as stored, reporting how many of its bytes have been read."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        progress.report(bytes=len(data))
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def total_input_bytes(patterns: Iterable[str], client: Any = None) -> int:
    """The size of every input file as stored, for progress."""
    return sum(size for pattern in patterns for _, size in matched_files(pattern, client))

