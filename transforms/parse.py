"""ParseBatches: raw records → ArrivedBatch, or dead letters with the reason.

What grouping needs (device, arrival time, app name) is read here, from the
batch as it came, before any setting strips the fields it comes from.
"""

from __future__ import annotations

from typing import Iterator

import apache_beam as beam
from apache_beam import pvalue

from transforms import metrics, values
from transforms.outputs import with_dead_letters
from transforms.rules import batch_json, grouping, naming
from transforms.rules.dead_letters import (
    DEAD_LETTERS,
    LINE_FIELDS_BYTES,
    MAX_LINE_GROWTH,
    REPLAY_MARKER,
    dead_letter,
    replayed,
    unexpected,
)
from transforms.values import RawRecord

__all__ = ["DEFAULT_MAX_BATCH_BYTES", "STAGE", "ParseBatches", "parse_batch"]

STAGE = "parse"
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024


def parse_batch(
    record: RawRecord, max_batch_bytes: int, app_name: str | None, replaying: bool = False
) -> tuple[values.ArrivedBatch | None, list[dict], int]:
    """One record → (batch or None, dead letters, events read). Never raises on data.

    A dead-letter record (`dead_letters.replayed`) is parsed as the record it holds,
    under a source that names both, and that record is what must fit in
    `max_batch_bytes` (its line is larger); `replaying`: this is that record, which is
    taken as it is even if it looks like a dead letter itself."""
    oversize = len(record.data) > max_batch_bytes
    if oversize and (replaying or len(record.data) > _largest_dead_letter(max_batch_bytes)):
        return None, [_oversize(record, max_batch_bytes)], 0
    try:
        batch = batch_json.decode(record.data)
        if not isinstance(batch, dict):
            raise batch_json.BadRecord(f"not a JSON object but a JSON {type(batch).__name__}")
        events = batch.get("events")
        if events is not None and not isinstance(events, list):
            raise batch_json.BadRecord(f"events is a {type(events).__name__}, not a list")
    except batch_json.BadRecord as err:
        if oversize:
            return None, [_oversize(record, max_batch_bytes)], 0
        return None, [dead_letter(record.source, STAGE, err.reason, record.data)], 0
    try:
        replay = replayed(batch)
    except ValueError as err:
        return None, [dead_letter(record.source, STAGE, str(err), record.data)], 0
    if replay is not None and not replaying:  # a dead-letter file given as input again
        source, data = replay
        again = RawRecord(f"{record.source}{REPLAY_MARKER}{source})", data,
                          record.publish_time_ms)
        return parse_batch(again, max_batch_bytes, app_name, replaying=True)
    if oversize:
        return None, [_oversize(record, max_batch_bytes)], 0

    events = events or []
    good_events, dead = [], []
    for index, event in enumerate(events):
        problem = _event_problem(event)
        if problem is None:
            good_events.append(event)
        else:
            source = f"{record.source} events[{index}]"
            alone = {k: ([event] if k == "events" else v) for k, v in batch.items()}
            dead.append(dead_letter(source, STAGE, problem, batch_json.encode(alone)))
    if dead:
        batch = {k: (good_events if k == "events" else v) for k, v in batch.items()}

    arrival_ms = record.publish_time_ms or grouping.arrival_time_ms(batch)
    if arrival_ms is None:
        reason = (
            "no usable arrival time: neither timestamp_unixtime_ms nor the first "
            f"event's data.timestamp_unixtime_ms is {grouping.PLAUSIBLE_TIMES}"
        )
        return None, [dead_letter(record.source, STAGE, reason, record.data)], len(events)
    device = grouping.device_key(batch) or f"no_device:{record.source}"
    application_info = batch.get("application_info")
    name = app_name or (
        application_info.get("application_name") if isinstance(application_info, dict) else None
    )
    arrived = values.ArrivedBatch(
        batch, record.source, arrival_ms, device, naming.safe_app_name(name)
    )
    return arrived, dead, len(events)


def _largest_dead_letter(max_batch_bytes: int) -> int:
    """The longest line that can hold a dead letter of a record that fits."""
    return MAX_LINE_GROWTH * max_batch_bytes + LINE_FIELDS_BYTES


def _oversize(record: RawRecord, max_batch_bytes: int) -> dict:
    reason = f"record is {len(record.data):,} bytes, over --max_batch_bytes={max_batch_bytes:,}"
    return dead_letter(record.source, STAGE, reason, record.data)


def _event_problem(event: object) -> str | None:
    if not isinstance(event, dict):
        return f"event is a JSON {type(event).__name__}, not an object"
    if not isinstance(event.get("event_type"), str):
        return "event has no event_type string"
    data = event.get("data")
    if data is None:
        return None
    if not isinstance(data, dict):
        return f"event data is a JSON {type(data).__name__}, not an object"
    timestamp = data.get("timestamp_unixtime_ms")
    if timestamp is not None and grouping.event_time_ms(event) is None:
        shown = repr(timestamp) if len(repr(timestamp)) <= 40 else repr(timestamp)[:40] + "..."
        return f"event data.timestamp_unixtime_ms {shown} is not {grouping.PLAUSIBLE_TIMES}"
    return None


class _ParseBatchFn(beam.DoFn):
    """RawRecord → ArrivedBatch; bad records and bad events → DEAD_LETTERS."""

    def __init__(self, max_batch_bytes: int, app_name: str | None):
        self._max_batch_bytes = max_batch_bytes
        self._app_name = app_name

    def setup(self):
        self._records_read = metrics.counter(metrics.RECORDS_READ)
        self._batches_read = metrics.counter(metrics.BATCHES_READ)
        self._events_read = metrics.counter(metrics.EVENTS_READ)
        self._records_dead = metrics.counter(metrics.RECORDS_DEAD_LETTERED)
        self._events_dead = metrics.counter(metrics.EVENTS_DEAD_LETTERED)

    def process(self, record: RawRecord) -> Iterator:
        try:
            arrived, dead, events_read = parse_batch(
                record, self._max_batch_bytes, self._app_name
            )
        except Exception as err:  # no record may stop the run: a dead letter says why
            arrived, dead, events_read = None, [
                dead_letter(record.source, STAGE, unexpected(err), record.data)
            ], 0
        self._records_read.inc()
        self._events_read.inc(events_read)
        if arrived is None:
            self._records_dead.inc()
            self._events_dead.inc(events_read)
        else:
            self._batches_read.inc()
            self._events_dead.inc(len(dead))
            yield arrived
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD_LETTERS, letter)


class ParseBatches(beam.PTransform):
    """RawRecord → {"batches": ArrivedBatch, "dead_letters": dict}."""

    def __init__(self, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES, app_name: str | None = None):
        super().__init__()
        self._fn = _ParseBatchFn(max_batch_bytes, app_name)

    def expand(self, records):
        return with_dead_letters(records, "ParseBatch", self._fn)
