"""Forwarded batches as Parquet: one row per event, a fixed schema, nothing lost.

`--output_format=parquet` writes each file's batches (the same lines the NDJSON
file would hold, in the same order) as rows of `SCHEMA`:

- one row per event, with its batch's context beside it (`event_index` says which
  event of the batch; a batch forwarded without events has one row whose event
  columns are all null);
- the fields mParticle's JSON schema gives every batch and every event
  (`../shared/fixtures/mparticle-docs/eventsapi.schema.json`: ids, times, device
  and application fields, an event's type, name, ids and times) as typed columns
  (`BATCH_FIELDS`, `EVENT_FIELDS`);
- the free-form parts (user attributes and identities, custom attributes and
  flags) as JSON text columns (`BATCH_JSON`, `EVENT_JSON`), and everything else of
  the batch and of the event, whatever the sender put there, as JSON text in
  `batch_other` and `event_other`.

A field goes to its typed column only when its value has exactly that type (an
int64 column takes a JSON integer within 64 bits, not a string of digits, a float
or `true`); otherwise, like an integer beyond 64 bits, it stays in the `_other`
text, written by `batch_json.encode` with every digit. So `batches_of` rebuilds
every batch, and each of its events, exactly as the NDJSON output holds them (a
property test checks it), and every file of every run has the same columns.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.rules import batch_json

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Rows per row group: pyarrow's default, so a file of the default bounds (64 MiB of
# NDJSON) is one or a few groups of tens of MiB, the size Athena and Trino split on.
ROW_GROUP_ROWS = 1_048_576
# --use_compression=true → zstd (smaller, as fast to read); false → snappy (Parquet's
# usual default, cheapest to write).
COMPRESSION = {True: "zstd", False: "snappy"}


def _is_int64(value: Any) -> bool:
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def _is_str(value: Any) -> bool:
    return type(value) is str


def _is_bool(value: Any) -> bool:
    return type(value) is bool


# kind → (Arrow type, whether a JSON value has exactly that type)
_KINDS: dict[str, tuple[pa.DataType, Callable[[Any], bool]]] = {
    "int64": (pa.int64(), _is_int64),
    "string": (pa.string(), _is_str),
    "bool": (pa.bool_(), _is_bool),
}

# (column, path in the batch, kind), in mParticle's order.
BATCH_FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("batch_id", ("batch_id",), "int64"),
    ("source_request_id", ("source_request_id",), "string"),
    ("mpid", ("mpid",), "int64"),
    ("mp_deviceid", ("mp_deviceid",), "string"),
    ("timestamp_unixtime_ms", ("timestamp_unixtime_ms",), "int64"),
    ("environment", ("environment",), "string"),
    ("api_key", ("api_key",), "string"),
    ("ip", ("ip",), "string"),
    ("sdk_version", ("sdk_version",), "string"),
    ("schema_version", ("schema_version",), "int64"),
    ("unique_id", ("unique_id",), "string"),
    ("application_name", ("application_info", "application_name"), "string"),
    ("application_version", ("application_info", "application_version"), "string"),
    ("package", ("application_info", "package"), "string"),
    ("os", ("application_info", "os"), "string"),
    ("platform", ("device_info", "platform"), "string"),
    ("os_version", ("device_info", "os_version"), "string"),
    ("device_model", ("device_info", "device_model"), "string"),
    ("device_manufacturer", ("device_info", "device_manufacturer"), "string"),
    ("locale_country", ("device_info", "locale_country"), "string"),
    ("is_historical", ("source_info", "is_historical"), "bool"),
)
# (column, path in the batch): free-form, as JSON text.
BATCH_JSON: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("user_identities", ("user_identities",)),
    ("user_attributes", ("user_attributes",)),
)
EVENT_FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("event_type", ("event_type",), "string"),
    ("event_id", ("data", "event_id"), "int64"),
    ("source_message_id", ("data", "source_message_id"), "string"),
    ("session_id", ("data", "session_id"), "int64"),
    ("session_uuid", ("data", "session_uuid"), "string"),
    ("session_start_unixtime_ms", ("data", "session_start_unixtime_ms"), "int64"),
    ("event_timestamp_unixtime_ms", ("data", "timestamp_unixtime_ms"), "int64"),
    ("event_start_unixtime_ms", ("data", "event_start_unixtime_ms"), "int64"),
    ("event_name", ("data", "event_name"), "string"),
    ("custom_event_type", ("data", "custom_event_type"), "string"),
    ("screen_name", ("data", "screen_name"), "string"),
)
EVENT_JSON: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("custom_attributes", ("data", "custom_attributes")),
    ("custom_flags", ("data", "custom_flags")),
)
# The rest of the batch (without its events) and of the event, as JSON objects.
BATCH_OTHER, EVENT_OTHER, EVENT_INDEX = "batch_other", "event_other", "event_index"

SCHEMA = pa.schema(
    [pa.field(name, _KINDS[kind][0]) for name, _, kind in BATCH_FIELDS]
    + [pa.field(name, pa.string()) for name, _ in BATCH_JSON]
    + [pa.field(BATCH_OTHER, pa.string(), nullable=False), pa.field(EVENT_INDEX, pa.int32())]
    + [pa.field(name, _KINDS[kind][0]) for name, _, kind in EVENT_FIELDS]
    + [pa.field(name, pa.string()) for name, _ in EVENT_JSON]
    + [pa.field(EVENT_OTHER, pa.string())]
)


# Min and max per row group for the typed columns, which readers skip groups by; none
# for the JSON text, whose bounds would only swell every file's footer.
_WITH_STATISTICS = [name for name, _, _ in BATCH_FIELDS + EVENT_FIELDS] + [EVENT_INDEX]


def hive_columns() -> list[tuple[str, str]]:
    """(column, Hive type) of SCHEMA, for the Athena DDL."""
    hive = {pa.int64(): "bigint", pa.int32(): "int", pa.string(): "string",
            pa.bool_(): "boolean"}
    return [(field.name, hive[field.type]) for field in SCHEMA]


def _take(value: dict, path: tuple[str, ...], accepts: Callable[[Any], bool]) -> tuple[bool, Any]:
    """(found, value) at `path`, removed from its object (which the caller owns) if
    `accepts` it; else (False, None), `value` left as it is."""
    *parents, leaf = path
    holder = value
    for name in parents:
        holder = holder.get(name)
        if not isinstance(holder, dict):
            return False, None
    if leaf not in holder or not accepts(holder[leaf]):
        return False, None
    return True, holder.pop(leaf)


def _owned(value: dict, paths: Iterable[tuple[str, ...]]) -> dict:
    """A copy of `value` with every object on `paths` copied too, so taking from it
    leaves the caller's dict alone."""
    copy = dict(value)
    for parent in {path[0] for path in paths if len(path) > 1}:
        if isinstance(copy.get(parent), dict):
            copy[parent] = dict(copy[parent])
    return copy


