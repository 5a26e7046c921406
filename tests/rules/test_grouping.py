"""Grouping rules (`transforms.rules.grouping`): device keys, arrival time, merging a
device's batches, one batch per event."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.rules import batch_json, grouping
from transforms.rules.batch_parts import BatchParts
from transforms.values import ArrivedBatch


@pytest.mark.parametrize(
    "batch, expected",
    [
        ({"mp_deviceid": "d1", "mpid": 5}, "mp_deviceid:d1"),
        ({"mp_deviceid": "", "mpid": "5"}, "mpid:5"),
        ({"mpid": 5, "device_info": {"ios_idfv": "X"}}, "mpid:5"),
        ({"mpid": 0, "device_info": {"ios_idfv": "X"}}, "ios_idfv:X"),
        ({"device_info": {"android_uuid": "U", "android_advertising_id": "A"}}, "android_uuid:U"),
        (
            {"device_info": {"ios_advertising_id": "00000000-0000-0000-0000-000000000000",
                             "amp_id": "amp"}},
            "amp_id:amp",
        ),
        ({"device_info": {"platform": "iOS"}}, None),
        ({}, None),
    ],
)
def test_device_key(batch, expected):
    assert grouping.device_key(batch) == expected


T = 1_595_542_763_908  # 2020-07-23T22:19:23.908Z


@pytest.mark.parametrize(
    "batch, expected",
    [
        ({"timestamp_unixtime_ms": T, "events": []}, T),
        ({"timestamp_unixtime_ms": str(T)}, T),
        ({"events": [{"data": {"timestamp_unixtime_ms": str(T + 1)}}]}, T + 1),
        ({"timestamp_unixtime_ms": "soon", "events": [{"data": {"timestamp_unixtime_ms": T}}]}, T),
        ({"events": [{"data": {}}, {"data": {"timestamp_unixtime_ms": T}}]}, None),
        ({"timestamp_unixtime_ms": 0}, None),
        ({}, None),
        # Seconds, microseconds, nanoseconds, absurd numbers: not times in milliseconds.
        ({"timestamp_unixtime_ms": T // 1000}, None),
        ({"timestamp_unixtime_ms": T * 1000, "events": [{"data": {"timestamp_unixtime_ms": T}}]},
         T),
        ({"timestamp_unixtime_ms": T * 1_000_000}, None),
        ({"timestamp_unixtime_ms": 1.5e300}, None),
        ({"timestamp_unixtime_ms": 2**70}, None),
        ({"timestamp_unixtime_ms": -T}, None),
        ({"timestamp_unixtime_ms": "9" * 5000}, None),
        ({"timestamp_unixtime_ms": grouping.EARLIEST_TIME_MS}, grouping.EARLIEST_TIME_MS),
        ({"timestamp_unixtime_ms": grouping.EARLIEST_TIME_MS - 1}, None),
        ({"timestamp_unixtime_ms": grouping.LATEST_TIME_MS - 1}, grouping.LATEST_TIME_MS - 1),
        ({"timestamp_unixtime_ms": grouping.LATEST_TIME_MS}, None),
    ],
)
def test_arrival_time(batch, expected):
    assert grouping.arrival_time_ms(batch) == expected


def _event(event_id, at, message_id=None):
    """An event `at` ms after T."""
    data = {"event_id": event_id, "timestamp_unixtime_ms": T + at}
    if message_id:
        data["source_message_id"] = message_id
    return {"event_type": "custom_event", "data": data}


def _arrived(arrival, events, source, **fields):
    """A batch that arrived `arrival` ms after T."""
    return ArrivedBatch({"events": events, **fields}, source, T + arrival, "d", "app")


def _merge(arrived: list[ArrivedBatch]) -> tuple[dict, int]:
    """`grouping.merge_batches` over dicts, in arrival order: the batch and the
    duplicates left out."""
    ordered = sorted(arrived, key=grouping.arrival_order)
    merged = grouping.merge_batches([(a.arrival_ms, BatchParts.of(a.batch)) for a in ordered])
    return batch_json.decode(merged.line), merged.duplicates


def test_merge_takes_latest_batch_fields_and_orders_events_by_time():
    early = _arrived(100, [_event(1, 50), _event(2, 90)], "f:1", ip="1.1.1.1", sdk="a")
    late = _arrived(200, [_event(3, 60), _event(4, 150)], "f:2", sdk="b", ip="2.2.2.2")
    for order in ([early, late], [late, early]):
        merged, duplicates = _merge(order)
        assert list(merged) == ["events", "sdk", "ip"]  # the latest batch's key order
        assert merged["sdk"] == "b"
        assert [e["data"]["event_id"] for e in merged["events"]] == [1, 3, 2, 4]
        assert duplicates == 0


def test_merge_removes_events_seen_twice_by_event_id_or_message_id():
    first = _arrived(100, [_event(1, 10, "m1"), _event(2, 20, "m2")], "f:1")
    redelivered = _arrived(100, [_event("1", 10, "m1"), _event(9, 20, "m2")], "f:2")
    third = _arrived(300, [_event(3, 30)], "f:3")
    merged, duplicates = _merge([first, redelivered, third])
    assert [e["data"]["event_id"] for e in merged["events"]] == [1, 2, 3]
    assert duplicates == 2


def test_split_per_event_keeps_batch_fields_around_each_event():
    batch = {"events": [_event(1, 1), _event(2, 2)], "mpid": 7}
    split = grouping.split_per_event(BatchParts.of(batch))
    assert [batch_json.decode(line) for line, _, _ in split] == [
        {"events": [_event(1, 1)], "mpid": 7}, {"events": [_event(2, 2)], "mpid": 7}]
    assert [(first_ms, count) for _, first_ms, count in split] == [(T + 1, 1), (T + 2, 1)]
    assert grouping.split_per_event(BatchParts.of({"mpid": 7})) == [(b'{"mpid":7}', None, 0)]




def test_merge_counts_its_events_dates_by_its_first_and_times_an_untimed_event_by_arrival():
    untimed = {"event_type": "custom_event", "data": {"event_id": 5}}  # at its batch's arrival
    no_data = {"event_type": "custom_event"}  # neither id nor time: never a duplicate
    first = _arrived(100, [_event(1, 150), untimed, no_data], "f:1")
    second = _arrived(120, [_event(2, 10), no_data, _event("x", 400)], "f:2")
    ordered = [(a.arrival_ms, BatchParts.of(a.batch)) for a in (first, second)]
    merged = grouping.merge_batches(ordered)
    events = batch_json.decode(merged.line)["events"]
    assert [e.get("data", {}).get("event_id") for e in events] == [2, 5, None, None, 1, "x"]
    assert (merged.first_event_ms, merged.event_count, merged.duplicates) == (T + 10, 6, 0)
    alone = grouping.merge_batches([(T, BatchParts.of({"events": [], "mpid": 1}))])
    assert (alone.first_event_ms, alone.event_count, alone.line) == (
        None, 0, b'{"events":[],"mpid":1}')
    with pytest.raises(ValueError, match="^merge_batches needs at least one batch$"):
        grouping.merge_batches([])


def test_ties_in_time_keep_arrival_order_then_the_order_within_a_batch():
    first = _arrived(100, [_event(1, 50), _event(2, 50)], "f:1")
    second = _arrived(100, [_event(3, 50)], "f:2")
    merged, _ = _merge([second, first])
    assert [e["data"]["event_id"] for e in merged["events"]] == [1, 2, 3]


@pytest.mark.parametrize("event, keys", [
    ({"data": {"event_id": "123", "timestamp_unixtime_ms": T, "source_message_id": "m"}},
     [T, 123, "m"]),
    ({"data": {"event_id": "abc"}}, [None, "abc", None]),
    ({"data": {"timestamp_unixtime_ms": 5}}, [None, None, None]),  # not a plausible time
    ({"data": "not an object"}, [None, None, None]),
    ("not an object", [None, None, None]),
])
def test_event_keys(event, keys):
    assert grouping.event_keys(event) == keys


def _sessions_by_overlap(arrivals: list[int], gap_ms: int) -> list[list[int]]:
    """Beam's sessions as connected spans: two batches are in one session when their
    spans [arrival, arrival + gap) overlap, directly or through others."""
    groups = [[a] for a in sorted(arrivals)]
    merged = True
    while merged:
        merged = False
        for i, j in itertools.combinations(range(len(groups)), 2):
            if any(abs(a - b) < gap_ms for a in groups[i] for b in groups[j]):
                groups[i] = sorted(groups[i] + groups.pop(j))
                merged = True
                break
    return sorted(groups)


@given(st.lists(st.integers(0, 100), max_size=12), st.integers(1, 20))
def test_sessions_are_the_batches_whose_spans_overlap(arrivals, gap_ms):
    arrived = [ArrivedBatch({}, f"f:{n}", at, "d", "app") for n, at in enumerate(arrivals)]
    sessions = grouping.split_sessions(reversed(arrived), gap_ms)
    assert [[a.arrival_ms for a in batches] for batches, _ in sessions] == \
        _sessions_by_overlap(arrivals, gap_ms)
    assert [end for _, end in sessions] == [batches[-1].arrival_ms + gap_ms
                                            for batches, _ in sessions]
    for batches, _ in sessions:  # each in arrival order, then by source
        assert batches == sorted(batches, key=lambda a: (a.arrival_ms, a.source))


@given(st.integers(0, 2**60), st.integers(1, 2**40))
def test_a_window_starts_at_the_multiple_of_its_size_at_or_before_the_time(at_us, size_us):
    start = grouping.window_start_us(at_us, size_us)
    assert start % size_us == 0 and start <= at_us < start + size_us


def test_the_same_event_id_twice_is_a_duplicate_without_a_message_id():
    first = _arrived(100, [_event(7, 10)], "f:1")
    again = _arrived(200, [_event(7, 20), _event(8, 30)], "f:2")
    merged, duplicates = _merge([first, again])
    assert [e["data"]["event_id"] for e in merged["events"]] == [7, 8] and duplicates == 1
