"""ShuffledBatch: an ArrivedBatch as it crosses the shuffle, and its coder.

A runner holds everything it shuffles and decodes and re-encodes each value on
the way through (the FnApiRunner does it in its own process, on one core). A
batch there as a dict costs unpickling and pickling it again in the runner and
about six times its JSON size in memory; as JSON bytes it costs a copy and its
own size. Only the DoFn that merges a device's batches decodes them again.

The coder is registered for the type, so a step that declares
`Tuple[key, ShuffledBatch]` as its output gets it on every runner.
"""

from __future__ import annotations

from typing import NamedTuple

from apache_beam import coders
from apache_beam.coders import coder_impl
from apache_beam.coders.coders import FastCoder

from transforms import batch_json
from transforms.grouping import ArrivedBatch


class ShuffledBatch(NamedTuple):
    """What grouping and merging need of an ArrivedBatch; the batch as JSON bytes."""

    arrival_ms: int
    source: str
    app_name: str
    batch_json: bytes

    @classmethod
    def of(cls, arrived: ArrivedBatch) -> ShuffledBatch:
        batch = batch_json.encode(arrived.batch)
        return cls(arrived.arrival_ms, arrived.source, arrived.app_name, batch)

    def arrived(self, device: str) -> ArrivedBatch:
        """Back to the ArrivedBatch (the device is the shuffle's key)."""
        return ArrivedBatch(
            batch_json.decode(self.batch_json), self.source, self.arrival_ms, device, self.app_name
        )


class _ShuffledBatchCoderImpl(coder_impl.TupleCoderImpl):
    def _construct_from_components(self, components):
        return ShuffledBatch(*components)


class ShuffledBatchCoder(FastCoder):
    """Varint arrival, UTF-8 source and app name, then the JSON bytes: no pickling."""

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
