"""What crosses a shuffle: compact bytes, never pickled dicts.

A runner holds everything it shuffles and decodes and re-encodes each value on
the way through (a local runner does it in its own process, on one core, and may
keep several copies of a grouping while it hands it on). A batch there as a
dict costs unpickling and pickling it again in the runner and about six times
its JSON size in memory. As zstd-compressed JSON it costs a copy of a fraction
of its JSON size; compressing and decompressing happen in the workers, in
parallel. Only the DoFn that merges a device's batches decodes them again.

zstd on one 2 KB batch alone finds little to reuse (about 0.37 of its size). A
dictionary trained on a sample of the input gives it the keys and values that
every batch repeats: about 0.18, and twice as fast (`ShuffleCodec.trained_on`).

A batch crosses in parts (`transforms.rules.batch_parts`): its JSON around the
events array, each event's JSON, and what merging needs of each event. The
merge then joins JSON it already has, instead of decoding each batch again
(orjson takes about 37 µs for a 2 KB batch, most of the merge's cost) and
encoding the result.

The coder is registered for the type by the steps that make ShuffledBatch values
(`register_coder`, when they are added to a graph), so a step that declares
`tuple[key, ShuffledBatch]` as its output gets it on every runner.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import NamedTuple, Sequence

import zstandard
from apache_beam import coders
from apache_beam.coders import coder_impl
from apache_beam.coders.coders import FastCoder

from transforms.rules.batch_parts import BatchParts
from transforms.values import ArrivedBatch

ZSTD_LEVEL = 1  # the fastest level; higher ones gain nothing on 2 KB of JSON
DICTIONARY_BYTES = 64 * 1024  # zstd's usual size; a larger one gained under 1%
_contexts = threading.local()  # zstd contexts are not safe to share between threads


@dataclasses.dataclass(frozen=True)
class ShuffleCodec:
    """How shuffled bytes are compressed: zstd, with a trained dictionary or none.

    A plain value that travels with the DoFns, so every worker compresses and
    decompresses with the same dictionary.
    """

    dictionary: bytes = dataclasses.field(default=b"", repr=False)
    compressed: bool = True  # False: bytes as they are (a sliced run compresses its spill)

    @classmethod
    def trained_on(cls, samples: Sequence[bytes]) -> ShuffleCodec:
        """A codec with a dictionary from `samples` (raw records), or without one
        where they are too few or too small to train on."""
        try:
            return cls(zstandard.train_dictionary(DICTIONARY_BYTES, list(samples)).as_bytes())
        except zstandard.ZstdError:
            return NO_DICTIONARY

    def compress(self, data: bytes) -> bytes:
        return self._pair()[0].compress(data) if self.compressed else data

    def decompress(self, data: bytes) -> bytes:
        return self._pair()[1].decompress(data) if self.compressed else data

    def _pair(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pairs = getattr(_contexts, "pairs", None)
        if pairs is None:
            pairs = _contexts.pairs = {}
        pair = pairs.get(self.dictionary)
        if pair is None:
            if self.dictionary:
                trained = zstandard.ZstdCompressionDict(self.dictionary)
                pair = (zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=trained),
                        zstandard.ZstdDecompressor(dict_data=trained))
            else:
                pair = (zstandard.ZstdCompressor(level=ZSTD_LEVEL), zstandard.ZstdDecompressor())
            pairs[self.dictionary] = pair
        return pair


NO_DICTIONARY = ShuffleCodec()
UNCOMPRESSED = ShuffleCodec(compressed=False)


class ShuffledBatch(NamedTuple):
    """What grouping and merging need of an ArrivedBatch; the batch as compressed
    `BatchParts`, and how many events it holds (counted as dead letters if what crossed
    cannot be read, so that the run's counts still reconcile)."""

    arrival_ms: int
    source: str
    app_name: str
    events: int
    batch_zstd: bytes

    @classmethod
    def of(cls, arrived: ArrivedBatch, codec: ShuffleCodec) -> ShuffledBatch:
        parts = codec.compress(BatchParts.of(arrived.batch).to_bytes())
        events = len(arrived.batch.get("events") or ())
        return cls(arrived.arrival_ms, arrived.source, arrived.app_name, events, parts)

    def parts(self, codec: ShuffleCodec) -> BatchParts:
        return BatchParts.from_bytes(codec.decompress(self.batch_zstd))


class _ShuffledBatchCoderImpl(coder_impl.TupleCoderImpl):
    def _construct_from_components(self, components):
        return ShuffledBatch(*components)


class ShuffledBatchCoder(FastCoder):
    """Varint arrival, UTF-8 source and app name, varint events, then the compressed
    JSON: no pickling."""

    _FIELDS = (coders.VarIntCoder(), coders.StrUtf8Coder(), coders.StrUtf8Coder(),
               coders.VarIntCoder(), coders.BytesCoder())

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


def register_coder() -> None:
    """ShuffledBatchCoder for every ShuffledBatch in a graph: called by the transforms
    that declare it as an output type, as they are added to a graph (the same each
    time); importing this module registers nothing."""
    coders.registry.register_coder(ShuffledBatch, ShuffledBatchCoder)
