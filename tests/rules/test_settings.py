"""The integration's settings (`transforms.rules.settings`): each event type, each
stripping setting, user identities, metadata exclusions, unique id."""

from __future__ import annotations

import pytest

from tests.conftest import FORWARDED_EXAMPLE, SAMPLE_BATCH
from transforms.rules import batch_json
from transforms.rules.settings import EVENT_TYPES_BY_SETTING, ForwardingSettings, apply_settings

BIG = 9223372036854775807  # int64 max: a double would round it


def _batch_of(*event_types: str) -> dict:
    events = [{"event_type": t, "data": {"event_id": i}} for i, t in enumerate(event_types)]
    return {"events": events}


# The integration page's table (README, Options), written out here rather than taken
# from transforms.rules.settings, so that a mistake in the implementation's table shows.
INTEGRATION_EVENT_TYPES = {
    "send_lifecycle_events": {"session_start", "session_end", "application_state_transition",
                              "first_run"},
    "send_screen_views": {"screen_view"},
    "send_crash_events": {"crash_report"},
    "send_network_performance_events": {"network_performance"},
    "send_custom_events": {"custom_event"},
    "send_push_registrations_and_receipts": {"push_registration", "push_message",
                                             "push_reaction"},
    "send_profile_change_events": {"profile"},
    "send_commerce_events": {"commerce_event"},
    "include_user_attribute_change_events": {"user_attribute_change"},
    "include_user_identity_change_events": {"user_identity_change"},
}
ALL_TYPES = sorted({t for types in INTEGRATION_EVENT_TYPES.values() for t in types})
UNNAMED_TYPES = ["breadcrumb", "opt_out", "uninstall", "pre_attribution", "some_future_type"]


def test_the_implementations_table_is_the_integrations():
    assert {k: set(v) for k, v in EVENT_TYPES_BY_SETTING.items()} == INTEGRATION_EVENT_TYPES


@pytest.mark.parametrize("setting, event_types", sorted(INTEGRATION_EVENT_TYPES.items()))
def test_each_event_type_setting_filters_exactly_its_types(setting, event_types):
    default = getattr(ForwardingSettings(), setting)
    batch = _batch_of(*ALL_TYPES, *UNNAMED_TYPES)
    for enabled in (True, False):
        settings = ForwardingSettings(**{setting: enabled})
        forwarded, filtered = apply_settings(batch, settings)
        kept = {e["event_type"] for e in forwarded["events"]}
        assert kept >= set(UNNAMED_TYPES)  # types no setting names always go out
        assert (kept & event_types == event_types) is enabled
        removed_by_this = filtered.get(setting, 0)
        assert removed_by_this == (0 if enabled else len(event_types))
    # Defaults as the integration page states them.
    expected_default = setting not in (
        "include_user_attribute_change_events", "include_user_identity_change_events"
    )
    assert default is expected_default


def test_defaults_filter_attribute_and_identity_changes_of_the_real_sample():
    batch = batch_json.decode(SAMPLE_BATCH.read_text())
    forwarded, filtered = apply_settings(batch, ForwardingSettings())
    assert dict(filtered) == {
        "include_user_attribute_change_events": 1,
        "include_user_identity_change_events": 1,
    }
    assert len(forwarded["events"]) == 12


@pytest.mark.parametrize(
    "identities, expected",
    [
        ({"customer_id": "123456"}, [{"identity_type": "customer_id", "identity": "123456"}]),
        (
            {"customer_id": "1", "email": None, "other_id_2": "x"},
            [
                {"identity_type": "customer_id", "identity": "1"},
                {"identity_type": "other_id_2", "identity": "x"},
            ],
        ),
        (  # the outbound form passes through as it came
            [{"identity_type": "email", "identity": "a@b.c", "timestamp_unixtime_ms": "1"}],
            [{"identity_type": "email", "identity": "a@b.c", "timestamp_unixtime_ms": "1"}],
        ),
        ({}, []),
        (None, None),
    ],
)
def test_user_identities_go_out_in_outbound_form(identities, expected):
    batch = {"events": [], "user_identities": identities}
    forwarded, _ = apply_settings(batch, ForwardingSettings())
    assert forwarded["user_identities"] == expected


BATCH_WITH_EVERYTHING = {
    "events": [
        {"event_type": "custom_event", "data": {"event_id": 1, "location": {"latitude": 1}}},
        {"event_type": "screen_view", "data": {"event_id": 2}},
    ],
    "device_info": {"platform": "iOS", "device": "Jane's iPad", "ios_advertising_id": "a",
                    "android_advertising_id": "b"},
    "ip": "100.38.5.94",
    "application_info": {"application_name": "A"},
    "source_info": {"channel": "native"},
    "user_identities": {"customer_id": "c"},
    "context": {"location": {"latitude": 2}, "data_plan": {"plan_id": "p"}},
    "consent_state": {"gdpr": {}},
    "mp_deviceid": "d",
    "mpid": BIG,
}


