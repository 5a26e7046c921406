"""StampArrival and BatchPerDevice (`transforms.batching`): fixed windows, sessions and
one batch per event, bounded (keyed windows) and streaming (Beam's windows, late
panes, TestStream); merging through the shuffle against the rule in plain words;
both ways to the windows write the same objects."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import random
import zlib

import apache_beam as beam
import pytest
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.metrics.metricbase import MetricName
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.worker import statesampler
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.counters import CounterFactory
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.build import build, forward
from pipeline.config import load_config
from pipeline.run import counters_of
from pipeline.runners import RunnerProfile, make_runner, profile_of, worker_environment
from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import list_keys
from tests.pipelines import Replayed, batch_pipeline, streaming_pipeline
from tests.stages.batches import MINUTE_MS, T0, arrived, batch
from transforms import metrics
from transforms.batching import BatchPerDevice, StampArrival, key_part
from transforms.live_sessions import (
    LATE_HORIZON_MS,
    SessionsMemory,
    _LiveSessionsFn,
    session_key,
    timer_tag,
)
from transforms.machinery.merging import Merger, per_event
from transforms.machinery.modes import mode_of
from transforms.machinery.shuffled import NO_DICTIONARY, ShuffledBatch
from transforms.read import ReadBatches
from transforms.rules import batch_json
from transforms.rules.batch_json import as_int
from transforms.rules.batch_parts import BatchParts
from transforms.rules.grouping import event_time_ms
from transforms.values import (
    ArrivedBatch,
    Batching,
    BatchingMode,
    ForwardedBatch,
    LiveSessions,
    RawRecord,
)


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


def test_stamp_arrival_sets_the_element_timestamp():
    with batch_pipeline() as p:
        out = (
            p
            | beam.Create([arrived("d1", T0, 1)])
            | StampArrival()
            | beam.Map(lambda kv, ts=beam.DoFn.TimestampParam: (kv[0], ts.micros // 1000))
        )
        assert_that(out, equal_to([("mp_deviceid:d1", T0)]))


BATCH = {"mpid": -8, "events": [{"event_type": "custom_event", "data": {"event_name": "é ✓"}}]}


# Batches as a sender may shape them: any fields (integers beyond 64 bits too),
# events with ids and message ids that repeat, as numbers or strings, with or
# without times; sometimes no `events` at all.
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=6)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
_events = st.builds(
    lambda event_id, message_id, time, extra: {
        "event_type": "custom_event",
        "data": {k: v for k, v in (("event_id", event_id), ("source_message_id", message_id),
                                   ("timestamp_unixtime_ms", time)) if v is not None},
        **extra,
    },
    st.none() | st.integers(1, 4) | st.sampled_from(["2", "3", 2**65]),
    st.none() | st.sampled_from(["m1", "m2"]),
    st.none() | st.integers(1_700_000_000_000, 1_700_000_000_005),
    st.dictionaries(st.sampled_from(["x", "é"]), _values, max_size=1),
)
_batches = st.builds(
    lambda fields, events, where: (
        {**dict(fields[:where]), "events": events, **dict(fields[where:])}
        if events is not None else dict(fields)
    ),
    st.lists(st.tuples(st.sampled_from(["mpid", "a", "z", "ü"]), _values), max_size=4,
             unique_by=lambda item: item[0]),
    st.none() | st.lists(_events, max_size=4),
    st.integers(0, 4),
)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(st.lists(st.tuples(_batches, st.integers(0, 3)), min_size=1, max_size=4))
def test_a_merge_through_the_shuffle_writes_the_batch_the_rule_describes(batches):
    """The pipeline merges batches as parts of JSON that crossed the shuffle
    (`Merger`, `BatchParts`); `_merged_as_described` merges the same dicts as the
    README says, plainly: both give the same line, count and date."""
    arrived = [ArrivedBatch(batch, f"f:{n}", 1_700_000_000_000 + offset, "d", "App")
               for n, (batch, offset) in enumerate(batches)]
    for item in arrived:
        parts = BatchParts.from_bytes(BatchParts.of(item.batch).to_bytes())
        assert parts == BatchParts.of(item.batch)
        assert parts.as_sent() == batch_json.encode(item.batch)
    merged = _merged_as_described(arrived)
    shuffled = [ShuffledBatch.of(item, NO_DICTIONARY) for item in reversed(arrived)]
    forwarded = list(Merger(NO_DICTIONARY).merged("d", shuffled))
    assert [type(each) for each in forwarded] == [ForwardedBatch]
    [forwarded] = forwarded
    assert batch_json.decode(forwarded.line) == batch_json.decode(batch_json.encode(merged))
    if not any(isinstance(v, int) and not -(2**63) <= v < 2**64 for v in _ints(merged)):
        assert forwarded.line == batch_json.encode(merged)  # else floats print as orjson's
    assert forwarded.event_count == len(merged["events"])
    assert forwarded.first_event_ms == next(
        (event_time_ms(event) for event in merged["events"]), None)


def _merged_as_described(arrived: list[ArrivedBatch]) -> dict:
    """The merge rule in plain words over dicts, as the test's oracle: the latest
    batch's fields (by arrival, then source) around all the batches' events in
    event-time order (an event without a time at its batch's arrival), an event
    whose event id (123 and "123" alike) or source message id was seen leaving out."""
    arrived = sorted(arrived, key=lambda item: (item.arrival_ms, item.source))
    timed = []
    for order, item in enumerate(arrived):
        for index, event in enumerate(item.batch.get("events") or ()):
            at = event_time_ms(event)
            timed.append(((item.arrival_ms if at is None else at), order, index, event))
    seen: set = set()
    events = []
    for _, _, _, event in sorted(timed, key=lambda each: each[:3]):
        data = event.get("data") if isinstance(event, dict) else None
        data = data if isinstance(data, dict) else {}
        event_id, message_id = as_int(data.get("event_id")), data.get("source_message_id")
        if event_id is None:
            event_id = data.get("event_id")
        ids = {("event", event_id), ("message", message_id)} - {("event", None), ("message", None)}
        if ids & seen:
            continue
        seen |= ids
        events.append(event)
    latest = arrived[-1].batch
    return {key: (events if key == "events" else value) for key, value in latest.items()} | (
        {} if "events" in latest else {"events": events})


def _ints(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from _ints(item)
    elif isinstance(value, int):
        yield value


def test_one_batch_per_event_through_the_shuffle_is_the_batch_around_each_event():
    for sent in [BATCH, {"mpid": 1, "events": [], "z": 2}, {"mpid": 1, "z": 2}, {}]:
        one = ArrivedBatch(sent, "f:1", 1_700_000_000_000, "d", "App")
        lines = [f.line for f in per_event(("d", ShuffledBatch.of(one, NO_DICTIONARY)),
                                           NO_DICTIONARY)]
        around_each = [{key: ([event] if key == "events" else value)
                        for key, value in sent.items()} for event in sent.get("events") or ()]
        assert lines == [batch_json.encode(b) for b in around_each or [sent]]


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


def run_stream(test_stream: TestStream, mode: BatchingMode, expected: list, **kwargs) -> dict:
    """Runs the stream through BatchPerDevice; asserts (device, event ids, pane timing);
    returns the run's counters."""
    p = streaming_pipeline()
    # The DirectRunner merges Beam's session windows (it holds no watermark for a
    # user's timer); the sessions kept by timer are tested on Prism below.
    batched = p | test_stream | StampArrival() | BatchPerDevice(
        Batching(mode, **kwargs), live_sessions=LiveSessions(by_timer=False))
    out = batched["batches"] | beam.ParDo(_Describe())
    assert_that(out, equal_to(expected))
    result = p.run()
    result.wait_until_finish()
    return counters_of(result)


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
    counters = run_stream(
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
    assert (counters.get("late_batches"), counters.get("late_events")) == (2, 2), counters


def test_event_delivered_twice_is_written_once():
    first = arrived("d1", T0, 1, 2)
    redelivered = first._replace(source="message-2", arrival_ms=T0 + 5 * SECOND_MS)
    counters = run_stream(stream(first, redelivered), BatchingMode.FIXED,
                          [("d1", [1, 2], "on_time")])
    assert counters.get("events_filtered.duplicate") == 2, counters


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


def objects(client, bucket) -> dict[str, bytes]:
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in list_keys(client, bucket)}


@pytest.mark.parametrize("flags", [
    [],
    ["--wait_for_complete_batch=true", "--session_gap_s=900"],
    ["--send_as_batch=false", "--max_batches_per_file=50"],
    ["--store_data_in_folders_by_date=true", "--window_size_s=60", "--file_shards=3"],
])
def test_keyed_and_beam_windows_write_the_same_objects(
    s3_endpoint, s3_client, tmp_path, flags
):
    write_ndjson(str(tmp_path / "in.ndjson"), generate(500, 30))
    written = []
    for keyed in (True, False):
        bucket = f"keyed-{str(keyed).lower()}-{len(flags)}-{abs(hash(tuple(flags))) % 10**6}"
        s3_client.create_bucket(Bucket=bucket)
        config, _ = load_config([
            f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
            f"--input={tmp_path}/in.ndjson", "--use_compression=true", *flags,
        ])
        with batch_pipeline() as p:
            read = p | ReadBatches(list(config.inputs), config.connection)
            forward(read["records"], config, read["dead_letters"], keyed_windows=keyed)
        written.append(objects(s3_client, bucket))
    assert len(written[0]) > 3
    assert written[0] == written[1]


def _live_and_bounded(records: list[RawRecord], speedup: float, tail_s: float,
                      flags: list[str], s3_endpoint: str, s3_client,
                      profile: RunnerProfile | None = None) -> dict[str, dict]:
    """The objects that the same records write live on Prism (from `Replayed`, sessions
    by timer, kept as `profile` says, by default as a live run on Prism keeps them) and
    bounded (the keyed path), each run into a bucket of its own."""
    written = {}
    for mode in ("live", "bounded"):
        written[mode], written[f"{mode} counters"] = _written_on_prism(
            mode, records, speedup, tail_s, flags, s3_endpoint, s3_client, profile)
    return written


def _written_on_prism(mode: str, records: list[RawRecord], speedup: float, tail_s: float,
                      flags: list[str], s3_endpoint: str, s3_client,
                      profile: RunnerProfile | None = None,
                      late_files_batched: bool = False) -> tuple[dict, dict]:
    """(objects, counters) of the records forwarded on Prism into a bucket of their
    own, "live" (from `Replayed`) or "bounded"; see `_live_and_bounded`."""
    profile = dataclasses.replace(profile or profile_of("PrismRunner"),
                                  late_files_batched=late_files_batched)
    bucket = f"sessions-{mode}-{os.getpid()}-{next(_buckets)}"
    s3_client.create_bucket(Bucket=bucket)
    source = (["--input_subscription=projects/local-project/subscriptions/unused"]
              if mode == "live" else ["--input=unused.ndjson", "--upload_day=2026-11-30"])
    config, _ = load_config([f"--s3_bucket_name={bucket}",
                             f"--s3_endpoint_url={s3_endpoint}", *source,
                             "--file_flush_s=86400",  # files once their window closes
                             *flags])
    options = PipelineOptions(["--runner=PrismRunner"])
    options.view_as(StandardOptions).streaming = mode == "live"
    with worker_environment():
        p = beam.Pipeline(runner=make_runner(options), options=options)
        arrivals = p | (beam.io.Read(Replayed(records, speedup, tail_s)) if mode == "live"
                        else beam.Create(records))
        # live: sessions by timer; bounded: keyed windows
        forward(arrivals, config, profile=profile)
        result = p.run()
        result.wait_until_finish()
    return objects(s3_client, bucket), counters_of(result)


_buckets = itertools.count()


def test_a_session_over_three_bundles_of_a_live_source_is_one_batch_on_prism(
    s3_endpoint, s3_client, prism
):
    """Three batches of one device a second apart, 3-second gap, from an unbounded
    source in real time: one session, one batch. (Prism 2.77 with Beam's session
    windows writes three: tools/prism_repro/sessions_live.py.) Kept per device, as a
    run on Flink, Spark or Dataflow keeps them."""
    records = [RawRecord(f"pubsub:{n}", json.dumps(batch("d1", T0 + n * 1000, n + 1)).encode(),
                         publish_time_ms=T0 + n * 1000) for n in range(3)]
    written = _live_and_bounded(records, 1, 10, ["--wait_for_complete_batch=true",
                                                 "--session_gap_s=3"], s3_endpoint, s3_client,
                                dataclasses.replace(profile_of("PrismRunner"), session_processes=0,
                                                    sessions=LiveSessions(shards=0)))
    [(key, body)] = written["live"].items()
    assert [[e["data"]["event_id"] for e in json.loads(line)["events"]]
            for line in body.splitlines()] == [[1, 2, 3]]
    assert written["live"] == written["bounded"]


@pytest.mark.parametrize("harnesses", [1, 2])
def test_live_sessions_on_prism_write_what_a_bounded_run_writes_for_the_same_arrivals(
    harnesses, s3_endpoint, s3_client, prism
):
    """Live sessions kept by timer (`_LiveSessionsFn`), on Prism from an unbounded
    source in many bundles, write the same objects, byte for byte under the same keys,
    as a bounded run's sessions (the keyed path) over the same records at the same
    arrival times: 40 devices over some six hours (replayed 500 times faster), gaps
    on both sides of the session gap, sessions across file windows, a redelivered
    batch. The devices are held under 8 shards, five or so to a shard, as a live run
    on Prism holds a busy app's devices under its 4,096, in the sessions' own SDK
    harness, as on Prism, or split between two (`--session_harnesses=2`) (Prism as
    released fails this run: see `tools/prism/metrics-short-ids-per-environment.patch`)."""
    rng = random.Random(5)
    gap_s = 120
    records, at_ms, ids = [], T0, itertools.count(1)
    for _ in range(600):
        at_ms += rng.choice([200, 1_000, 5_000, 20_000])
        device = f"d{rng.randrange(40)}"
        records.append(RawRecord(f"pubsub:{len(records)}", json.dumps(
            batch(device, at_ms, next(ids), next(ids))).encode(), publish_time_ms=at_ms))
        if rng.random() < 0.2:  # a quiet spell: many sessions end
            at_ms += (gap_s + rng.choice([-1, 0, 1, 30])) * 1000
    records.append(records[100]._replace(source="pubsub:again", publish_time_ms=at_ms + 10))
    flags = ["--wait_for_complete_batch=true", f"--session_gap_s={gap_s}", "--window_size_s=300",
             "--use_compression=true"]
    written = _live_and_bounded(records, 500, 3600, flags, s3_endpoint, s3_client,
                                dataclasses.replace(
                                    profile_of("PrismRunner", session_processes=harnesses),
                                    sessions=LiveSessions(shards=8)))
    assert len(written["live"]) > 10
    assert sorted(written["live"]) == sorted(written["bounded"])
    assert written["live"] == written["bounded"]


def _live_graph(runner: str, flags: list[str]):
    """The components of a live run's graph on `runner`, as it goes to the runner."""
    config, _ = load_config(["--s3_bucket_name=graph",
                             "--input_subscription=projects/local-project/subscriptions/graph",
                             *flags])
    p = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    build(p, config, profile_of(runner, pubsub_readers=config.pubsub_readers,
                                session_processes=config.session_harnesses),
          codec=NO_DICTIONARY)
    return p.to_runner_api().components


def _environments(runner: str, flags: list[str]) -> dict[str, set[str]]:
    """The environments of a live run's graph on `runner`, by step: each top-level
    step, and each step inside one (reading, parsing, windowing or keying by shard,
    keeping sessions, keying, packing and writing files)."""
    found: dict[str, set[str]] = {}
    for transform in _live_graph(runner, flags).transforms.values():
        if not transform.environment_id or transform.subtransforms:
            continue
        path = transform.unique_name.split("/")
        for step in {path[0], "/".join(path[:2])}:
            found.setdefault(step, set()).add(transform.environment_id)
    return found


def _one(prism: dict[str, set[str]], steps) -> str:
    """The one environment of `steps` (every one of them in the graph)."""
    [environment] = set().union(*(prism[step] for step in steps))
    return environment


_READ = ("ReadPubSub", "ParseBatches", "ApplySettings", "StampArrival")


def _read(part: int, *then: str) -> list[str]:
    """The steps of a live run's `part`th of two reads, as far as the shuffle."""
    return [f"{step}{part}" for step in (*_READ, *then)]


@pytest.mark.parametrize("sessions", [False, True], ids=["windows", "sessions"])
def test_live_reads_each_have_an_sdk_harness_of_their_own_on_prism(sessions):
    """A live run on Prism reads its subscription twice, each read in an environment of
    its own, so in a harness process of its own, as far as the shuffle: its parsing,
    settings, stamping and the windowing (or keying by shard, and the split of the
    shards between the sessions' harnesses) fuse into its read, so no read's batches
    pass through another's harness. The first read is in the default environment,
    with the packing and writing of files. `--pubsub_readers=1`: one read."""
    flags = ["--wait_for_complete_batch=true", "--session_harnesses=2"] if sessions else []
    prism = _environments("PrismRunner", flags)
    reads = [_one(prism, _read(part, "ToGroupPerDevice", "SplitDevices")) for part in range(2)]
    held = "KeyBySessionShard" if sessions else "WindowPerDevice"
    assert [_one(prism, [f"ToGroupPerDevice{part}/{held}"]) for part in range(2)] == reads
    assert len(set(reads)) == 2
    assert _one(prism, ["PackAndWriteFiles/PackFiles", "PackAndWriteFiles/WriteFiles"]) == reads[0]
    if sessions:
        grouped = ["BatchPerDevice0/SessionPerDevice", "BatchPerDevice1/SessionPerDevice"]
        assert not set(reads) & set().union(*(prism[step] for step in grouped))
    assert "ReadPubSub1" not in _environments("PrismRunner", [*flags, "--pubsub_readers=1"])
    assert _environments("FlinkRunner", flags).keys() >= {"ReadPubSub", "ParseBatches"}


def test_live_sessions_have_an_sdk_harness_of_their_own_on_prism():
    """Prism starts an SDK harness per environment: the stage that keeps live sessions
    (and keys their files) is in an environment of its own; each read (with its
    parsing and keying by shard, `test_live_reads_each_...`) in one of its own, the
    first with the packing and writing of files, so that Python processes share
    the work. Other runners keep one environment."""
    sessions = ["--wait_for_complete_batch=true"]
    prism = _environments("PrismRunner", sessions)
    kept = _one(prism, ["BatchPerDevice/SessionPerDevice", "KeyForFiles/KeyByFile",
                        "KeyForFiles/WindowForFiles"])
    reads = {_one(prism, _read(part, "ToGroupPerDevice")) for part in range(2)}
    assert len({kept, *reads}) == 3
    for runner, flags in [("FlinkRunner", sessions), ("FlinkRunner", []),
                          ("FlinkRunner", [*sessions, "--session_harnesses=2"])]:
        assert len(set().union(*_environments(runner, flags).values())) == 1, (runner, flags)


@pytest.mark.parametrize("flags", [[], ["--session_harnesses=2"]])
def test_live_fixed_windows_are_merged_in_an_sdk_harness_of_their_own_on_prism(flags):
    """Live fixed windows on Prism: Prism groups each device's window, and the merging
    of its batches (and the keying of their files) runs in an environment of its own,
    so in a harness process of its own, beside those of the reads (the first packs
    and writes); with `--session_harnesses=2` still one (the grouping is Prism's)."""
    prism = _environments("PrismRunner", [*flags, "--pubsub_readers=1"])
    apart = _one(prism, ["BatchPerDevice/MergeBatch", "KeyForFiles/KeyByFile",
                         "KeyForFiles/WindowForFiles"])
    read = _one(prism, ["ReadPubSub", "ParseBatches", "ToGroupPerDevice/WindowPerDevice",
                        "PackAndWriteFiles/PackFiles", "PackAndWriteFiles/WriteFiles"])
    assert apart != read
    assert set().union(*prism.values()) == {apart, read}


def test_live_fixed_windows_of_two_reads_are_merged_in_the_reads_harnesses_on_prism(caplog):
    """Live fixed windows of Prism's two reads: each read's harness merges a part of
    the devices (split by `key_part` in each read's harness before Prism groups
    them) and keys their files, so the merging of a backlog's windows, which close
    together once it is read, is shared by both processes, and no third one starts
    for it. Each part's windowing for files is the same Beam windowing (no warning at
    the flatten before the files are grouped)."""
    with caplog.at_level(logging.WARNING):
        prism = _environments("PrismRunner", [])
    reads = [_one(prism, _read(part, "ToGroupPerDevice", "SplitDevices")) for part in range(2)]
    merged = [_one(prism, [f"BatchPerDevice{part}/MergeBatch", f"KeyForFiles{part}/KeyByFile",
                           f"KeyForFiles{part}/WindowForFiles"]) for part in range(2)]
    assert merged == reads and len(set(reads)) == 2
    assert set().union(*prism.values()) == set(reads)
    assert "must have the same window" not in caplog.text


def test_live_sessions_in_two_sdk_harnesses_on_prism_each_keep_their_part():
    """`--session_harnesses=2` on Prism: two steps keep the sessions, each in an
    environment of its own, and so in a harness process of its own; the keys are
    split between them (in each read's harness), and what they write is flattened
    into the keying of files, in the default environment with the first read and
    the writing."""
    prism = _environments("PrismRunner", ["--wait_for_complete_batch=true",
                                          "--session_harnesses=2", "--pubsub_readers=1"])
    default = _one(prism, ["ReadPubSub", "ParseBatches", "ToGroupPerDevice/KeyBySessionShard",
                           "SplitDevices/Part0", "KeyForFiles/KeyByFile",
                           "PackAndWriteFiles/PackFiles", "PackAndWriteFiles/WriteFiles"])
    first, second = (_one(prism, [f"BatchPerDevice{part}/SessionPerDevice"]) for part in (0, 1))
    assert len({first, second, default}) == 3
    # Prism's 4,096 shards are shared about evenly
    firsts = sum(key_part((str(shard), None), 2) == 0 for shard in range(4096))
    assert 0.45 < firsts / 4096 < 0.55


def test_live_sessions_split_between_harnesses_keep_their_coders():
    """What each harness's sessions step takes in is coded as with one harness (the key
    as a string, the batch with its own coder), not pickled: a split that loses the
    element type (a Partition's outputs) makes the key's coder one Beam cannot
    promise to be deterministic, and the batches cost a pickle each way."""
    def input_coders(flags: list[str]) -> list[str]:
        graph = _live_graph("PrismRunner", ["--wait_for_complete_batch=true", *flags])

        def spelled(coder_id: str) -> str:
            coder = graph.coders[coder_id]
            parts = ",".join(spelled(part) for part in coder.component_coder_ids)
            return f"{coder.spec.urn}({parts})"

        return [spelled(graph.pcollections[pcoll].coder_id)
                for transform in graph.transforms.values()
                if transform.unique_name.startswith("BatchPerDevice")
                and transform.unique_name.endswith("/ParDo(_LiveSessionsFn)")
                for pcoll in transform.inputs.values()]

    [one] = input_coders([])
    assert one.startswith("beam:coder:kv:v1(beam:coder:string_utf8:v1(),")
    assert input_coders(["--session_harnesses=2"]) == [one, one]


def test_a_batch_behind_a_written_session_goes_out_late_and_is_counted_on_prism(
    s3_endpoint, s3_client, prism
):
    """A device's session is written once the watermark passes its end; a batch of
    that device that arrives later but is stamped inside that session goes out as a
    further batch, counted late (one batch, two events), as Beam's late panes are."""
    def record(n: int, device: str, at_ms: int, *ids: int) -> RawRecord:
        return RawRecord(f"pubsub:{n}", json.dumps(batch(device, at_ms, *ids)).encode(),
                         publish_time_ms=at_ms)

    records = [record(0, "d1", T0, 1), record(1, "d2", T0 + 60_000, 2),
               record(2, "d1", T0 + 1_000, 3, 4),  # behind the watermark: d1's session is out
               record(3, "d2", T0 + 120_000, 5)]
    written = _live_and_bounded(records, 20, 10, ["--wait_for_complete_batch=true",
                                                  "--session_gap_s=3"], s3_endpoint, s3_client)
    live = [[e["data"]["event_id"] for e in json.loads(line)["events"]]
            for body in written["live"].values() for line in body.splitlines()]
    assert sorted(live) == [[1], [2], [3, 4], [5]]  # the late batch apart, nothing lost
    counters = written["live counters"]
    assert (counters.get("late_batches"), counters.get("late_events")) == (1, 2), counters


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "a-pane-each"])
def test_late_batches_of_a_written_window_go_out_together_on_prism(
    batched, s3_endpoint, s3_client, prism
):
    """Five devices' window is written, then a batch of each comes behind the
    watermark (as the batches a dead reader held come again, all at once), and five
    records that are not batches. Batched (`RunnerProfile.late_files_batched`, as a live
    run on Prism has it) their pane waits `--file_flush_s` after the first of them,
    here longer than the run: so they can only have gone out in the window's closing
    firing when the stream ends, in one late file, nothing lost; and the dead
    letters' pane `--dead_letter_flush_s` (10 s: they come within it) after the first
    of them, one late dead-letter file; a pane each (the DirectRunner's way), a file
    per late batch, or per bundle of them (Prism fires the late trigger once per
    bundle)."""
    def record(n: int, device: str, at_ms: int, *ids: int) -> RawRecord:
        return RawRecord(f"pubsub:{n}", json.dumps(batch(device, at_ms, *ids)).encode(),
                         publish_time_ms=at_ms)

    devices = [f"d{n}" for n in range(5)]
    records = [record(n, device, T0 + n, n + 1) for n, device in enumerate(devices)]
    records.append(record(5, "d9", T0 + 60_000, 100))  # the watermark passes the window
    records += [record(6 + n, device, T0 + 1_000 + n, 10 + n)  # late, each
                for n, device in enumerate(devices)]
    records += [RawRecord(f"pubsub:{11 + n}", b"{not a batch", publish_time_ms=T0 + 1_000 + n)
                for n in range(5)]  # late dead letters
    records.append(record(16, "d9", T0 + 120_000, 200))
    written, counters = _written_on_prism(
        "live", records, 20, 10, ["--window_size_s=10", "--dead_letter_flush_s=10"],
        s3_endpoint, s3_client, late_files_batched=batched)
    letters = {key: body for key, body in written.items() if "_dead_letters/" in key}
    files = {key: body for key, body in written.items() if key not in letters}
    lines = [json.loads(line) for body in files.values() for line in body.splitlines()]
    assert sorted(e["data"]["event_id"] for b in lines for e in b["events"]) == sorted(
        [n + 1 for n in range(5)] + [10 + n for n in range(5)] + [100, 200])
    assert (counters.get("late_batches"), counters.get("late_events")) == (5, 5), counters
    late_panes = counters.get(metrics.FILE_PANES_PREFIX + "late")
    assert sum(len(body.splitlines()) for body in letters.values()) == 5
    # Counted as written: without the metrics-unknown-short-ids-of-several-bundles patch
    # (pipeline/engine/prism), Prism loses the count of one of two bundles that report a
    # new counter at once (one file short, a pane each).
    assert len(letters) == counters["dead_letter_files_written"], counters
    if batched:
        assert late_panes == 1 and len(letters) == 1, counters
    else:  # 5 here, and 4 once with two in one bundle: as Prism's bundles fall
        assert 1 <= late_panes <= 5 and 1 <= len(letters) <= 5, counters
    assert len(files) == counters["files_written"] == 3 + late_panes, counters


