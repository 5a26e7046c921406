"""Time, in streaming mode with TestStream: window edges, session gaps, late panes."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import PaneInfoTiming

from pipeline.build import forward
from pipeline.config import load_config
from tests.conftest import list_keys
from tests.pipelines import streaming_pipeline
from tests.test_transforms import MINUTE_MS, T0, arrived, batch
from transforms.batching import BatchPerDevice, StampArrival
from transforms.values import Batching, BatchingMode, RawRecord

SECOND_MS = 1000


def stream(*steps) -> TestStream:
    """Steps: ArrivedBatch to add, or ("watermark", unix_ms) to advance to."""
    test_stream = TestStream().advance_watermark_to(T0 / 1000 - 3600)
    for step in steps:
        if isinstance(step, tuple) and step[0] == "watermark":
            test_stream = test_stream.advance_watermark_to(step[1] / 1000)
        else:
            test_stream = test_stream.add_elements(
                [window.TimestampedValue(step, step.arrival_ms / 1000)]
            )
    return test_stream.advance_watermark_to_infinity()


class _Describe(beam.DoFn):
    def process(self, forwarded, pane=beam.DoFn.PaneInfoParam):
        ids = [e["data"]["event_id"] for e in forwarded.batch["events"]]
        timing = "late" if pane.timing == PaneInfoTiming.LATE else "on_time"
        yield forwarded.device[-2:], ids, timing


def run_stream(test_stream: TestStream, mode: BatchingMode, expected: list, **kwargs) -> None:
    """Runs the stream through BatchPerDevice; asserts (device, event ids, pane timing)."""
    p = streaming_pipeline()
    batched = p | test_stream | StampArrival() | BatchPerDevice(Batching(mode, **kwargs))
    out = batched["batches"] | beam.ParDo(_Describe())
    assert_that(out, equal_to(expected))
    p.run().wait_until_finish()
    # Counters are not checked here: Beam 2.77's BundleBasedDirectRunner keeps
    # the counter updates of a step's first bundle only (seen with a bare
    # ParDo after a GroupByKey), so the late and duplicate counters are
    # checked in bounded runs and on the pane timing of the output instead.


def test_ten_minute_boundaries_with_devices_interleaved():
    run_stream(
        stream(
            arrived("d1", T0 + 10 * MINUTE_MS - 1, 1),  # last millisecond of [T0, T0+10m)
            arrived("d2", T0 + 3 * MINUTE_MS, 2),
            arrived("d1", T0 + 10 * MINUTE_MS, 3),  # first millisecond of the next window
            arrived("d2", T0 + 9 * MINUTE_MS, 4),
            arrived("d1", T0, 5),
        ),
        BatchingMode.FIXED,
        [("d1", [5, 1], "on_time"), ("d1", [3], "on_time"), ("d2", [2, 4], "on_time")],
    )


def test_session_gap_minus_one_second_merges_plus_one_second_splits():
    gap_s = 600
    first = T0
    merged = first + (gap_s - 1) * SECOND_MS
    split = merged + (gap_s + 1) * SECOND_MS
    run_stream(
        stream(arrived("d1", first, 1), arrived("d2", first, 9), arrived("d1", merged, 2),
               arrived("d1", split, 3)),
        BatchingMode.SESSIONS,
        [("d1", [1, 2], "on_time"), ("d1", [3], "on_time"), ("d2", [9], "on_time")],
        session_gap_s=gap_s,
    )


def test_session_is_written_when_the_gap_passes_without_new_data():
    run_stream(
        stream(
            arrived("d1", T0, 1),
            ("watermark", T0 + 31 * MINUTE_MS),  # the gap has passed: the session is out
            arrived("d1", T0 + 40 * MINUTE_MS, 2),
        ),
        BatchingMode.SESSIONS,
        [("d1", [1], "on_time"), ("d1", [2], "on_time")],
        session_gap_s=30 * 60,
    )


def test_late_data_goes_out_in_a_further_pane_and_is_counted():
    run_stream(
        stream(
            arrived("d1", T0 + 1 * MINUTE_MS, 1),
            ("watermark", T0 + 11 * MINUTE_MS),  # the window [T0, T0+10m) fires on time
            arrived("d1", T0 + 2 * MINUTE_MS, 2),  # late for it
            arrived("d1", T0 + 3 * MINUTE_MS, 3),  # late too: a pane of its own
        ),
        BatchingMode.FIXED,
        [("d1", [1], "on_time"), ("d1", [2], "late"), ("d1", [3], "late")],
        allowed_lateness_s=3600,
    )


def test_event_delivered_twice_is_written_once():
    first = arrived("d1", T0, 1, 2)
    redelivered = first._replace(source="message-2", arrival_ms=T0 + 5 * SECOND_MS)
    run_stream(stream(first, redelivered), BatchingMode.FIXED, [("d1", [1, 2], "on_time")])


def record(source: str, at_ms: int, *event_ids: int) -> RawRecord:
    data = json.dumps(batch("d1", at_ms, *event_ids)).encode()
    return RawRecord(source, data, publish_time_ms=at_ms)


def test_late_pane_becomes_a_further_file_and_redelivery_is_written_once(
    s3_endpoint, s3_client, bucket
):
    config, _ = load_config([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}", "--folder_name=live",
        "--input_subscription=projects/local-project/subscriptions/unused",
        "--dead_letter_flush_s=60",
    ])
    on_time = record("pubsub:1", T0 + MINUTE_MS, 1, 2)
    redelivered = on_time._replace(source="pubsub:2", publish_time_ms=T0 + 2 * MINUTE_MS)
    late = record("pubsub:3", T0 + 3 * MINUTE_MS, 3)
    garbage = RawRecord("pubsub:4", b"not json", publish_time_ms=T0 + 4 * MINUTE_MS)
    test_stream = (
        TestStream()
        .advance_watermark_to(T0 / 1000)
        .add_elements([window.TimestampedValue(r, r.publish_time_ms / 1000)
                       for r in (on_time, redelivered, garbage)])
        .advance_watermark_to((T0 + 11 * MINUTE_MS) / 1000)  # [T0, T0+10m) is written
        .add_elements([window.TimestampedValue(late, late.publish_time_ms / 1000)])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    outputs = forward(p | test_stream, config)
    assert_that(outputs.files | beam.Map(lambda w: (w.lines, w.events)),
                equal_to([(1, 2), (1, 1)]))
    p.run().wait_until_finish()

    files = {}
    for key in list_keys(s3_client, bucket, "live/"):
        files[key] = [json.loads(line) for line in
                      s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
    dead = [v for k, v in files.items() if "/_dead_letters/" in k]
    forwarded = sorted(
        [e["data"]["event_id"] for b in batches for e in b["events"]]
        for k, batches in files.items() if "/_dead_letters/" not in k
    )
    assert forwarded == [[1, 2], [3]]  # on time, then the late pane in a file of its own
    assert [[d["source"] for d in letters] for letters in dead] == [["pubsub:4"]]


def test_live_files_dated_by_upload_time_take_the_day_their_window_closes(
    s3_endpoint, s3_client, bucket
):
    """No clock: the window [23:50, 00:00) closes on the next day, and its late pane,
    written whenever it comes, goes under that day too; a file of [23:40, 23:50) under
    the day before. So a retry or a restart writes the same keys."""
    config, _ = load_config([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}", "--folder_name=live",
        "--input_subscription=projects/local-project/subscriptions/unused",
        "--store_data_in_folders_by_date=upload_time", "--dead_letter_flush_s=60",
    ])
    midnight = 1_700_006_400_000  # 2023-11-15T00:00:00Z
    before = record("pubsub:1", midnight - 15 * MINUTE_MS, 1)
    on_time = record("pubsub:2", midnight - 5 * MINUTE_MS, 2)
    late = record("pubsub:3", midnight - 4 * MINUTE_MS, 3)
    test_stream = (
        TestStream()
        .advance_watermark_to((midnight - 20 * MINUTE_MS) / 1000)
        .add_elements([window.TimestampedValue(r, r.publish_time_ms / 1000)
                       for r in (before, on_time)])
        .advance_watermark_to((midnight + 11 * MINUTE_MS) / 1000)  # both windows written
        .add_elements([window.TimestampedValue(late, late.publish_time_ms / 1000)])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    forward(p | test_stream, config)
    p.run().wait_until_finish()

    folders = {}
    for key in list_keys(s3_client, bucket, "live/"):
        if "/_dead_letters/" in key:
            continue
        [line] = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()
        [event] = json.loads(line)["events"]
        folders[event["data"]["event_id"]] = key.split("/")[1]
    assert folders == {1: "2023-11-14", 2: "2023-11-15", 3: "2023-11-15"}
