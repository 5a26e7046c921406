"""The spill's on-disk format: files of zstd-compressed blocks of framed elements.

    <spill dir>/windows/<file window start, epoch µs>/<bundle id>.spill
    <spill dir>/batches/<device shard>/<slice start, epoch s>/<bundle id>.spill
    <spill dir>/lines/<file window start, epoch µs>/<bundle id>.spill

A file is a sequence of zstd-compressed blocks of up to about a MiB, each
after its 4-byte big-endian length; a block is a sequence of frames, each a
4-byte length and then one element in Beam's own coders. (Compressing a MiB at
once takes a fraction of the time of compressing each 2 KB batch alone, so
what is spilled goes uncompressed until then: `shuffled.UNCOMPRESSED`.) Files
are named `.part` until their bundle has finished (`BundleFiles.commit`), so
workers never share a file and a bundle that failed leaves nothing a later step
reads. Slices are UTC-aligned multiples of the slice length, so fixed windows
(whose size divides it) never span two.
"""

from __future__ import annotations

import os
import struct
import uuid
from typing import Any, Iterator

import zstandard
from apache_beam import coders

from transforms.machinery.shuffled import ShuffledBatchCoder

SUFFIX = ".spill"
_PART = ".part"
_FRAME = struct.Struct(">I")
BATCH_CODER = coders.TupleCoder(
    [coders.StrUtf8Coder(), ShuffledBatchCoder()]
)
# ((app, date folder, shard, file window start), `files.file_entry`)
LINE_CODER = coders.TupleCoder([
    coders.TupleCoder([coders.StrUtf8Coder(), coders.StrUtf8Coder(), coders.VarIntCoder(),
                       coders.VarIntCoder()]),
    coders.TupleCoder([coders.VarIntCoder(), coders.VarIntCoder(), coders.BytesCoder()]),
])
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
