"""`--print_athena_ddl`: the table's columns and types read what the forwarder wrote.

Athena itself is not to be had here, so DuckDB (a real SQL engine that reads
NDJSON) reads the written files with the printed DDL's columns, each Hive type
translated to DuckDB's, and errors on any value that does not fit its type.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter

import duckdb
import pytest

from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import FORWARDED_EXAMPLE, SAMPLE_BATCH, list_keys, run_main
from transforms.rules import batch_json

_PRIMITIVES = {"string": "VARCHAR", "bigint": "BIGINT", "int": "INTEGER", "double": "DOUBLE",
               "boolean": "BOOLEAN"}


def duckdb_type(hive: str) -> str:
    """A Hive type (array<...>, map<...>, struct<a:...>) in DuckDB's words."""
    kind, rest = _parse(hive.replace(" ", ""))
    assert rest == "", hive
    return kind


def _parse(text: str) -> tuple[str, str]:
    for prefix in ("array<", "map<", "struct<"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            parts = []
            while True:
                name = None
                if prefix == "struct<":
                    name, text = text.split(":", 1)
                kind, text = _parse(text)
                parts.append(f'"{name}" {kind}' if name else kind)
                separator, text = text[0], text[1:]
                if separator == ">":
                    break
            if prefix == "array<":
                return f"{parts[0]}[]", text
            if prefix == "map<":
                return f"MAP({parts[0]}, {parts[1]})", text
            return f"STRUCT({', '.join(parts)})", text
    word = re.match(r"[a-z]+", text)[0]
    return _PRIMITIVES[word], text[len(word):]


def ddl_columns(ddl: str) -> dict[str, str]:
    body = ddl.split("(\n", 1)[1].split("\n)", 1)[0]
    columns = {}
    for line in body.splitlines():
        name, kind = re.fullmatch(r"\s*`(\w+)` (.+?),?", line).groups()
        columns[name] = kind
    return columns


def sample_inputs(source, batches: int, devices: int, seed: int):
    """mParticle's sample batch, its forwarded example, and generated batches (gzipped)
    in a new folder; returns it."""
    source.mkdir()
    (source / "sample.json").write_text(SAMPLE_BATCH.read_text())
    (source / "forwarded.ndjson").write_text(FORWARDED_EXAMPLE.read_text())
    write_ndjson(str(source / "generated.ndjson.gz"), generate(batches, devices, seed=seed))
    return source


def test_hive_types_translate():
    assert duckdb_type("array<struct<a:bigint,b:map<string,string>>>") == (
        'STRUCT("a" BIGINT, "b" MAP(VARCHAR, VARCHAR))[]')


@pytest.mark.parametrize("mode", ["none", "event_time"])
def test_the_ddl_reads_every_written_file_with_its_types(
    s3_endpoint, s3_client, bucket, tmp_path, mode
):
    source = sample_inputs(tmp_path / "in", 300, 20, seed=3)
    flags = [f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
             "--folder_name=mp", f"--store_data_in_folders_by_date={mode}"]
    code, _, err = run_main(flags + [f"--input={source}/*", "--use_compression=true",
                                     "--unique_id=acme"])
    assert code == 0, err
    code, ddl, err = run_main(flags + ["--print_athena_ddl"])
    assert code == 0, err
    assert "ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'" in ddl
    assert f"LOCATION 's3://{bucket}/mp/'" in ddl
    assert ("PARTITIONED BY (`dt` string)" in ddl) == (mode != "none")
    if mode != "none":
        assert f"'storage.location.template' = 's3://{bucket}/mp/${{dt}}/'" in ddl

    out = tmp_path / "out"
    expected_rows, expected_counts = [], Counter()
    for key in list_keys(s3_client, bucket, "mp/"):
        if "Verification" in key or "/_dead_letters/" in key:
            continue
        path = out / key
        path.parent.mkdir(parents=True, exist_ok=True)
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        path.write_bytes(body)
        day = key.split("/")[1] if mode != "none" else ""
        for line in gzip.decompress(body).splitlines():
            batch = json.loads(line)
            expected_rows.append((batch_json.as_int(batch.get("mpid")),
                                  batch_json.as_int(batch.get("timestamp_unixtime_ms")),
                                  len(batch["events"])))
            expected_counts.update((day, e["event_type"]) for e in batch["events"])

    columns = {name: duckdb_type(kind) for name, kind in ddl_columns(ddl).items()}
    assert {"events", "mpid", "timestamp_unixtime_ms", "user_identities", "unique_id"} <= set(
        columns)
    database = duckdb.connect()
    files = str(out / "**" / "*.txt.gz")
    database.execute(
        "CREATE TABLE batches AS SELECT *, regexp_extract(filename, '/(\\d{4}-\\d{2}-\\d{2})/', 1)"
        f" AS dt FROM read_json('{files}', format = 'newline_delimited', compression = 'gzip', "
        f"filename = true, columns = {{{', '.join(f'{n!r}: {t!r}' for n, t in columns.items())}}})"
    )
    rows = database.execute(
        "SELECT mpid, timestamp_unixtime_ms, len(events) FROM batches").fetchall()
    assert sorted(rows, key=repr) == sorted(expected_rows, key=repr)
    identities = database.execute(
        "SELECT count(*) FROM batches, unnest(user_identities) AS u(i) "
        "WHERE i.identity_type IS NULL").fetchone()[0]
    assert identities == 0
    assert database.execute("SELECT DISTINCT unique_id FROM batches").fetchall() == [("acme",)]
    # The README's query: events per type per day.
    counts = database.execute(
        "SELECT dt, e.event_type, count(*) FROM (SELECT dt, unnest(events) AS e FROM batches) "
        "GROUP BY ALL").fetchall()
    assert Counter({(day, kind): n for day, kind, n in counts}) == expected_counts