def _any(_: Any) -> bool:
    return True


def _split(value: dict, fields, json_fields, row: dict) -> dict:
    """Moves `value`'s typed fields (those of their column's type) and JSON fields into
    `row`; the rest of it."""
    rest = _owned(value, [path for _, path, _ in fields] + [path for _, path in json_fields])
    for name, path, kind in fields:
        row[name] = _take(rest, path, _KINDS[kind][1])[1]
    for name, path in json_fields:
        found, item = _take(rest, path, _any)
        row[name] = batch_json.encode(item).decode("utf-8") if found else None
    return rest


# The event columns of a row without an event (a batch without events, or an event
# that is not an object, whose JSON is then in EVENT_OTHER).
_NO_EVENT_FIELDS = dict.fromkeys(
    [name for name, _, _ in EVENT_FIELDS] + [name for name, _ in EVENT_JSON])


def rows_of(batch: dict) -> Iterator[dict]:
    """A forwarded batch (parsed) → its rows, one per event (or one with no event)."""
    context: dict[str, Any] = {}
    without_events = {key: value for key, value in batch.items() if key != "events"}
    rest = _split(without_events, BATCH_FIELDS, BATCH_JSON, context)
    events = batch.get("events")
    if not isinstance(events, list) or not events:
        if "events" in batch:  # [] or a value the settings let through: kept
            rest["events"] = events
        context[BATCH_OTHER] = batch_json.encode(rest).decode("utf-8")
        yield dict(context, **_NO_EVENT_FIELDS, **{EVENT_INDEX: None, EVENT_OTHER: None})
        return
    context[BATCH_OTHER] = batch_json.encode(rest).decode("utf-8")
    for index, event in enumerate(events):
        row = dict(context)
        row[EVENT_INDEX] = index
        if isinstance(event, dict):
            event_rest = _split(event, EVENT_FIELDS, EVENT_JSON, row)
        else:  # forwarded as it came
            row.update(_NO_EVENT_FIELDS)
            event_rest = event
        row[EVENT_OTHER] = batch_json.encode(event_rest).decode("utf-8")
        yield row


def table_of(lines: Iterable[bytes]) -> pa.Table:
    """A file's NDJSON lines → its rows, in SCHEMA."""
    columns: dict[str, list] = {field.name: [] for field in SCHEMA}
    for line in lines:
        for row in rows_of(batch_json.decode(line)):
            for name, column in columns.items():
                column.append(row[name])
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def file_bytes(lines: list[bytes], compress: bool) -> bytes:
    """A Parquet file of `lines`' rows; the same lines give the same bytes."""
    sink = io.BytesIO()
    pq.write_table(table_of(lines), sink, compression=COMPRESSION[compress],
                   row_group_size=ROW_GROUP_ROWS, write_statistics=_WITH_STATISTICS)
    return sink.getvalue()


def _batch_of(row: dict) -> dict:
    """A row's batch, without its events, as `rows_of` took it apart."""
    batch = batch_json.decode(row[BATCH_OTHER])
    _restore(batch, row, BATCH_FIELDS, BATCH_JSON)
    return batch


def _event_of(row: dict) -> Any:
    """A row's event (any JSON value) as `rows_of` took it apart."""
    event = batch_json.decode(row[EVENT_OTHER])
    if isinstance(event, dict):
        _restore(event, row, EVENT_FIELDS, EVENT_JSON)
    return event


def _restore(value: dict, row: dict, fields, json_fields) -> None:
    for name, path, _ in fields:
        if row[name] is not None:
            _put(value, path, row[name])
    for name, path in json_fields:
        if row[name] is not None:
            _put(value, path, batch_json.decode(row[name]))


def _put(value: dict, path: tuple[str, ...], item: Any) -> None:
    holder = value
    for name in path[:-1]:
        holder = holder.setdefault(name, {})
    holder[path[-1]] = item


def batches_of(table: pa.Table) -> list[dict]:
    """A Parquet file's rows → its batches, as the NDJSON file holds them."""
    batches: list[dict] = []
    for row in table.to_pylist():
        if row[EVENT_INDEX] is None:
            batches.append(_batch_of(row))
            continue
        if row[EVENT_INDEX] == 0:  # the context is the same on each of its events' rows
            batches.append(_batch_of(row))
            batches[-1]["events"] = []
        batches[-1]["events"].append(_event_of(row))
    return batches
