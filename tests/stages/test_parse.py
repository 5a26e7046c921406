"""ParseBatches in a TestPipeline: each kind of bad input is a dead letter with a reason."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from tests.pipelines import batch_pipeline
from tests.stages.batches import T0, batch, raw
from transforms.parse import ParseBatches


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


