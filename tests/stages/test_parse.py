"""ParseBatches in a TestPipeline: each kind of bad input is a dead letter with a reason."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipeline.run import counters_of
from tests.pipelines import batch_pipeline
from tests.stages.batches import T0, batch, raw
from transforms.parse import ParseBatches, parse_batch
from transforms.rules import batch_json, grouping, naming
from transforms.rules.dead_letters import LINE_FIELDS_BYTES, MAX_LINE_GROWTH, dead_letter
from transforms.values import RawRecord


def test_parse_sends_each_kind_of_bad_input_to_dead_letters_with_a_reason():
    good_with_bad_event = batch("d1", T0, 1, 2)
    good_with_bad_event["events"].insert(1, "not an event")
    records = [
        raw("f:1", good_with_bad_event),
        raw("f:2", b"{truncated"),
        raw("f:3", [1, 2]),
        raw("f:4", {"events": {"a": 1}}),
        raw("f:5", {"events": [{"event_type": "custom_event", "data": {}}]}),
        raw("f:6", {"events": [], "padding": "x" * 500}),
        raw("f:7", {"events": [{"data": {}}], "mpid": 1, "timestamp_unixtime_ms": T0}),
    ]
    expected = [
        ("f:1 events[1]", "event is a JSON str, not an object"),
        ("f:2", "not JSON: Expecting property name"),
        ("f:3", "not a JSON object but a JSON list"),
        ("f:4", "events is a dict, not a list"),
        ("f:5", "no usable arrival time: neither timestamp_unixtime_ms nor"),
        ("f:6", "record is 529 bytes, over --max_batch_bytes=400"),
        ("f:7 events[0]", "event has no event_type string"),
    ]

    def reasons_start_as_expected(actual):
        actual = sorted(actual)
        assert [source for source, _, _ in actual] == [source for source, _ in expected]
        for (_, stage, reason), (_, start) in zip(actual, expected, strict=True):
            assert stage == "parse" and reason.startswith(start), reason

    with batch_pipeline() as p:
        parsed = p | beam.Create(records) | ParseBatches(max_batch_bytes=400)
        assert_that(
            parsed["batches"] | beam.Map(lambda a: (a.source, len(a.batch["events"]))),
            equal_to([("f:1", 2), ("f:7", 0)]),
            label="batches",
        )
        assert_that(
            parsed["dead_letters"] | beam.Map(lambda d: (d["source"], d["stage"], d["reason"])),
            reasons_start_as_expected,
            label="dead_letters",
        )




def test_the_parse_steps_count_what_they_read_and_name_the_app_they_were_told():
    records = [raw("f:1", batch("d1", T0, 1, 2)), raw("f:2", b"not json"),
               raw("f:3", {"events": [{"event_type": "x"}] * 3}),  # no arrival time
               raw("f:4", {**batch("d4", T0, 4), "events": [{"data": {}}, *batch("d4", T0, 5)[
                   "events"]]})]
    p = batch_pipeline()
    parsed = p | beam.Create(records) | ParseBatches(max_batch_bytes=10_000, app_name="Forced")
    assert_that(parsed["batches"] | beam.Map(lambda a: (a.source, a.app_name)),
                equal_to([("f:1", "Forced"), ("f:4", "Forced")]))
    result = p.run()
    result.wait_until_finish()
    counters = counters_of(result)
    assert {name: counters.get(name) for name in (
        "records_read", "batches_read", "events_read", "records_dead_lettered",
        "events_dead_lettered")} == {
        "records_read": 4, "batches_read": 2, "events_read": 7, "records_dead_lettered": 2,
        "events_dead_lettered": 4}
    # The step as runners show it and Dataflow's --update matches it: a stable name.
    assert {counter.key.step for counter in result.metrics().query()["counters"]} == {
        "ParseBatches/ParseBatch/ParDo(_ParseBatchFn)"}


def _letter(record: RawRecord, max_batch_bytes: int = 10_000) -> tuple[dict, int]:
    arrived, [letter], events = parse_batch(record, max_batch_bytes, None)
    assert arrived is None
    return letter, events


def test_a_dead_letter_holds_the_record_as_it_came_and_counts_the_events_read():
    for data, events in ((b"not json", 0), (b"x" * 101, 0), (b'{"events":[{"event_type":"x"}]}', 1),
                         (b'{"events":[{"event_type":"x"}],"pad":"%s"}' % (b"p" * 80), 0),
                         (b'{"source":"s","stage":"p","reason":"r","raw":null}', 0),
                         # too long even for a dead letter's line: refused unread
                         (b'{"events":[{"event_type":"x"}],"pad":"%s"}' % (b"p" * 66_200), 0)):
        letter, read = _letter(RawRecord("f:9", data), max_batch_bytes=100)
        assert (letter["source"], letter["stage"], letter["raw"], read) == (
            "f:9", "parse", data.decode(), events), letter
    assert _letter(RawRecord("f:9", b'{"source":"s","stage":"p","reason":"r","raw":null}'))[0][
        "reason"] == "a dead letter without its record cannot be replayed"
    exactly = b'{"events":[],"timestamp_unixtime_ms":%d}' % T0
    assert parse_batch(RawRecord("f:1", exactly), len(exactly), None)[0] is not None


def test_a_dead_letter_line_as_long_as_one_can_be_is_replayed():
    """The longest line that can hold a record that fits (escaped up to MAX_LINE_GROWTH
    times, with the other fields) is read as a dead letter, not refused unread."""
    record = b'{"events":[],"timestamp_unixtime_ms":%d}' % T0
    line = batch_json.encode(dead_letter("f:1", "parse", "why", record))
    longest = MAX_LINE_GROWTH * len(record) + LINE_FIELDS_BYTES
    padded = line + b" " * (longest - len(line))  # JSON may end in white space
    arrived = parse_batch(RawRecord("dead:1", padded), len(record), None)[0]
    assert arrived is not None and arrived.source == "dead:1 (dead letter of f:1)"
    letter, _ = _letter(RawRecord("dead:1", padded + b" "), len(record))
    assert letter["reason"].startswith(f"record is {longest + 1:,} bytes, over")


def test_where_a_batch_belongs_comes_from_the_batch_or_else_its_record():
    arrived = parse_batch(RawRecord("f:1", b'{"events":[],"timestamp_unixtime_ms":%d,'
                                    b'"application_info":{"application_name":"My App"}}' % T0),
                          10_000, None)[0]
    assert (arrived.device, arrived.app_name, arrived.arrival_ms) == ("no_device:f:1", "My_App", T0)
    published = RawRecord("pubsub:1", b'{"events":[],"application_info":[1]}', T0 + 5)
    arrived = parse_batch(published, 10_000, None)[0]
    assert (arrived.arrival_ms, arrived.app_name) == (T0 + 5, naming.UNKNOWN_APP_NAME)


def test_a_replayed_dead_letter_keeps_its_messages_time_and_is_unwrapped_once():
    inner = dead_letter("f:1", "parse", "why", b'{"events":[],"mpid":1}')
    outer = dead_letter("dead:1", "parse", "again", batch_json.encode(inner))
    arrived = parse_batch(RawRecord("pubsub:2", batch_json.encode(inner), T0 + 7), 10_000, "A")[0]
    assert (arrived.source, arrived.arrival_ms, arrived.app_name) == (
        "pubsub:2 (dead letter of f:1)", T0 + 7, "A")
    _, [letter], _ = parse_batch(RawRecord("dead:2", batch_json.encode(outer)), 10_000, None)
    assert letter["source"] == "dead:2 (dead letter of dead:1)"  # the inner one as it is
    assert letter["reason"].startswith("no usable arrival time")
    assert json.loads(letter["raw"]) == inner


def test_an_implausible_time_is_shown_in_the_reason_cut_to_40_characters():
    def reason(timestamp) -> str:
        event = {"event_type": "x", "data": {"timestamp_unixtime_ms": timestamp}}
        record = batch_json.encode({"events": [event], "timestamp_unixtime_ms": T0})
        return parse_batch(RawRecord("f:1", record), 10_000, None)[1][0]["reason"]

    assert reason("x" * 38) == (f"event data.timestamp_unixtime_ms {'x' * 38!r} is not "
                                f"{grouping.PLAUSIBLE_TIMES}")
    assert reason("y" * 39) == (f"event data.timestamp_unixtime_ms '{'y' * 39}... is not "
                                f"{grouping.PLAUSIBLE_TIMES}")
    assert parse_batch(RawRecord("f:1", b'{"events":[{"event_type":"x","data":[1]}],'
                                 b'"timestamp_unixtime_ms":%d}' % T0), 10_000, None)[1][0][
        "reason"] == "event data is a JSON list, not an object"
