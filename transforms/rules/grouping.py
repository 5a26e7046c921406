"""Pure rules for grouping batches per device: keys, arrival time, windows,
sessions, merging.

A batch belongs to a device (`device_key`) and arrived at a time
(`arrival_time_ms`); the batches of one device in one window (`window_start_us`)
or session (`split_sessions`) become one outbound batch (`merge_batches`), or,
with Send as Batch off, every event goes out as its own batch
(`split_per_event`). Every path (live, bounded, sliced) calls these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Protocol, Sequence, TypeVar

from transforms.rules.batch_json import as_int

if TYPE_CHECKING:
    from transforms.rules.batch_parts import BatchParts

# device_info fields that identify a device, most specific first.
DEVICE_INFO_IDENTIFIERS = (
    "ios_idfv",
    "android_uuid",
    "ios_advertising_id",
    "android_advertising_id",
    "fire_advertising_id",
    "roku_advertising_id",
    "microsoft_advertising_id",
    "amp_id",
)
# Times in milliseconds are plausible from 2000-01-01 to 2100-01-01 (UTC). Below
# that lie seconds sent as milliseconds and unset device clocks (1970); above it,
# micro- and nanoseconds. Inside it every time is a valid Beam timestamp, date
# folder and file name; outside, a time is not used (see `plausible_time_ms`).
EARLIEST_TIME_MS = 946_684_800_000
LATEST_TIME_MS = 4_102_444_800_000
PLAUSIBLE_TIMES = "a time in milliseconds between 2000-01-01 and 2100-01-01 (UTC)"
# An advertising id of all zeros means "limit ad tracking": shared by many devices.
_ZERO_ID = "00000000-0000-0000-0000-000000000000"


def device_key(batch: dict) -> str | None:
    """The device a batch belongs to: mp_deviceid, else mpid, else a device_info id.

    >>> device_key({"mpid": 42, "device_info": {"ios_idfv": "A"}})
    'mpid:42'
    """
    mp_deviceid = batch.get("mp_deviceid")
    if isinstance(mp_deviceid, str) and mp_deviceid.strip():
        return f"mp_deviceid:{mp_deviceid}"
    mpid = as_int(batch.get("mpid"))
    if mpid is not None and mpid != 0:
        return f"mpid:{mpid}"
    device_info = batch.get("device_info")
    if isinstance(device_info, dict):
        for field in DEVICE_INFO_IDENTIFIERS:
            value = device_info.get(field)
            if isinstance(value, str) and value.strip() and value != _ZERO_ID:
                return f"{field}:{value}"
    return None


def plausible_time_ms(value: Any) -> int | None:
    """A timestamp field as milliseconds, or None unless it is one of PLAUSIBLE_TIMES."""
    unix_ms = as_int(value)
    if unix_ms is not None and EARLIEST_TIME_MS <= unix_ms < LATEST_TIME_MS:
        return unix_ms
    return None


def event_time_ms(event: Any) -> int | None:
    """An event's `data.timestamp_unixtime_ms`, or None where it is missing or implausible."""
    if isinstance(event, dict):
        data = event.get("data")
        if isinstance(data, dict):
            return plausible_time_ms(data.get("timestamp_unixtime_ms"))
    return None


def arrival_time_ms(batch: dict) -> int | None:
    """When mParticle received a batch: its own timestamp, else its first event's."""
    received = plausible_time_ms(batch.get("timestamp_unixtime_ms"))
    if received is not None:
        return received
    for event in batch.get("events") or ():
        return event_time_ms(event)
    return None


class Arrival(Protocol):
    """Anything that arrived: an ArrivedBatch, or one as it crosses a shuffle."""

    @property
    def arrival_ms(self) -> int: ...

    @property
    def source(self) -> str: ...


A = TypeVar("A", bound=Arrival)


def arrival_order(arrived: Arrival) -> tuple[int, str]:
    """Sort key: by arrival, then by source, so input order never matters."""
    return arrived.arrival_ms, arrived.source