class _Cell:
    """A bag state or a timer family as a DoFn sees it, kept in memory, that remembers
    whether it was read. A bag emptied reads as empty, as a runner's does."""

    def __init__(self):
        self.value, self.reads, self.timers = None, 0, {}

    def read(self):
        self.reads += 1
        return list(self.value or [])

    def add(self, item):
        self.value = [*(self.value or []), item]

    def clear(self):
        self.value = None

    def set(self, at, dynamic_timer_tag=""):
        self.timers[dynamic_timer_tag] = at.micros


class _HeldSessions:
    """A `_LiveSessionsFn` driven as a runner drives it, with each key's state and
    timers in `_Cell`s and the counters of its firings kept."""

    def __init__(self, gap_s: int):
        self.fn = _LiveSessionsFn(Batching(BatchingMode.SESSIONS, session_gap_s=gap_s),
                                  NO_DICTIONARY, None)
        self.fn.setup()
        self.container = MetricsContainer("SessionPerDevice")
        self.cells: dict[str, tuple[_Cell, _Cell]] = {}

    def late_batches(self) -> int:
        name = MetricName(metrics.NAMESPACE, metrics.LATE_BATCHES)
        return self.container.get_counter(name).get_cumulative()

    def arrive(self, key: str, device: str, at_ms: int, event_id: int) -> None:
        shuffled = ShuffledBatch.of(arrived(device, at_ms, event_id), NO_DICTIONARY)
        bag, close = self.cells.setdefault(key, (_Cell(), _Cell()))
        assert list(self.fn.process((key, (device, shuffled)), batches=bag, close=close)) == []

    def fire(self, key: str, tag: str) -> list:
        bag, close = self.cells[key]
        at = close.timers.pop(tag)
        sampler = statesampler.StateSampler("test", CounterFactory())
        statesampler.set_current_tracker(sampler)
        try:  # as a runner does, so that the counters the firing adds to are kept
            with sampler.scoped_state("test", "process", metrics_container=self.container):
                return list(self.fn.close_sessions(
                    timestamp=Timestamp(micros=at), batches=bag, close=close))
        finally:
            statesampler.set_current_tracker(None)

    def keep_nothing(self) -> bool:
        return all(bag.value is None and close.timers == {}
                   for bag, close in self.cells.values())