@pytest.mark.parametrize(
    "settings, absent, present",
    [
        (ForwardingSettings(), [], ["device_info", "user_identities", "consent_state"]),
        (ForwardingSettings(include_user_identities=False), ["user_identities"], ["device_info"]),
        (
            ForwardingSettings(include_metadata=False),
            ["device_info", "application_info", "source_info"],
            ["user_identities", "context"],
        ),
        (ForwardingSettings(include_consent_state=False), ["consent_state"], ["mp_deviceid"]),
        (ForwardingSettings(include_mp_deviceid=False), ["mp_deviceid"], ["mpid"]),
    ],
)
def test_stripping_settings(settings, absent, present):
    forwarded, _ = apply_settings(BATCH_WITH_EVERYTHING, settings)
    for key in absent:
        assert key not in forwarded
    for key in present:
        assert key in forwarded
    # Everything kept stays in input order with its values.
    kept = [k for k in BATCH_WITH_EVERYTHING if k in forwarded]
    assert list(forwarded)[: len(kept)] == kept
    assert forwarded["mpid"] == BIG


@pytest.mark.parametrize("event_location, batch_location", [
    (True, False), (False, False), (True, True), (False, True),
])
def test_event_location_and_batch_location_are_separate_settings(event_location, batch_location):
    forwarded, _ = apply_settings(BATCH_WITH_EVERYTHING, ForwardingSettings(
        include_location_information=event_location,
        include_event_batch_location=batch_location,
    ))
    assert ("location" in forwarded["events"][0]["data"]) == event_location
    assert all("location" not in e["data"] for e in forwarded["events"][1:])
    assert ("location" in forwarded["context"]) == batch_location
    assert forwarded["context"]["data_plan"] == {"plan_id": "p"}
    assert BATCH_WITH_EVERYTHING["events"][0]["data"]["location"] == {"latitude": 1}  # not mutated
    assert "location" in BATCH_WITH_EVERYTHING["context"]


@pytest.mark.parametrize("names, gone, kept", [
    (("device_name",), [("device_info", "device")], [("device_info", "platform"), (None, "ip")]),
    (("ip",), [(None, "ip")], [("device_info", "device")]),
    (("device_name", "ip", "advertising_ids"),
     [("device_info", "device"), (None, "ip"), ("device_info", "ios_advertising_id"),
      ("device_info", "android_advertising_id")],
     [("device_info", "platform"), (None, "mpid")]),
    ((), [], [("device_info", "device"), (None, "ip")]),
])
def test_metadata_field_exclusion_drops_single_fields(names, gone, kept):
    forwarded, _ = apply_settings(
        BATCH_WITH_EVERYTHING, ForwardingSettings(metadata_field_exclusion=names)
    )

    def holds(parent, field):
        return field in (forwarded if parent is None else forwarded[parent])

    assert not any(holds(*path) for path in gone)
    assert all(holds(*path) for path in kept)
    assert "device" in BATCH_WITH_EVERYTHING["device_info"]  # the input is not changed


def test_unique_id_is_added_last_at_top_level():
    forwarded, _ = apply_settings(BATCH_WITH_EVERYTHING, ForwardingSettings(unique_id="acme-1"))
    assert list(forwarded)[-1] == "unique_id" and forwarded["unique_id"] == "acme-1"
    plain, _ = apply_settings(BATCH_WITH_EVERYTHING, ForwardingSettings())
    assert "unique_id" not in plain


def test_forwarded_example_passes_through_unchanged():
    for line in FORWARDED_EXAMPLE.read_text().splitlines():
        forwarded, filtered = apply_settings(batch_json.decode(line), ForwardingSettings())
        assert batch_json.encode(forwarded) == line.encode() and not filtered


def test_fields_of_an_unexpected_shape_pass_through_the_settings_that_strip_inside_them():
    """A setting that strips a field inside an object leaves a value of another shape
    (or an event without data) as it came."""
    batch = {"events": [{"event_type": "custom_event"},
                        {"event_type": "custom_event", "data": {"location": 1, "n": 2}}],
             "context": ["location"], "device_info": "ip"}
    settings = ForwardingSettings(include_location_information=False,
                                  metadata_field_exclusion=("device_name",))
    forwarded, _ = apply_settings(batch, settings)
    assert forwarded == {"events": [{"event_type": "custom_event"},
                                    {"event_type": "custom_event", "data": {"n": 2}}],
                         "context": ["location"], "device_info": "ip"}
