"""Realistic, deterministic mParticle batches for demos, tests and benchmarks.

    python -m pipeline.tools.sample_data --batches 2000 --devices 50 --out sample.ndjson

Batches are modelled on mParticle's published iOS SDK batch: several apps,
devices with sessions separated by idle gaps, 1 to 8 events a batch of mixed
types in realistic proportions, int64 ids as numbers in the inbound form and as
strings in the outbound form (identities as an array), a few with location.
The same arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import uuid
from typing import Iterator

# Event types in rough proportion to what mobile apps send.
EVENT_MIX = (
    ("custom_event", 40), ("screen_view", 25), ("commerce_event", 5),
    ("session_start", 5), ("session_end", 5), ("application_state_transition", 6),
    ("push_registration", 1), ("push_message", 2), ("crash_report", 1),
    ("network_performance", 3), ("breadcrumb", 3), ("user_attribute_change", 2),
    ("user_identity_change", 1), ("profile", 1),
)
APPS = ("mPTravel", "SDK Canary", "Shop Android")
START_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _int64(rng: random.Random) -> int:
    return rng.getrandbits(64) - 2**63


def _event(rng: random.Random, event_type: str, at_ms: int, session: tuple) -> dict:
    session_id, session_uuid, session_start = session
    data = {
        "timestamp_unixtime_ms": at_ms,
        "event_id": _int64(rng),
        "source_message_id": _uuid(rng),
        "session_id": session_id,
        "session_uuid": session_uuid,
        "session_start_unixtime_ms": session_start,
    }
    if event_type == "custom_event":
        data.update(event_name=rng.choice(("Search", "AddToFavorites", "Share")),
                    custom_event_type="navigation",
                    custom_attributes={"destination": rng.choice(("Paris", "Lima", "Oslo"))})
    elif event_type == "screen_view":
        data["screen_name"] = rng.choice(("Home", "Details", "Checkout"))
    elif event_type == "commerce_event":
        data["product_action"] = {"action": "purchase", "total_amount": rng.randint(5, 500),
                                  "products": [{"id": f"sku-{rng.randint(1, 99)}", "price": 9.99}]}
    if rng.random() < 0.1:
        data["location"] = {"latitude": 40.7 + rng.random(), "longitude": -74.0, "accuracy": 10}
    return {"data": data, "event_type": event_type}


def generate(batches: int, devices: int, seed: int = 7,
             events_per_batch: tuple[int, int] = (1, 8),
             quiet_share: float = 0.5, start_spread_ms: int = 3_600_000) -> Iterator[dict]:
    """`batches` batches spread over `devices` devices: each with `events_per_batch`
    (fewest, most) events; before each, the device was busy (5 s to 2 min since its
    last batch) or, `quiet_share` of the time, quiet (30 min to 2 h). Each device's
    first batch comes within `start_spread_ms` of the start."""
    rng = random.Random(seed)
    types = [t for t, weight in EVENT_MIX for _ in range(weight)]
    state = []
    for index in range(devices):
        state.append({
            "mp_deviceid": _uuid(rng), "mpid": _int64(rng), "app": APPS[index % len(APPS)],
            "customer": f"customer-{index}", "clock": START_MS + rng.randint(0, start_spread_ms),
            "session": None, "outbound": index % 4 == 3,
        })
    for _ in range(batches):
        device = rng.choice(state)
        busy_ms, quiet_ms = rng.randint(5_000, 120_000), rng.randint(1_800_000, 7_200_000)
        if quiet_share == 0.5:  # the same draws as ever, so the same data for a seed
            gap_ms = rng.choice((busy_ms, quiet_ms))
        else:
            gap_ms = quiet_ms if rng.random() < quiet_share else busy_ms
        device["clock"] += gap_ms
        if device["session"] is None or gap_ms > 1_800_000:
            device["session"] = (_int64(rng), _uuid(rng), device["clock"])
        events = []
        at = device["clock"]
        for _ in range(rng.randint(*events_per_batch)):
            at += rng.randint(50, 20_000)
            events.append(_event(rng, rng.choice(types), at, device["session"]))
        yield _batch(rng, device, events, at + rng.randint(100, 5_000))


def _batch(rng: random.Random, device: dict, events: list, received_ms: int) -> dict:
    batch = {
        "events": events,
        "device_info": {"platform": "iOS", "os_version": "17.1", "device_model": "iPhone15,2",
                        "ios_idfv": device["mp_deviceid"].upper()},
        "application_info": {"application_name": device["app"], "application_version": "4.2.0"},
        "user_attributes": {"tier": rng.choice(("gold", "silver"))},
        "user_identities": {"customer_id": device["customer"], "email": None},
        "environment": "production",
        "source_info": {"channel": "native", "is_historical": False},
        "mp_deviceid": device["mp_deviceid"],
        "timestamp_unixtime_ms": received_ms,
        "batch_id": _int64(rng),
        "mpid": device["mpid"],
    }
    if device["outbound"]:
        # What mParticle forwards: identities as an array, int64 values as strings.
        batch["user_identities"] = [{"identity_type": "customer_id",
                                     "identity": device["customer"]}]
        for key in ("timestamp_unixtime_ms", "batch_id", "mpid"):
            batch[key] = str(batch[key])
        for event in events:
            for key in ("timestamp_unixtime_ms", "event_id"):
                event["data"][key] = str(event["data"][key])
    return batch


def write_ndjson(path: str, batches: Iterator[dict]) -> int:
    opener = gzip.open if path.endswith(".gz") else open
    count = 0
    with opener(path, "wt", encoding="utf-8") as out:
        for batch in batches:
            out.write(json.dumps(batch, separators=(",", ":")) + "\n")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    count = write_ndjson(args.out, generate(args.batches, args.devices, args.seed))
    print(f"wrote {count} batches to {args.out}")


if __name__ == "__main__":
    main()
