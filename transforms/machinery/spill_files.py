"""The spill's on-disk format: files of zstd-compressed blocks of framed elements.

    <spill dir>/windows/<file window start, epoch µs>/<bundle id>.spill
    <spill dir>/batches/<device shard>/<slice start, epoch s>/<bundle id>.spill
    <spill dir>/lines/<file window start, epoch µs>/<bundle id>.spill

A file is a sequence of zstd-compressed blocks of up to about a MiB, each
after its 4-byte big-endian length; a block is a sequence of frames, each a
4-byte length and then one element (`BATCH_CODER`, `LINE_CODER`: a fixed header
of integers and lengths, then the strings and bytes; a fraction of the time Beam's
tuple coders take, which were a tenth of a sliced run's time on small batches).
Compressing a MiB at once takes a fraction of the time of compressing each 2 KB
batch alone, so what is spilled goes uncompressed until then
(`shuffled.UNCOMPRESSED`), and blocks are compressed and appended in a thread of
their own (zstd and writes release the GIL), in the order they were made. Files
are named `.part` until their bundle has finished (`BundleFiles.commit`), so
workers never share a file and a bundle that failed leaves nothing a later step
reads. Slices are UTC-aligned multiples of the slice length, so fixed windows
(whose size divides it) never span two.
"""

from __future__ import annotations

import collections
import os
import struct
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

import zstandard

from transforms.machinery.shuffled import ShuffledBatch

SUFFIX = ".spill"
_PART = ".part"
_FRAME = struct.Struct(">I")


class _BatchCoder:
    """(device, ShuffledBatch) ↔ bytes: arrival, events and the lengths of device,
    source and app name, then those three in UTF-8, then the batch's bytes."""

    _HEAD = struct.Struct("<qQIII")

    def encode(self, element: tuple[str, ShuffledBatch]) -> bytes:
        device, batch = element
        texts = (device.encode(), batch.source.encode(), batch.app_name.encode())
        return b"".join((self._HEAD.pack(batch.arrival_ms, batch.events, *map(len, texts)),
                         *texts, batch.batch_zstd))

    def decode(self, data: bytes) -> tuple[str, ShuffledBatch]:
        arrival_ms, events, *lengths = self._HEAD.unpack_from(data)
        device, source, app, at = _texts(data, self._HEAD.size, lengths)
        return device, ShuffledBatch(arrival_ms, source, app, events, data[at:])


class _LineCoder:
    """((app, date folder, shard, file window start), `files.file_entry`) ↔ bytes:
    the integers and the lengths of app and folder, those two in UTF-8, then the line."""

    _HEAD = struct.Struct("<qqqQII")

    def encode(self, element: tuple[tuple, tuple[int, int, bytes]]) -> bytes:
        (app, folder, shard, window_start), (arrival_ms, events, line) = element
        texts = (app.encode(), folder.encode())
        return b"".join((self._HEAD.pack(shard, window_start, arrival_ms, events,
                                         *map(len, texts)), *texts, line))

    def decode(self, data: bytes) -> tuple[tuple, tuple[int, int, bytes]]:
        shard, window_start, arrival_ms, events, *lengths = self._HEAD.unpack_from(data)
        app, folder, at = _texts(data, self._HEAD.size, lengths)
        return (app, folder, shard, window_start), (arrival_ms, events, data[at:])


def _texts(data: bytes, at: int, lengths: list[int]) -> list:
    """The UTF-8 strings of these lengths one after another from `at`, and where the
    bytes after them start."""
    texts = []
    for length in lengths:
        texts.append(data[at:at + length].decode())
        at += length
    return [*texts, at]


BATCH_CODER = _BatchCoder()
LINE_CODER = _LineCoder()
Coder = _BatchCoder | _LineCoder
# A bundle keeps up to this much per file before appending it, and up to
# _BUFFERED_BYTES over all its files (then it appends its largest buffers until it
# holds half that): memory stays small, and blocks large, whatever the input.
_FLUSH_BYTES = 1 << 20
_BUFFERED_BYTES = 32 << 20
_ZSTD_LEVEL = 1


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


def frame(element: Any, coder: Coder = BATCH_CODER) -> bytes:
    """One element as it is stored in a block: its length, then its bytes."""
    encoded = coder.encode(element)
    return _FRAME.pack(len(encoded)) + encoded


def block(frames: bytes) -> bytes:
    """Frames as they are stored in a file: compressed, after their length."""
    compressed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(frames)
    return _FRAME.pack(len(compressed)) + compressed


def read_frames(path: str, coder: Coder = BATCH_CODER) -> Iterator:
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
    each named `.part` until `commit` (at the bundle's end). A full buffer is
    compressed and appended in the process's appending thread (`_appender`), at most
    _PENDING_BLOCKS of a bundle waiting for it; an error there is raised by the next
    `add` or `commit` that waits for it."""

    def __init__(self, coder: Coder):
        self._coder = coder
        self._name = uuid.uuid4().hex + SUFFIX
        self._buffers: dict[str, bytearray] = {}
        self._buffered = 0
        self._written: set[str] = set()
        self._pending: collections.deque[Future] = collections.deque()

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
        """Makes the files visible, once every block is appended."""
        for folder in list(self._buffers):
            self._flush(folder)
        while self._pending:
            self._pending.popleft().result()
        for folder in self._written:
            path = os.path.join(folder, self._name)
            os.replace(path + _PART, path)

    def _flush(self, folder: str) -> None:
        buffer = self._buffers.pop(folder)
        self._buffered -= len(buffer)
        if folder not in self._written:
            os.makedirs(folder, exist_ok=True)
            self._written.add(folder)
        path = os.path.join(folder, self._name) + _PART
        self._pending.append(_appender().submit(_append, path, buffer))
        while len(self._pending) > _PENDING_BLOCKS:
            self._pending.popleft().result()


# Blocks of a bundle compressed and appended while it goes on, in one thread per
# process (so in the order they were made).
_PENDING_BLOCKS = 4
_appending: tuple[int, ThreadPoolExecutor] | None = None


def _appender() -> ThreadPoolExecutor:
    """The process's appending thread (a forked process makes its own)."""
    global _appending
    if _appending is None or _appending[0] != os.getpid():
        _appending = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="spill"))
    return _appending[1]


def _append(path: str, frames: bytes) -> None:
    with open(path, "ab") as out:
        out.write(block(frames))
