"""What crosses the shuffles: compressed bytes with their own coder, not pickles."""

from __future__ import annotations

import pickle

import apache_beam as beam
import pytest
import zstandard
from apache_beam import coders
from apache_beam.pipeline import PipelineVisitor
from apache_beam.transforms.core import GroupByKey
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.build import trained_codec
from pipeline.config import load_config
from pipeline.tools.sample_data import generate, write_ndjson
from tests.pipelines import batch_pipeline
from transforms.batching import BatchPerDevice, Merger, StampArrival, per_event
from transforms.io.inputs import sample_records
from transforms.rules import batch_json
from transforms.rules.batch_json import as_int
from transforms.rules.batch_parts import BatchParts
from transforms.rules.grouping import event_time_ms
from transforms.shuffled import NO_DICTIONARY, ShuffleCodec, ShuffledBatch, ShuffledBatchCoder
from transforms.values import ArrivedBatch, Batching, BatchingMode, ForwardedBatch

BATCH = {"mpid": -8, "events": [{"event_type": "custom_event", "data": {"event_name": "é ✓"}}]}


def trained() -> ShuffleCodec:
    samples = [batch_json.encode(batch) for batch in generate(600, 50)]
    return ShuffleCodec.trained_on(samples)


@pytest.mark.parametrize("codec", [NO_DICTIONARY, "trained"])
def test_coder_round_trip_keeps_every_field_and_the_exact_json(codec):
    codec = trained() if codec == "trained" else codec
    arrived = ArrivedBatch(BATCH, "in.ndjson:7", 1_700_000_000_123, "mpid:-8", "Café")
    shuffled = ShuffledBatch.of(arrived, codec)
    coder = coders.registry.get_coder(ShuffledBatch)
    assert isinstance(coder, ShuffledBatchCoder) and coder.is_deterministic()
    encoded = coder.encode(shuffled)
    decoded = coder.decode(encoded)
    assert type(decoded) is ShuffledBatch and decoded == shuffled
    assert (decoded.arrival_ms, decoded.source, decoded.app_name) == (
        arrived.arrival_ms, arrived.source, arrived.app_name)
    assert decoded.parts(codec).as_sent() == batch_json.encode(BATCH)
    # The compressed JSON and a few bytes: no pickled dict, no type names.
    assert len(encoded) < len(shuffled.batch_zstd) + 40


def test_a_trained_dictionary_halves_what_crosses_the_shuffle_and_travels_with_the_dofns():
    codec = trained()
    assert codec.dictionary and pickle.loads(pickle.dumps(codec)) == codec
    unseen = [batch_json.encode(batch) for batch in generate(300, 20, seed=99)]
    plain = sum(len(NO_DICTIONARY.compress(line)) for line in unseen)
    with_dictionary = sum(len(codec.compress(line)) for line in unseen)
    assert with_dictionary < 0.7 * plain
    assert all(codec.decompress(codec.compress(line)) == line for line in unseen)
    with pytest.raises(zstandard.ZstdError):  # another dictionary cannot read it
        NO_DICTIONARY.decompress(codec.compress(unseen[0]))


def test_too_little_to_train_on_means_no_dictionary():
    assert ShuffleCodec.trained_on([b'{"a":1}'] * 3) == NO_DICTIONARY
    assert ShuffleCodec.trained_on([]) == NO_DICTIONARY


def test_sample_records_reads_the_first_files_and_passes_over_unreadable_ones(tmp_path):
    (tmp_path / "a.ndjson.gz").write_bytes(b"not gzip at all")
    write_ndjson(str(tmp_path / "b.ndjson"), generate(30, 5))
    write_ndjson(str(tmp_path / "c.ndjson"), generate(30, 5))
    sampled = list(sample_records([str(tmp_path / "*")], max_records=40))
    assert len(sampled) == 40 and all(batch_json.decode(record)["events"] for record in sampled)


class _GroupInputs(PipelineVisitor):
    def __init__(self):
        self.coders = []

    def visit_transform(self, node):
        if isinstance(node.transform, GroupByKey):
            (pcoll,) = node.inputs
            self.coders.append(coders.registry.get_coder(pcoll.element_type))


@pytest.mark.parametrize("keyed_windows", [True, False])
@pytest.mark.parametrize("mode", [BatchingMode.FIXED, BatchingMode.SESSIONS])
def test_per_device_shuffle_uses_the_shuffled_batch_coder(keyed_windows, mode):
    p = batch_pipeline()
    arrived = ArrivedBatch(BATCH, "s", 1, "mpid:-8", "App")
    _ = (p | beam.Create([arrived]) | StampArrival()
         | BatchPerDevice(Batching(mode), keyed_windows=keyed_windows))
    groups = _GroupInputs()
    p.visit(groups)
    (kv_coder,) = groups.coders
    _, value_coder = kv_coder.coders()
    assert isinstance(value_coder, ShuffledBatchCoder)


def test_bounded_runs_train_their_dictionary_on_the_input(tmp_path):
    write_ndjson(str(tmp_path / "in.ndjson"), generate(300, 20))
    config, _ = load_config(["--s3_bucket_name=sampled", f"--input={tmp_path}/in.ndjson"])
    assert trained_codec(config).dictionary


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
    for batch in [BATCH, {"mpid": 1, "events": [], "z": 2}, {"mpid": 1, "z": 2}, {}]:
        arrived = ArrivedBatch(batch, "f:1", 1_700_000_000_000, "d", "App")
        lines = [f.line for f in per_event(("d", ShuffledBatch.of(arrived, NO_DICTIONARY)),
                                           NO_DICTIONARY)]
        around_each = [{key: ([event] if key == "events" else value)
                        for key, value in batch.items()} for event in batch.get("events") or ()]
        assert lines == [batch_json.encode(b) for b in around_each or [batch]]
