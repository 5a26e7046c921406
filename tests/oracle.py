"""What a run should forward, from the documented meaning of the settings, written
apart from the product's code so that a mistake in its filtering cannot cancel out in
a test that compares against it.

mParticle's Amazon S3 integration forwards every event type unless a setting that
names it is off; at the defaults the only ones off are "Include User Attribute Change
Events" and "Include User Identity Change Events" (README, Settings).
"""

from __future__ import annotations

from collections.abc import Iterable

OFF_BY_DEFAULT = frozenset({"user_attribute_change", "user_identity_change"})


def forwarded_event_ids(batches: Iterable[dict], off: frozenset[str] = OFF_BY_DEFAULT) -> list[int]:
    """The `data.event_id` of every event of these batches that a run forwards when the
    event types in `off` are filtered out (ids sent as strings of digits read as ints)."""
    return [int(event["data"]["event_id"]) for batch in batches
            for event in batch.get("events") or () if event["event_type"] not in off]
