"""Grouping rules (`transforms.rules.grouping`): device keys, arrival time, merging a
device's batches, one batch per event."""

from __future__ import annotations

import pytest

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