def _event_ids(out) -> list[int]:
    return [e["data"]["event_id"] for e in json.loads(out.value.line)["events"]]


def test_live_sessions_read_no_state_per_batch_and_keep_a_timer_at_each_sessions_end():
    """Prism keeps user state in its own process and sends no cache tokens, so every
    read is a round trip: a batch only adds itself and sets its session's timer, and
    each firing reads the bag. A session's batches move one timer (tagged by its
    device and its first arrival), which fires once, at the session's end; a later
    session has a timer of its own. A batch that comes after the session of its
    device that it belongs to was written came late: alone, it goes out counted late;
    with on-time batches, it is merged into their session. A batch of another device
    as far behind, which the runner held in its queue while the watermark passed, is
    on time. A device whose sessions are all written keeps nothing: no state, no
    timer."""
    held = _HeldSessions(10)

    def arrive(at_ms: int, event_id: int, device: str = "d1") -> None:
        held.arrive(device, device, at_ms, event_id)

    def fire(first_ms: int, device: str = "d1") -> list:
        return held.fire(device, timer_tag(device, first_ms))

    late_batches, event_ids = held.late_batches, _event_ids
    start = T0
    arrive(start + 1_000, 1)
    arrive(start + 4_000, 2)  # the same session: its timer moves to this end
    arrive(start + 12_000, 3)  # still the same session (8 s after), the same timer
    arrive(start + 40_000, 4)  # a session of its own, and a timer
    bag, close = held.cells["d1"]
    assert bag.reads == 0
    assert close.timers == {timer_tag("d1", start + 1_000): (start + 22_000) * 1000,
                            timer_tag("d1", start + 40_000): (start + 50_000) * 1000}
    [first] = fire(start + 1_000)
    assert event_ids(first) == [1, 2, 3] and bag.reads == 1
    assert first.timestamp == Timestamp(micros=(start + 22_000) * 1000 - 1)
    assert late_batches() == 0
    arrive(start + 2_000, 9, "d2")  # behind the firing, but d2 has had no session written
    [queued] = fire(start + 2_000, "d2")
    assert event_ids(queued) == [9] and late_batches() == 0
    arrive(start + 5_000, 5)  # behind where the timers fired: late, and alone
    arrive(start + 21_000, 6)  # late, and 19 s before batch 4: alone too
    [late_alone] = fire(start + 5_000)
    assert event_ids(late_alone) == [5] and late_batches() == 1
    [late_too] = fire(start + 21_000)
    assert event_ids(late_too) == [6] and late_batches() == 2
    arrive(start + 30_500, 7)  # late (in batch 6's written session), but in batch 4's open one
    arrive(start + 41_000, 8)  # on time: the session's timer moves on
    assert close.timers == {timer_tag("d1", start + 40_000): (start + 51_000) * 1000}
    [last] = fire(start + 40_000)
    assert event_ids(last) == [7, 4, 8] and late_batches() == 2  # merged, on time
    assert held.keep_nothing()  # a written device keeps nothing


