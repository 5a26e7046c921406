"""A batch's JSON in parts (`transforms.rules.batch_parts`): the parts give back the
batch's JSON byte for byte, with its own events or others in their place, and cross a
shuffle unchanged; integers beyond 64 bits (which orjson cannot write) included."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from transforms.rules import batch_json
from transforms.rules.batch_parts import BatchParts
from transforms.rules.grouping import event_keys

WIDE = 2**70  # beyond 64 bits: the parts are made field by field

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**66), 2**66) | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=8,
)
event_data = st.fixed_dictionaries({}, optional={
    "event_id": st.integers(-(2**66), 2**66) | st.text(max_size=3),
    "timestamp_unixtime_ms": st.integers(1_600_000_000_000, 1_700_000_000_000),
    "source_message_id": st.text(max_size=3),
    "x": values,
})
events = st.lists(st.fixed_dictionaries(
    {"event_type": st.sampled_from(["custom_event", "screen_view"])},
    optional={"data": event_data},
), max_size=4)


@st.composite
def batches(draw) -> dict:
    """A batch whose `events`, if it has them, are at any place among its fields."""
    fields = draw(st.dictionaries(st.text(max_size=4).filter(lambda k: k != "events"), values,
                                  max_size=4))
    if not draw(st.booleans()):
        return fields
    items = list(fields.items())
    at = draw(st.integers(0, len(items)))
    return dict([*items[:at], ("events", draw(events)), *items[at:]])


@given(batches(), st.data())
def test_the_parts_give_back_the_batch_byte_for_byte(batch, data):
    parts = BatchParts.of(batch)
    assert parts.as_sent() == batch_json.encode(batch)
    assert json.loads(parts.as_sent()) == batch
    own = batch.get("events") or []
    assert parts.keys == [event_keys(event) for event in own]
    with_events = batch if "events" in batch else {**batch, "events": []}
    assert parts.line() == batch_json.encode(with_events)
    others = data.draw(st.lists(st.sampled_from(own), max_size=3) if own else st.just([]))
    assert parts.line([batch_json.encode(e) for e in others]) == batch_json.encode(
        {**with_events, "events": others})
    assert BatchParts.from_bytes(parts.to_bytes()) == parts


def test_a_batch_with_integers_beyond_64_bits_is_written_exactly():
    batch = {"mpid": WIDE, "events": [
        {"event_type": "custom_event", "data": {"event_id": WIDE + 1, "n": -WIDE}},
        {"event_type": "screen_view", "data": {"event_id": 7}}], "after": [WIDE], "last": 1}
    parts = BatchParts.of(batch)
    assert parts.as_sent() == json.dumps(batch, separators=(",", ":")).encode()
    assert parts.keys[0][1] == WIDE + 1
    crossed = BatchParts.from_bytes(parts.to_bytes())
    assert crossed == parts and crossed.keys[0][1] == WIDE + 1
    without = {"mpid": WIDE, "after": 1}
    assert BatchParts.of(without).as_sent() == b'{"mpid":%d,"after":1}' % WIDE
    assert BatchParts.of(without).line() == b'{"mpid":%d,"after":1,"events":[]}' % WIDE
