"""Small batches for the stage tests: a device's batch at an arrival time with given
event ids, as raw input or as it arrived."""

from __future__ import annotations

import json

from transforms.values import ArrivedBatch, RawRecord

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


def arrived(device: str, arrival_ms: int, *event_ids: int) -> ArrivedBatch:
    return ArrivedBatch(batch(device, arrival_ms, *event_ids), f"src-{device}-{arrival_ms}",
                        arrival_ms, f"mp_deviceid:{device}", "App")


def raw(source: str, value) -> RawRecord:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    return RawRecord(source, data)