def test_a_live_session_whose_batches_a_process_did_not_all_see_still_goes_out_at_its_end():
    """What the process remembers of a device's open session only saves firings: a
    batch of a session whose earlier batches it does not know (another process had
    them, or it restarted) sets a timer of its own; the earlier part's timer then
    fires before the session's end, finds it open and sets one at its end; the
    session goes out once, whole, at its end."""
    held = _HeldSessions(10)
    start = T0

    def arrive(at_ms: int, event_id: int) -> None:
        held.arrive("d1", "d1", at_ms, event_id)

    arrive(start + 1_000, 1)
    held.fn._memory._memory().opened.clear()  # noqa: SLF001 - as a new process knows nothing
    arrive(start + 6_000, 2)
    arrive(start + 3_000, 3)  # out of order, in the part it knows: that timer stays
    _, close = held.cells["d1"]
    assert close.timers == {timer_tag("d1", start + 1_000): (start + 11_000) * 1000,
                            timer_tag("d1", start + 6_000): (start + 16_000) * 1000}
    assert held.fire("d1", timer_tag("d1", start + 1_000)) == []  # the session goes on
    assert close.timers == {timer_tag("d1", start + 6_000): (start + 16_000) * 1000,
                            timer_tag("d1", start + 1_000): (start + 16_000) * 1000}
    [session] = held.fire("d1", timer_tag("d1", start + 1_000))
    assert _event_ids(session) == [1, 3, 2] and held.late_batches() == 0
    assert session.timestamp == Timestamp(micros=(start + 16_000) * 1000 - 1)
    assert held.fire("d1", timer_tag("d1", start + 6_000)) == []  # nothing left
    assert held.keep_nothing()


