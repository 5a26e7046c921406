"""Arrival-time slices on local disk: how a bounded run keeps memory to one slice.

A local runner (the FnApiRunner, Prism) holds all that it groups in memory, so a
run over a month of archives would need the month in memory. A sliced run
(`pipeline.sliced`) first writes every device-keyed batch, as it crosses a
shuffle (`ShuffledBatch`: zstd-compressed JSON), into a file per slice of
arrival time and per bundle (`SpillToSlices`); then it runs the grouping and
writing once per slice, in time order, on that slice's files (`ReadSpill`).

    <spill dir>/<slice start, epoch seconds>/<bundle id>.spill

A file is a sequence of frames: a 4-byte big-endian length, then the
(device, ShuffledBatch) pair in Beam's own coders. Slices are UTC-aligned
multiples of the slice length, so fixed windows (whose size divides it) never
span two; a session still open at a slice's end is carried into the next
slice's files (see `BatchPerDevice`), so it comes out whole.
"""

from __future__ import annotations

import os
import struct
import uuid
from typing import Iterator

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from transforms.shuffled import ShuffledBatch

SUFFIX = ".spill"
_PART = ".part"
_FRAME = struct.Struct(">I")
_CODER = coders.TupleCoder([coders.StrUtf8Coder(), coders.registry.get_coder(ShuffledBatch)])
# A bundle keeps up to this much per slice before appending it to its file, and
# up to _BUFFERED_BYTES over all slices: memory stays small whatever the input.
_FLUSH_BYTES = 1 << 20
_BUFFERED_BYTES = 32 << 20


def slice_start_s(arrival_ms: int, slice_s: int) -> int:
    """The start (epoch seconds) of the UTC-aligned slice holding an arrival time."""
    arrival_s = arrival_ms // 1000
    return arrival_s - arrival_s % slice_s


def slice_folder(spill_dir: str, start_s: int) -> str:
    return os.path.join(spill_dir, str(start_s))


def frame(keyed: tuple[str, ShuffledBatch]) -> bytes:
    """One (device, ShuffledBatch) pair as it is stored: its length, then its bytes."""
    encoded = _CODER.encode(keyed)
    return _FRAME.pack(len(encoded)) + encoded


def read_frames(path: str) -> Iterator[tuple[str, ShuffledBatch]]:
    """The (device, ShuffledBatch) pairs of one spill file, in the order written."""
    with open(path, "rb", buffering=1 << 20) as stream:
        while True:
            head = stream.read(_FRAME.size)
            if not head:
                return
            if len(head) < _FRAME.size:
                raise EOFError(f"{path}: spill file ends inside a frame header")
            (size,) = _FRAME.unpack(head)
            body = stream.read(size)
            if len(body) < size:
                raise EOFError(f"{path}: spill file ends inside a frame")
            yield _CODER.decode(body)


class SpillToSlices(beam.DoFn):
    """(device, ShuffledBatch) → appended to its slice's file of this bundle; emits nothing.

    Each bundle writes files of its own, under a name that ends in `.part` until
    the bundle has finished, so workers never share a file and a bundle that
    failed leaves nothing a slice would read. `floor_s`: batches carried over
    from an earlier slice go into the slice starting then, not into their own.
    """

    def __init__(self, spill_dir: str, slice_s: int, floor_s: int = 0):
        self._spill_dir = spill_dir
        self._slice_s = slice_s
        self._floor_s = floor_s

    def start_bundle(self):
        self._bundle = uuid.uuid4().hex
        self._buffers: dict[int, bytearray] = {}
        self._buffered = 0
        self._written: set[str] = set()

    def process(self, keyed: tuple[str, ShuffledBatch]) -> Iterator:
        start = max(slice_start_s(keyed[1].arrival_ms, self._slice_s), self._floor_s)
        buffer = self._buffers.setdefault(start, bytearray())
        framed = frame(keyed)
        buffer += framed
        self._buffered += len(framed)
        if len(buffer) >= _FLUSH_BYTES:
            self._flush(start)
        elif self._buffered >= _BUFFERED_BYTES:
            for each in list(self._buffers):
                self._flush(each)
        return iter(())

    def finish_bundle(self):
        for start in list(self._buffers):
            self._flush(start)
        for path in self._written:
            os.replace(path + _PART, path)

    def _flush(self, start: int) -> None:
        buffer = self._buffers.pop(start)
        self._buffered -= len(buffer)
        folder = slice_folder(self._spill_dir, start)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, self._bundle + SUFFIX)
        with open(path + _PART, "ab") as out:
            out.write(buffer)
        self._written.add(path)


def slice_files(spill_dir: str, start_s: int) -> list[str]:
    """The finished spill files of one slice."""
    folder = slice_folder(spill_dir, start_s)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith(SUFFIX))


def pending_slices(spill_dir: str) -> list[int]:
    """The starts of the slices that have spill files, earliest first."""
    if not os.path.isdir(spill_dir):
        return []
    return sorted(int(name) for name in os.listdir(spill_dir) if name.isdigit()
                  and slice_files(spill_dir, int(name)))


def _read_spill_file(path: str) -> Iterator[window.TimestampedValue]:
    for device, shuffled in read_frames(path):
        yield window.TimestampedValue(
            (device, shuffled), Timestamp(micros=shuffled.arrival_ms * 1000)
        )


class ReadSpill(beam.PTransform):
    """Spill files → (device, ShuffledBatch) at their arrival time, files spread over
    workers."""

    def __init__(self, paths: list[str]):
        super().__init__()
        self._paths = sorted(paths)

    def expand(self, pbegin):
        return (
            pbegin
            | "SpillFiles" >> beam.Create(self._paths)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFrames" >> beam.FlatMap(_read_spill_file).with_output_types(
                tuple[str, ShuffledBatch]
            )
        )
