"""ApplySettings in a TestPipeline: filters, strips and drops emptied batches."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from tests.pipelines import batch_pipeline
from tests.stages.batches import T0, arrived
from transforms.apply_settings import ApplySettings
from transforms.rules.settings import ForwardingSettings


def test_apply_settings_filters_and_drops_emptied_batches():
    kept = arrived("d1", T0, 1)
    emptied = arrived("d2", T0, 2)
    emptied.batch["events"][0]["event_type"] = "user_attribute_change"
    with batch_pipeline() as p:
        out = p | beam.Create([kept, emptied]) | ApplySettings(ForwardingSettings(unique_id="u"))
        assert_that(out["batches"] | beam.Map(lambda a: (a.device, a.batch["unique_id"])),
                    equal_to([("mp_deviceid:d1", "u")]))