def test_live_sessions_keyed_by_shard_keep_each_devices_sessions_and_timers_apart():
    """Keyed by shard (as on Prism, `LiveSessions.shards`), one key holds several
    devices' batches: each device's sessions are split and merged apart, each has its
    own timer (tagged with its device) and goes out at its own end, and late batches
    are judged per device. The shard keeps nothing once all are written."""
    held = _HeldSessions(10)
    start = T0

    def fire(device: str, first_ms: int) -> list:
        return held.fire("0", timer_tag(device, first_ms))

    held.arrive("0", "d1", start + 100, 1)
    held.arrive("0", "d2", start + 900, 2)  # a timer of its own
    held.arrive("0", "d1", start + 5_000, 3)  # d1's session goes on
    bag, close = held.cells["0"]
    assert bag.reads == 0
    assert close.timers == {timer_tag("d1", start + 100): (start + 15_000) * 1000,
                            timer_tag("d2", start + 900): (start + 10_900) * 1000}
    [d2] = fire("d2", start + 900)
    assert (d2.value.device, _event_ids(d2)) == ("d2", [2])
    assert d2.timestamp == Timestamp(micros=(start + 10_900) * 1000 - 1)
    held.arrive("0", "d2", start + 3_000, 4)  # d2's session is written: late
    held.arrive("0", "d3", start + 3_200, 5)  # as far behind, but d3 has had none: on time
    [d2_late] = fire("d2", start + 3_000)
    assert (d2_late.value.device, _event_ids(d2_late), held.late_batches()) == ("d2", [4], 1)
    [d3] = fire("d3", start + 3_200)
    assert (d3.value.device, _event_ids(d3), held.late_batches()) == ("d3", [5], 1)
    [d1] = fire("d1", start + 100)
    assert (d1.value.device, _event_ids(d1)) == ("d1", [1, 3])
    assert d1.timestamp == Timestamp(micros=(start + 15_000) * 1000 - 1)
    assert held.keep_nothing() and held.late_batches() == 1


