"""What crosses the per-device shuffle: compact bytes with their own coder, not pickles."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.pipeline import PipelineVisitor
from apache_beam.transforms.core import GroupByKey

from tests.pipelines import batch_pipeline
from transforms.batching import BatchingMode, BatchPerDevice, StampArrival
from transforms.grouping import ArrivedBatch
from transforms.shuffled import ShuffledBatch, ShuffledBatchCoder

BATCH = {"mpid": -8, "events": [{"event_type": "custom_event", "data": {"event_name": "é ✓"}}]}


def test_coder_round_trip_keeps_every_field_and_the_exact_json():
    arrived = ArrivedBatch(BATCH, "in.ndjson:7", 1_700_000_000_123, "mpid:-8", "Café")
    shuffled = ShuffledBatch.of(arrived)
    coder = coders.registry.get_coder(ShuffledBatch)
    assert isinstance(coder, ShuffledBatchCoder) and coder.is_deterministic()
    encoded = coder.encode(shuffled)
    decoded = coder.decode(encoded)
    assert type(decoded) is ShuffledBatch and decoded == shuffled
    assert decoded.arrived("mpid:-8") == arrived
    # The compressed JSON and a few bytes: no pickled dict, no type names.
    assert len(encoded) < len(shuffled.batch_zstd) + 40


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
         | BatchPerDevice(mode, keyed_windows=keyed_windows))
    groups = _GroupInputs()
    p.visit(groups)
    (kv_coder,) = groups.coders
    _, value_coder = kv_coder.coders()
    assert isinstance(value_coder, ShuffledBatchCoder)
