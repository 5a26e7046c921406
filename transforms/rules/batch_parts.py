"""A batch's JSON in parts, so that merging and splitting join JSON instead of
encoding it again: the JSON around its events array, each event's JSON, and what
merging needs of each event (`grouping.event_keys`).

`BatchParts.of(batch).line()` is `batch_json.encode(batch)`, byte for byte; with
other events, the batch's fields around those events. `to_bytes`/`from_bytes` is
how parts cross a shuffle (compressed there, `transforms.machinery.shuffled`).
"""

from __future__ import annotations

import array
import struct
from typing import Iterable, NamedTuple

import orjson

from transforms.rules import batch_json
from transforms.rules.grouping import event_keys

# Marks the places of the events in one encoding of the whole batch. orjson
# escapes control characters in strings: a NUL byte is never in its output.
_MARK = b"\x00"
_MARK_HERE = orjson.Fragment(_MARK)
# The lengths of prefix and suffix, the number of events, whether the batch has
# `events`, whether the keys need the exact decoder; then each event's length.
_COUNTS = struct.Struct("<IIIBB")


class BatchParts(NamedTuple):
    """One batch's JSON in parts: `line()` is `batch_json.encode` of the batch with
    the events given (the batch's own by default), in the place of its `events`
    (at the end where it had none)."""

    prefix: bytes  # `{...,"events":`
    suffix: bytes  # `,...}`
    events: list[bytes]  # each event's JSON
    keys: list[list]  # each event's `grouping.event_keys`
    events_key: bool  # whether the batch has `events` (without, `line` adds it at the end)

    @classmethod
    def of(cls, batch: dict) -> BatchParts:
        events = batch.get("events") or ()
        keys = [event_keys(event) for event in events]
        marked = [_MARK_HERE]
        for event in events:
            marked += (event, _MARK_HERE)
        try:
            # `{...,"events":[` MARK `,e1,` MARK `,e2,` MARK `]...}`
            pieces = orjson.dumps({**batch, "events": marked}).split(_MARK)
        except TypeError:  # an integer beyond 64 bits: each field and event apart, exactly
            return cls._exactly(batch, events, keys)
        return cls(pieces[0][:-1], pieces[-1][1:], [piece[1:-1] for piece in pieces[1:-1]],
                   keys, "events" in batch)

    @classmethod
    def _exactly(cls, batch: dict, events, keys: list[list]) -> BatchParts:
        around = {**batch, "events": None}
        fields = [batch_json.encode({key: value})[1:-1] for key, value in around.items()]
        at = list(around).index("events")
        prefix = b"{" + b"".join(field + b"," for field in fields[:at]) + b'"events":'
        suffix = b"".join(b"," + field for field in fields[at + 1:]) + b"}"
        return cls(prefix, suffix, [batch_json.encode(event) for event in events], keys,
                   "events" in batch)

    def line(self, events: Iterable[bytes] | None = None) -> bytes:
        joined = b",".join(self.events if events is None else events)
        return b"".join((self.prefix, b"[", joined, b"]", self.suffix))

    def as_sent(self) -> bytes:
        """`batch_json.encode` of the batch itself."""
        if self.events_key:
            return self.line()
        head = self.prefix[:-len(b'"events":')]
        return (head[:-1] if head.endswith(b",") else head) + b"}"

    def to_bytes(self) -> bytes:
        try:
            keys, exact = orjson.dumps(self.keys), False
        except TypeError:  # an id beyond 64 bits
            keys, exact = batch_json.encode(self.keys), True
        counts = _COUNTS.pack(
            len(self.prefix), len(self.suffix), len(self.events), self.events_key, exact
        )
        lengths = array.array("I", [len(event) for event in self.events]).tobytes()
        return b"".join((counts, lengths, self.prefix, self.suffix, *self.events, keys))

    @classmethod
    def from_bytes(cls, data: bytes) -> BatchParts:
        prefix_size, suffix_size, count, events_key, exact = _COUNTS.unpack_from(data)
        lengths = array.array("I")
        at = _COUNTS.size + 4 * count
        lengths.frombytes(data[_COUNTS.size:at])
        prefix = data[at:at + prefix_size]
        at += prefix_size
        suffix = data[at:at + suffix_size]
        at += suffix_size
        events = []
        for length in lengths:
            events.append(data[at:at + length])
            at += length
        keys = (batch_json.decode if exact else orjson.loads)(data[at:])
        return cls(prefix, suffix, events, keys, bool(events_key))
