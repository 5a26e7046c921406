"""What crosses a shuffle: compact bytes, never pickled dicts.

A runner holds everything it shuffles and decodes and re-encodes each value on
the way through (the FnApiRunner does it in its own process, on one core). A
batch there as a dict costs unpickling and pickling it again in the runner and
about six times its JSON size in memory. As zstd-compressed JSON it costs a
copy of about a third of its JSON size; compressing and decompressing it again
(at level 1, ~10 µs and ~4 µs for a 2 KB batch) happens in the workers, in
parallel. Only the DoFn that merges a device's batches decodes them again.

The coder is registered for the type, so a step that declares
`tuple[key, ShuffledBatch]` as its output gets it on every runner.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import zstandard
from apache_beam import coders
from apache_beam.coders import coder_impl
from apache_beam.coders.coders import FastCoder

from transforms import batch_json
from transforms.grouping import ArrivedBatch

ZSTD_LEVEL = 1  # the fastest level; higher ones gain little on 2 KB of JSON
_codecs = threading.local()  # zstd contexts are not safe to share between threads


def compressed(data: bytes) -> bytes:
    """`data` as it should cross a shuffle."""
    try:
        compressor = _codecs.compressor
    except AttributeError:
        compressor = _codecs.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor.compress(data)


def decompressed(data: bytes) -> bytes:
    """The bytes `compressed` was given."""
    try:
        decompressor = _codecs.decompressor
    except AttributeError:
        decompressor = _codecs.decompressor = zstandard.ZstdDecompressor()
    return decompressor.decompress(data)


class ShuffledBatch(NamedTuple):
    """What grouping and merging need of an ArrivedBatch; the batch as compressed JSON."""

    arrival_ms: int
    source: str
    app_name: str
    batch_zstd: bytes

    @classmethod
    def of(cls, arrived: ArrivedBatch) -> ShuffledBatch:
        batch = compressed(batch_json.encode(arrived.batch))
        return cls(arrived.arrival_ms, arrived.source, arrived.app_name, batch)

    def arrived(self, device: str) -> ArrivedBatch:
        """Back to the ArrivedBatch (the device is the shuffle's key)."""
        batch = batch_json.decode(decompressed(self.batch_zstd))
        return ArrivedBatch(batch, self.source, self.arrival_ms, device, self.app_name)


class _ShuffledBatchCoderImpl(coder_impl.TupleCoderImpl):
    def _construct_from_components(self, components):
        return ShuffledBatch(*components)


class ShuffledBatchCoder(FastCoder):
    """Varint arrival, UTF-8 source and app name, then the compressed JSON: no pickling."""

    _FIELDS = (coders.VarIntCoder(), coders.StrUtf8Coder(), coders.StrUtf8Coder(),
               coders.BytesCoder())

    def _create_impl(self):
        return _ShuffledBatchCoderImpl([field.get_impl() for field in self._FIELDS])

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return ShuffledBatch

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


coders.registry.register_coder(ShuffledBatch, ShuffledBatchCoder)
