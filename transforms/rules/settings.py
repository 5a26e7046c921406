"""The connection settings of mParticle's Amazon S3 integration, as pure rules.

`ForwardingSettings` holds the settings that change what a batch contains;
`apply_settings` turns one parsed inbound or outbound batch into the outbound
batch that is forwarded, and says how many events each setting filtered out.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

# Which setting forwards which event types. Types no setting names (breadcrumb,
# opt_out, uninstall, pre_attribution, future types) are always forwarded.
EVENT_TYPES_BY_SETTING: dict[str, frozenset[str]] = {
    "send_lifecycle_events": frozenset(
        {"session_start", "session_end", "application_state_transition", "first_run"}
    ),
    "send_screen_views": frozenset({"screen_view"}),
    "send_crash_events": frozenset({"crash_report"}),
    "send_network_performance_events": frozenset({"network_performance"}),
    "send_custom_events": frozenset({"custom_event"}),
    "send_push_registrations_and_receipts": frozenset(
        {"push_registration", "push_message", "push_reaction"}
    ),
    "send_profile_change_events": frozenset({"profile"}),
    "send_commerce_events": frozenset({"commerce_event"}),
    "include_user_attribute_change_events": frozenset({"user_attribute_change"}),
    "include_user_identity_change_events": frozenset({"user_identity_change"}),
}

_SETTING_BY_EVENT_TYPE = {
    event_type: setting
    for setting, event_types in EVENT_TYPES_BY_SETTING.items()
    for event_type in event_types
}

METADATA_FIELDS = ("application_info", "device_info", "source_info")

# Metadata Field Exclusion: the single metadata fields a user may drop, by the
# name the option takes → where the field is in a batch (parent object, field).
EXCLUDABLE_METADATA_FIELDS: dict[str, tuple[str | None, str]] = {
    "device_name": ("device_info", "device"),  # "iPad Pro (12.9-inch)", a person's own name
    "ip": (None, "ip"),
    "device_model": ("device_info", "device_model"),
    "user_agent": ("device_info", "http_header_user_agent"),
    "push_token": ("device_info", "push_token"),
    "network_carrier": ("device_info", "network_carrier"),
    "advertising_ids": ("device_info", "ios_advertising_id"),
    "build_identifier": ("device_info", "build_identifier"),
}
# advertising_ids covers every platform's advertising id, not only iOS's.
_ADVERTISING_IDS = ("ios_advertising_id", "android_advertising_id", "fire_advertising_id",
                    "roku_advertising_id", "microsoft_advertising_id")


@dataclasses.dataclass(frozen=True)
class ForwardingSettings:
    """What a forwarded batch holds. Field names are the integration's settings."""

    send_lifecycle_events: bool = True
    send_screen_views: bool = True
    send_crash_events: bool = True
    send_network_performance_events: bool = True
    send_custom_events: bool = True
    send_push_registrations_and_receipts: bool = True
    send_profile_change_events: bool = True
    send_commerce_events: bool = True
    include_user_attribute_change_events: bool = False
    include_user_identity_change_events: bool = False
    include_location_information: bool = True
    include_event_batch_location: bool = False
    include_user_identities: bool = True
    include_metadata: bool = True
    include_consent_state: bool = True
    include_mp_deviceid: bool = True
    unique_id: str | None = None
    metadata_field_exclusion: tuple[str, ...] = ()

    def filtering_setting(self, event_type: Any) -> str | None:
        """The setting that filters this event type out, or None if it is forwarded."""
        setting = _SETTING_BY_EVENT_TYPE.get(event_type)
        if setting is not None and not getattr(self, setting):
            return setting
        return None


def outbound_identities(identities: Any) -> Any:
    """`user_identities` in mParticle's outbound form: a list of identity objects.

    The inbound form is an object map {"customer_id": "123"}; the outbound form,
    [{"identity_type": "customer_id", "identity": "123"}], passes through as it is.
    Identities whose value is null are left out, as mParticle does.

    >>> outbound_identities({"customer_id": "123", "email": None})
    [{'identity_type': 'customer_id', 'identity': '123'}]
    """
    if isinstance(identities, dict):
        return [
            {"identity_type": identity_type, "identity": identity}
            for identity_type, identity in identities.items()
            if identity is not None
        ]
    return identities


def _without_location(event: dict) -> dict:
    data = event.get("data")
    if isinstance(data, dict) and "location" in data:
        data = {key: value for key, value in data.items() if key != "location"}
        return {**event, "data": data}
    return event


def _excluded_fields(names: tuple[str, ...]) -> dict[str | None, set[str]]:
    """Parent object (None: the batch) → fields to drop, for Metadata Field Exclusion."""
    excluded: dict[str | None, set[str]] = {}
    for name in names:
        parent, field = EXCLUDABLE_METADATA_FIELDS[name]
        fields = _ADVERTISING_IDS if name == "advertising_ids" else (field,)
        excluded.setdefault(parent, set()).update(fields)
    return excluded


def _without(value: Any, fields: set[str]) -> Any:
    if isinstance(value, dict) and not fields.isdisjoint(value):
        return {key: item for key, item in value.items() if key not in fields}
    return value


def apply_settings(
    batch: dict, settings: ForwardingSettings
) -> tuple[dict, Counter[str]]:
    """Filters, strips and completes one batch; returns it with filtered counts.

    The result keeps the input's key order; fields no setting touches keep their
    values. The counter maps a setting name to the number of events it removed.
    """
    filtered: Counter[str] = Counter()
    events = []
    for event in batch.get("events") or ():
        setting = settings.filtering_setting(event.get("event_type"))
        if setting is not None:
            filtered[setting] += 1
            continue
        if not settings.include_location_information:
            event = _without_location(event)
        events.append(event)

    excluded = _excluded_fields(settings.metadata_field_exclusion)
    removed = set(excluded.get(None, ()))
    if not settings.include_user_identities:
        removed.add("user_identities")
    if not settings.include_metadata:
        removed.update(METADATA_FIELDS)
    if not settings.include_consent_state:
        removed.add("consent_state")
    if not settings.include_mp_deviceid:
        removed.add("mp_deviceid")

    forwarded: dict[str, Any] = {}
    for key, value in batch.items():
        if key in removed:
            continue
        if key == "events":
            value = events
        elif key == "user_identities":
            value = outbound_identities(value)
        elif key == "context" and not settings.include_event_batch_location:
            value = _without(value, {"location"})
        elif key in excluded:
            value = _without(value, excluded[key])
        forwarded[key] = value
    if settings.unique_id is not None:
        forwarded["unique_id"] = settings.unique_id
    return forwarded, filtered