def event_keys(event: Any) -> list:
    """What merging needs of one event: [its time (`event_time_ms`), its id's identity
    (123 and "123" are the same event id), its data.source_message_id]."""
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(data, dict):
        return [None, None, None]
    event_id = data.get("event_id")
    number = as_int(event_id)
    return [plausible_time_ms(data.get("timestamp_unixtime_ms")),
            event_id if number is None else number, data.get("source_message_id")]


def merge_order(
    batches: Sequence[tuple[int, Sequence[Sequence]]],
) -> tuple[list[tuple[int, int]], int]:
    """The rule of merging one device's batches in one window, over their events' keys.

    `batches`: (arrival_ms, `event_keys` of its events) of each batch, sorted by
    `arrival_order`. Returns which events the outbound batch holds, in order, as
    (batch index, event index): all the batches' events in event-time order (an
    event without a time at its batch's arrival), an event whose `event_id` or
    `source_message_id` was already seen left out; and how many were left out.
    """
    timed = [
        ((keys[0] if keys[0] is not None else arrival_ms), order, index, keys[1], keys[2])
        for order, (arrival_ms, batch_keys) in enumerate(batches)
        for index, keys in enumerate(batch_keys)
    ]
    timed.sort(key=lambda item: item[:3])
    seen_event_ids: set = set()
    seen_message_ids: set = set()
    chosen = []
    for _, order, index, event_id, message_id in timed:
        if event_id in seen_event_ids or message_id in seen_message_ids:
            continue
        if event_id is not None:
            seen_event_ids.add(event_id)
        if message_id is not None:
            seen_message_ids.add(message_id)
        chosen.append((order, index))
    return chosen, len(timed) - len(chosen)


class Merged(NamedTuple):
    """One outbound batch made of one device's batches in one window."""

    line: bytes  # its JSON
    first_event_ms: int | None  # its first event's time (`event_time_ms`), for date folders
    event_count: int
    duplicates: int  # events left out as already seen


def merge_batches(batches: Sequence[tuple[int, BatchParts]]) -> Merged:
    """One outbound batch from one device's batches in one window (`merge_order`).

    `batches`: (arrival_ms, parts) of each, sorted by `arrival_order` (so the result
    does not depend on input order). The batch-level fields are those of the latest
    batch, its `events` those `merge_order` picks, in that order.
    """
    if not batches:
        raise ValueError("merge_batches needs at least one batch")
    chosen, duplicates = merge_order([(arrival_ms, parts.keys) for arrival_ms, parts in batches])
    parts = [each for _, each in batches]
    line = parts[-1].line(parts[order].events[index] for order, index in chosen)
    first_event_ms = parts[chosen[0][0]].keys[chosen[0][1]][0] if chosen else None
    return Merged(line, first_event_ms, len(chosen), duplicates)


def split_per_event(parts: BatchParts) -> list[tuple[bytes, int | None, int]]:
    """With Send as Batch off: (line, first event time, event count) of each outbound
    batch: the batch's fields around each one of its events; a batch without events
    goes out as it came."""
    if not parts.events:
        return [(parts.as_sent(), None, 0)]
    return [(parts.line([event]), keys[0], 1)
            for event, keys in zip(parts.events, parts.keys, strict=True)]


def window_start_us(timestamp_us: int, size_us: int) -> int:
    """Start of the UTC-aligned fixed window holding a time, as Beam's FixedWindows."""
    return timestamp_us - timestamp_us % size_us


def split_sessions(arrived: Iterable[A], gap_ms: int) -> list[tuple[list[A], int]]:
    """One device's batches → sessions, each with its end (last arrival + gap), in ms.

    As Beam's Sessions: a batch covers [arrival, arrival + gap) and overlapping
    spans merge, so a batch exactly `gap` after the last one starts a new session.
    """
    sessions: list[tuple[list[A], int]] = []
    for item in sorted(arrived, key=arrival_order):
        if sessions and item.arrival_ms < sessions[-1][1]:
            batches, end_ms = sessions[-1]
            batches.append(item)
            sessions[-1] = (batches, max(end_ms, item.arrival_ms + gap_ms))
        else:
            sessions.append(([item], item.arrival_ms + gap_ms))
    return sessions
