"""What crosses the shuffles: compressed bytes with their own coder, not pickles."""

from __future__ import annotations

import pickle

import apache_beam as beam
import pytest
import zstandard
from apache_beam import coders
from apache_beam.pipeline import PipelineVisitor
from apache_beam.transforms.core import GroupByKey

from pipeline.build import trained_codec
from pipeline.config import load_config
from pipeline.tools.sample_data import generate, write_ndjson
from tests.pipelines import batch_pipeline
from transforms.batching import BatchPerDevice, StampArrival
from transforms.live_sessions import _LiveSessionsFn
from transforms.machinery.shuffled import (
    NO_DICTIONARY,
    ShuffleCodec,
    ShuffledBatch,
    ShuffledBatchCoder,
    register_coder,
)
from transforms.rules import batch_json
from transforms.values import ArrivedBatch, Batching, BatchingMode

BATCH = {"mpid": -8, "events": [{"event_type": "custom_event", "data": {"event_name": "é ✓"}}]}


def trained() -> ShuffleCodec:
    samples = [batch_json.encode(batch) for batch in generate(600, 50)]
    return ShuffleCodec.trained_on(samples)


@pytest.mark.parametrize("codec", [NO_DICTIONARY, "trained"])
def test_coder_round_trip_keeps_every_field_and_the_exact_json(codec):
    codec = trained() if codec == "trained" else codec
    arrived = ArrivedBatch(BATCH, "in.ndjson:7", 1_700_000_000_123, "mpid:-8", "Café")
    shuffled = ShuffledBatch.of(arrived, codec)
    register_coder()  # as the steps that make ShuffledBatch values do (not an import)
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


class _GroupInputs(PipelineVisitor):
    """The coders of what each grouping step takes: a GroupByKey, or the stateful
    DoFn that keeps live sessions per device."""

    def __init__(self):
        self.coders = []

    def visit_transform(self, node):
        stateful = isinstance(node.transform, beam.ParDo) and isinstance(
            node.transform.fn, _LiveSessionsFn)
        if isinstance(node.transform, GroupByKey) or stateful:
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
    if not keyed_windows and mode is BatchingMode.SESSIONS:
        # live sessions: (device, batch) under the device or its shard
        _, value_coder = value_coder.coders()
    assert isinstance(value_coder, ShuffledBatchCoder)


def test_bounded_runs_train_their_dictionary_on_the_input(tmp_path):
    write_ndjson(str(tmp_path / "in.ndjson"), generate(300, 20))
    config, _ = load_config(["--s3_bucket_name=sampled", f"--input={tmp_path}/in.ndjson"])
    assert trained_codec(config).dictionary


# Batches as a sender may shape them: any fields (integers beyond 64 bits too),
# events with ids and message ids that repeat, as numbers or strings, with or
# without times; sometimes no `events` at all.


