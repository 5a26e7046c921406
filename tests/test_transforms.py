"""Each composite transform in a TestPipeline, checked with assert_that."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import SAMPLE_BATCH, list_keys
from tests.pipelines import batch_pipeline
from transforms.apply_settings import ApplySettings
from transforms.batching import BatchPerDevice, StampArrival
from transforms.io import s3
from transforms.parse import ParseBatches
from transforms.read import ReadBatches
from transforms.rules.naming import DateFolders
from transforms.rules.settings import ForwardingSettings
from transforms.values import ArrivedBatch, Batching, BatchingMode, FileLayout, RawRecord
from transforms.write import WriteBatchFiles, WriteDeadLetters

MINUTE_MS = 60_000
T0 = 1_700_000_400_000  # 2023-11-14T22:20:00Z, a 10-minute boundary


def batch(device: str, arrival_ms: int, *event_ids: int, app: str = "App") -> dict:
    return {
        "events": [
            {"event_type": "custom_event",
             "data": {"event_id": i, "timestamp_unixtime_ms": arrival_ms - 10 + n}}
            for n, i in enumerate(event_ids)
        ],
        "application_info": {"application_name": app},
        "mp_deviceid": device,
        "timestamp_unixtime_ms": arrival_ms,
    }


def raw(source: str, value) -> RawRecord:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    return RawRecord(source, data)


def test_read_and_parse_batches_with_dead_letters(tmp_path):
    good = tmp_path / "good.ndjson"
    good.write_text(json.dumps(batch("d1", T0, 1)) + "\nnot json\n")
    (tmp_path / "sample.json").write_bytes(SAMPLE_BATCH.read_bytes())
    with batch_pipeline() as p:
        read = p | ReadBatches([str(tmp_path / "*")], s3.S3Connection())
        parsed = read["records"] | ParseBatches()
        assert_that(
            parsed["batches"]
            | beam.Map(lambda a: (a.source.rsplit("/", 1)[-1], a.device, a.app_name)),
            equal_to([
                ("good.ndjson:1", "mp_deviceid:d1", "App"),
                ("sample.json", "mp_deviceid:3fb44a79-df2d-446d-acf1-e87eda854ae1", "SDK_Canary"),
            ]),
            label="batches",
        )
        assert_that(
            parsed["dead_letters"] | beam.Map(lambda d: (d["source"].rsplit("/", 1)[-1], d["raw"])),
            equal_to([("good.ndjson:2", "not json")]),
            label="dead_letters",
        )


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


def arrived(device: str, arrival_ms: int, *event_ids: int) -> ArrivedBatch:
    return ArrivedBatch(batch(device, arrival_ms, *event_ids), f"src-{device}-{arrival_ms}",
                        arrival_ms, f"mp_deviceid:{device}", "App")


def test_apply_settings_filters_and_drops_emptied_batches():
    kept = arrived("d1", T0, 1)
    emptied = arrived("d2", T0, 2)
    emptied.batch["events"][0]["event_type"] = "user_attribute_change"
    with batch_pipeline() as p:
        out = p | beam.Create([kept, emptied]) | ApplySettings(ForwardingSettings(unique_id="u"))
        assert_that(out["batches"] | beam.Map(lambda a: (a.device, a.batch["unique_id"])),
                    equal_to([("mp_deviceid:d1", "u")]))


def device_batches(p, mode: BatchingMode, items: list[ArrivedBatch], **kwargs):
    """(device suffix, event ids) per outbound batch."""
    batched = p | beam.Create(items) | StampArrival() | BatchPerDevice(Batching(mode, **kwargs))
    return (
        batched["batches"]
        | beam.Map(lambda f: (f.device[-2:], [e["data"]["event_id"] for e in f.batch["events"]]))
    )


def test_fixed_windows_group_per_device_and_ten_minutes():
    items = [
        arrived("d1", T0 + 1 * MINUTE_MS, 1),
        arrived("d1", T0 + 9 * MINUTE_MS, 2, 3),
        arrived("d1", T0 + 10 * MINUTE_MS, 4),  # next window
        arrived("d2", T0 + 5 * MINUTE_MS, 5),
        arrived("d1", T0 - 1, 6),  # previous window
    ]
    with batch_pipeline() as p:
        out = device_batches(p, BatchingMode.FIXED, items)
        assert_that(out, equal_to([("d1", [1, 2, 3]), ("d1", [4]), ("d2", [5]), ("d1", [6])]))


def test_sessions_group_until_the_gap():
    items = [
        arrived("d1", T0, 1),
        arrived("d1", T0 + 29 * MINUTE_MS, 2),
        arrived("d1", T0 + 58 * MINUTE_MS, 3),  # 29 min after the last: same session
        arrived("d1", T0 + 90 * MINUTE_MS, 4),  # 32 min gap: a new session
    ]
    with batch_pipeline() as p:
        out = device_batches(p, BatchingMode.SESSIONS, items, session_gap_s=30 * 60)
        assert_that(out, equal_to([("d1", [1, 2, 3]), ("d1", [4])]))


def test_per_event_mode_sends_every_event_alone():
    with batch_pipeline() as p:
        out = device_batches(
            p, BatchingMode.PER_EVENT, [arrived("d1", T0, 1, 2), arrived("d1", T0, 3)]
        )
        assert_that(out, equal_to([("d1", [1]), ("d1", [2]), ("d1", [3])]))


def test_write_batch_files_packs_by_bounds_and_writes_to_s3(s3_endpoint, s3_client, bucket):
    connection = s3.S3Connection(endpoint_url=s3_endpoint)
    items = [arrived(f"d{n}", T0 + n * 1000, n) for n in range(5)]
    with batch_pipeline() as p:
        batched = p | beam.Create(items) | StampArrival() | BatchPerDevice(Batching())
        written = (
            batched["batches"]
            | WriteBatchFiles(
                f"s3://{bucket}", connection,
                FileLayout(folder="out", date_folders=DateFolders.EVENT_TIME, max_batches=2),
                Batching(allowed_lateness_s=0),
            )
        )
        assert_that(written | beam.Map(lambda w: (w.lines, w.outcome)),
                    equal_to([(2, "written"), (2, "written"), (1, "written")]))
    keys = list_keys(s3_client, bucket)
    assert len(keys) == 3 and all(k.startswith("out/2023-11-14/App_2023111422") for k in keys)
    lines = [
        json.loads(line)
        for key in keys
        for line in s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()
    ]
    assert sorted(b["events"][0]["data"]["event_id"] for b in lines) == [0, 1, 2, 3, 4]


def test_write_dead_letters_to_a_local_directory(tmp_path):
    letters = [{"source": f"f:{n}", "stage": "parse", "reason": "not JSON", "raw": "x"}
               for n in range(3)]
    with batch_pipeline() as p:
        written = p | beam.Create(letters) | WriteDeadLetters(str(tmp_path), s3.S3Connection())
        assert_that(written | beam.Map(lambda w: w.lines), equal_to([3]))
    [path] = [f for f in tmp_path.iterdir()]
    assert path.name.startswith("dead_letters_") and path.suffix == ".ndjson"
    assert sorted(json.loads(line)["source"] for line in path.read_text().splitlines()) == [
        "f:0", "f:1", "f:2",
    ]


def test_stamp_arrival_sets_the_element_timestamp():
    with batch_pipeline() as p:
        out = (
            p
            | beam.Create([arrived("d1", T0, 1)])
            | StampArrival()
            | beam.Map(lambda kv, ts=beam.DoFn.TimestampParam: (kv[0], ts.micros // 1000))
        )
        assert_that(out, equal_to([("mp_deviceid:d1", T0)]))