# A device's batches as gaps after its previous one: any, or about the session gap.
_GAP_MS = 10_000
_after_previous = st.one_of(st.sampled_from([_GAP_MS - 1, _GAP_MS]), st.integers(0, 2 * _GAP_MS))
_sends = st.lists(st.tuples(st.sampled_from("abcd"), _after_previous, st.integers(1, 5)),
                  min_size=1, max_size=14)


def _sent(sends, shards: int) -> list[tuple[str, str, int, int]]:
    """(key, device, arrival, event id) of each batch sent, one a device and millisecond."""
    at_ms, sent = {}, {}
    for device, after_ms, event_id in sends:
        at_ms[device] = at_ms.get(device, T0) + after_ms
        key = session_key((device, None), shards)[0]
        sent[device, at_ms[device]] = (key, device, at_ms[device], event_id)
    return list(sent.values())


def _as_a_runner(held: _HeldSessions, pending: list, data, past_batches: bool = False):
    """Drives `held` through `pending` as a runner may, choices drawn from `data`:
    a batch delivered whenever, however far behind or ahead of others (a runner's
    queues, Pub/Sub's order); the watermark advanced at or behind every batch still
    to come, or with `past_batches` past some of them (they then come late); a timer
    fired once the watermark reaches it, as Prism fires them (its time, in
    milliseconds, at or before the watermark: so while a batch at that very
    millisecond may still be on its way), each key's timers in time order, the keys
    in any order; the process's memory of open sessions lost (a batch handled by
    another process, a restart); at the end, every timer. → (what was written, how
    many batches came behind the watermark, how many sessions went out behind the
    watermark downstream: the input watermark held at the earliest pending timer, as
    a runner holds it, past the session's end)."""
    watermark_ms, written, behind_it = T0, [], 0
    downstream_ms, behind_downstream = T0, 0
    pending = list(pending)

    def fire_a_due_timer() -> bool:
        nonlocal downstream_ms, behind_downstream
        due = sorted({key for key, (_, close) in held.cells.items()
                      if any(at // 1000 <= watermark_ms for at in close.timers.values())})
        if not due:
            return False
        key = data.draw(st.sampled_from(due))
        timers = held.cells[key][1].timers
        tag = min(timers, key=timers.get)
        holds = [at // 1000 for _, close in held.cells.values() for at in close.timers.values()]
        downstream_ms = max(downstream_ms, min([watermark_ms, *holds]))
        out = held.fire(key, tag)
        behind_downstream += sum((o.timestamp.micros + 1) // 1000 < downstream_ms for o in out)
        written.extend(out)
        return True

    while pending:
        step = data.draw(st.sampled_from(["deliver", "watermark", "timer", "forget"]))
        if step == "deliver":
            key, device, at, event_id = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
            behind_it += at < watermark_ms
            held.arrive(key, device, at, event_id)
        elif step == "watermark":
            if past_batches:
                up_to = max(watermark_ms, max(at for _, _, at, _ in pending) + 2 * _GAP_MS)
            else:  # as far as it may go: the first batch still to come
                up_to = min(at for _, _, at, _ in pending)
            watermark_ms = data.draw(st.just(up_to) | st.integers(watermark_ms, up_to))
        elif step == "timer":
            fire_a_due_timer()
        else:
            held.fn._memory._memory().opened.clear()  # noqa: SLF001
    watermark_ms = 2**62
    while fire_a_due_timer():
        pass
    return written, behind_it, behind_downstream


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(_sends, st.sampled_from([0, 1, 2]), st.data())
def test_live_sessions_write_the_bounded_sessions_in_whatever_order_a_runner_goes(
    sends, shards, data
):
    """`_LiveSessionsFn` driven in any order that a runner's watermark allows
    (`_as_a_runner`) writes the sessions the bounded path writes (`Mode.in_memory`)
    at the same times, none counted late, none behind the watermark downstream (each
    session holds it with a timer until it is out), and keeps nothing once all are
    written.
    Devices under one key, two or their own (`shards`); batches about a gap apart,
    and event ids that repeat."""
    held, sent = _HeldSessions(_GAP_MS // 1000), _sent(sends, shards)
    batching = Batching(BatchingMode.SESSIONS, session_gap_s=_GAP_MS // 1000)
    expected = mode_of(batching).in_memory(
        [(device, ShuffledBatch.of(arrived(device, at, event_id), NO_DICTIONARY))
         for _, device, at, event_id in sent],
        batching, NO_DICTIONARY, Merger(NO_DICTIONARY), None)[0]
    written, _, behind_downstream = _as_a_runner(held, sent, data)
    assert sorted((out.value.device, out.value.line, out.timestamp.micros) for out in written) == (
        sorted((out.device, out.line, at_us) for out, at_us in expected))
    assert held.late_batches() == 0 and behind_downstream == 0
    assert held.keep_nothing()


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(_sends, st.sampled_from([0, 1, 2]), st.data())
def test_live_sessions_lose_and_double_nothing_whatever_comes_late(sends, shards, data):
    """With the watermark let past batches not yet delivered (late data: a reader's
    idle watermark, a runner's), every batch still goes out, once, in a batch of
    its device; none is counted late unless some batch came behind the watermark; and
    nothing is kept once all are written."""
    held = _HeldSessions(_GAP_MS // 1000)
    sent = [(key, device, at, n) for n, (key, device, at, _) in enumerate(_sent(sends, shards))]
    written, behind_it, _ = _as_a_runner(held, sent, data, past_batches=True)
    out = sorted((o.value.device, event_id) for o in written for event_id in _event_ids(o))
    assert out == sorted((device, n) for _, device, _, n in sent)
    assert held.late_batches() <= behind_it
    assert held.keep_nothing()


def test_a_devices_shard_is_the_same_in_every_process():
    """CRC-32 of the device's id, not Python's hash (salted per process)."""
    shuffled = ShuffledBatch.of(arrived("mpid:-8", T0, 1), NO_DICTIONARY)
    assert session_key(("mpid:-8", shuffled), 4096) == (
        str(zlib.crc32(b"mpid:-8") % 4096), ("mpid:-8", shuffled))
    assert session_key(("mpid:-8", shuffled), 0) == ("mpid:-8", ("mpid:-8", shuffled))


# Times near whole late horizons, where what is pruned and what is behind meet.
_NEAR_HORIZONS = st.builds(lambda horizons, ms: max(0, horizons * LATE_HORIZON_MS + ms),
                           st.integers(0, 3), st.integers(-3_000, 3_000))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("wrote"), st.sampled_from("abcdefgh"), _NEAR_HORIZONS),
    st.tuples(st.just("fired"), st.just(""), _NEAR_HORIZONS),
    st.tuples(st.just("late"), st.sampled_from("abcdefgh"), _NEAR_HORIZONS),
), max_size=60))
@example([("wrote", "a", LATE_HORIZON_MS + 500), ("wrote", "b", 0),  # merged
          ("fired", "", 2 * LATE_HORIZON_MS), ("wrote", "c", 5), ("wrote", "d", 5),  # pruned
          ("late", "a", LATE_HORIZON_MS + 200)])  # a's end, 300 ms within the horizon, kept
def test_the_written_sessions_judge_lateness_as_a_memory_of_every_end_would(steps):
    """`SessionsMemory` keeps recent ends by device and the rest as sorted arrays of
    hashes, pruned past the late horizon (here merged at every second write): whatever
    the order of writes, firings and questions, a batch is late exactly when a memory
    of every device's latest end, never pruned, says so."""
    written, ends, fired_ms = SessionsMemory(_GAP_MS), {}, 0
    written._memory().seal_at = 2  # noqa: SLF001 - merged often, to be tested
    for step, device, at_ms in steps:
        if step == "wrote":
            written.wrote(device, at_ms)
            ends[device] = max(ends.get(device, 0), at_ms)
        elif step == "fired":
            written.fired(at_ms)
            fired_ms = max(fired_ms, at_ms)
        else:
            assert written.late(device, at_ms) == (
                at_ms < ends.get(device, 0) or at_ms < fired_ms - LATE_HORIZON_MS)
    sealed, _ = written._memory().sealed  # noqa: SLF001
    assert len(sealed) <= len(ends)
