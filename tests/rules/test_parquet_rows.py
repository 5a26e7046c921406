"""Parquet rows of forwarded batches: a fixed schema, and every batch back exactly."""

from __future__ import annotations

import copy
import io
import json

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SAMPLE_BATCH
from transforms.rules import batch_json, parquet_rows

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
            allow_infinity=False) | _TEXT)
_JSON = st.recursive(_SCALARS, lambda children: st.lists(children, max_size=3)
                     | st.dictionaries(_TEXT, children, max_size=3), max_leaves=8)
# What a typed column may meet at its path: its own type, near and beyond int64's
# range, and every other JSON kind.
_FIELD = (st.integers(min_value=-(2**64), max_value=2**64) | st.integers() | _JSON
          | st.sampled_from([2**63 - 1, -(2**63), 2**63, -(2**63) - 1, "123", 1.0, True]))


def _with_fields(fields, json_fields) -> st.SearchStrategy[dict]:
    """Objects holding any of the paths (with any value), and other keys."""
    paths = [path for _, path, _ in fields] + [path for _, path in json_fields]

    @st.composite
    def build(draw):
        value = draw(st.dictionaries(_TEXT, _JSON, max_size=3))
        for path in draw(st.lists(st.sampled_from(paths), max_size=len(paths))):
            holder = value
            for name in path[:-1]:
                if not isinstance(holder.get(name), dict):
                    holder[name] = draw(st.dictionaries(_TEXT, _JSON, max_size=2))
                holder = holder[name]
            holder[path[-1]] = draw(_FIELD)
        return value

    return build()


_EVENTS = st.lists(_with_fields(parquet_rows.EVENT_FIELDS, parquet_rows.EVENT_JSON)
                   | _JSON, max_size=4)


@st.composite
def _batches(draw) -> dict:
    batch = draw(_with_fields(parquet_rows.BATCH_FIELDS, parquet_rows.BATCH_JSON))
    batch.pop("events", None)
    kind = draw(st.sampled_from(["events", "none", "empty", "odd"]))
    if kind == "events":
        batch["events"] = draw(_EVENTS)
    elif kind == "empty":
        batch["events"] = []
    elif kind == "odd":
        batch["events"] = draw(_SCALARS | st.dictionaries(_TEXT, _JSON, max_size=2))
    return batch


def _round_trip(lines: list[bytes], compress: bool = True) -> list[dict]:
    body = parquet_rows.file_bytes(lines, compress)
    table = pq.read_table(io.BytesIO(body))
    assert table.schema == parquet_rows.SCHEMA
    return parquet_rows.batches_of(table)


@settings(max_examples=300, deadline=None)
@given(st.lists(_batches(), min_size=1, max_size=4), st.booleans())
def test_every_batch_comes_back_from_its_rows_exactly(batches, compress):
    """Whatever a field holds (of its column's type or not, integers beyond 64 bits,
    free-form values, no events, events that are not objects), the file's rows give
    back each batch as the NDJSON line holds it."""
    lines = [batch_json.encode(batch) for batch in batches]
    assert _round_trip(lines, compress) == [batch_json.decode(line) for line in lines]


def test_typed_columns_take_only_values_of_their_type_and_the_rest_keeps_the_others():
    batch = {"mpid": 2**64, "batch_id": 7, "mp_deviceid": 12, "events": [
        {"event_type": "custom_event", "data": {"event_id": "42", "session_id": -(2**63),
                                                "custom_attributes": {"n": 1}}}]}
    line = batch_json.encode(batch)
    (row,) = parquet_rows.table_of([line]).to_pylist()
    assert row["mpid"] is None and row["batch_id"] == 7 and row["mp_deviceid"] is None
    assert json.loads(row["batch_other"]) == {"mpid": 2**64, "mp_deviceid": 12}
    assert b'"mpid":18446744073709551616' in row["batch_other"].encode()  # every digit
    assert row["event_id"] is None and row["session_id"] == -(2**63)
    assert json.loads(row["custom_attributes"]) == {"n": 1}
    assert json.loads(row["event_other"]) == {"data": {"event_id": "42"}}
    assert _round_trip([line]) == [batch_json.decode(line)]


def test_mparticles_sample_batch_fills_its_columns_and_comes_back():
    line = batch_json.encode(batch_json.decode(SAMPLE_BATCH.read_bytes()))
    table = parquet_rows.table_of([line])
    sample = json.loads(SAMPLE_BATCH.read_text())
    assert table.num_rows == len(sample["events"])
    rows = table.to_pylist()
    assert [r["event_type"] for r in rows] == [e["event_type"] for e in sample["events"]]
    assert all(r["mpid"] == sample["mpid"] for r in rows)
    assert [r["event_id"] for r in rows] == [e["data"].get("event_id")
                                             for e in sample["events"]]
    assert _round_trip([line]) == [batch_json.decode(line)]


def test_every_file_has_the_same_columns_whatever_its_batches_hold():
    bare = parquet_rows.file_bytes([b'{"events":[{"event_type":"x"}]}'], False)
    assert pq.read_schema(io.BytesIO(bare)) == parquet_rows.SCHEMA
    same = parquet_rows.file_bytes([b'{"events":[{"event_type":"x"}]}'], False)
    assert bare == same  # the same lines, the same bytes (and so the same file name)


def test_the_edges_of_the_typed_columns_are_typed_and_the_batch_is_left_untouched():
    batch = {"mpid": 2**63 - 1, "batch_id": -(2**63), "source_info": {"is_historical": True},
             "application_info": {"application_name": "App", "os": 5},
             "events": [{"event_type": "x", "data": {"event_id": 2**63 - 1}}]}
    kept = copy.deepcopy(batch)
    (row,) = parquet_rows.rows_of(batch)
    assert batch == kept  # the rows are taken from copies
    assert (row["mpid"], row["batch_id"], row["is_historical"]) == (2**63 - 1, -(2**63), True)
    assert (row["application_name"], row["os"], row["event_id"]) == ("App", None, 2**63 - 1)
    assert json.loads(row["batch_other"]) == {"source_info": {}, "application_info": {"os": 5}}


def test_hive_types_of_the_columns():
    columns = dict(parquet_rows.hive_columns())
    assert [columns[name] for name in ("mpid", "event_index", "ip", "is_historical")] == [
        "bigint", "int", "string", "boolean"]
    assert list(columns) == parquet_rows.SCHEMA.names


@pytest.mark.parametrize("compress, codec", [(True, "ZSTD"), (False, "SNAPPY")])
def test_files_are_compressed_and_carry_bounds_of_the_typed_columns_only(compress, codec):
    lines = [batch_json.encode({"mpid": n, "events": [{"event_type": "x"}]}) for n in (3, 9)]
    metadata = pq.ParquetFile(io.BytesIO(parquet_rows.file_bytes(lines, compress))).metadata
    columns = {metadata.schema.column(i).name: metadata.row_group(0).column(i)
               for i in range(metadata.num_columns)}
    assert {column.compression for column in columns.values()} == {codec}
    assert (columns["mpid"].statistics.min, columns["mpid"].statistics.max) == (3, 9)
    assert columns["batch_other"].statistics is None
