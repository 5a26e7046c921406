"""ApplySettings in a TestPipeline: filters, strips and drops emptied batches."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from tests.pipelines import batch_pipeline
from transforms.apply_settings import ApplySettings
from transforms.rules.settings import ForwardingSettings
from transforms.values import ArrivedBatch

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


