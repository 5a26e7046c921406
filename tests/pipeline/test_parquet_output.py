"""`--output_format=parquet`: the NDJSON output's batches, as rows that DuckDB reads
with the Athena DDL's types.

The same input goes through the forwarder twice, once per format, into folders of
one bucket: the Parquet files are grouped and named as the NDJSON files are
(same folders, apps and timestamps; `.parquet`), every batch comes back from their
rows as the NDJSON output holds it, and DuckDB, reading the Parquet files with the
printed DDL's columns and types, counts the same events per type per day.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.conftest import SAMPLE_BATCH, list_keys, run_main
from tests.pipeline.test_athena import ddl_columns, duckdb_type, sample_inputs
from transforms.rules import parquet_rows


def _canonical(batch: dict) -> str:
    return json.dumps(batch, sort_keys=True)


def _objects(s3_client, bucket: str, folder: str) -> dict[str, bytes]:
    return {key: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in list_keys(s3_client, bucket, f"{folder}/")
            if "/_dead_letters/" not in key}


def _grouping(key: str) -> str:
    """A file's key without its content digits and suffix: where and when it is."""
    return re.sub(r"_\d{5}\.(txt\.gz|parquet)$", "", key.split("/", 1)[1])


@pytest.mark.parametrize("engine", [[], ["--runner=PrismRunner"]], ids=["DirectRunner", "Prism"])
def test_parquet_files_hold_the_json_outputs_batches_and_duckdb_reads_them_with_the_ddl(
    s3_endpoint, s3_client, bucket, tmp_path, engine, request
):
    if engine:
        request.getfixturevalue("prism")
    source = sample_inputs(tmp_path / "in", 400, 30, seed=5)
    common = [f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
              "--store_data_in_folders_by_date=event_time", "--use_compression=true",
              "--unique_id=acme", *engine]
    for folder, output_format in (("json", "json"), ("pq", "parquet")):
        code, _, err = run_main(common + [f"--folder_name={folder}", f"--input={source}/*",
                                          f"--output_format={output_format}"])
        assert code == 0, err
    code, ddl, err = run_main(common + ["--folder_name=pq", "--output_format=parquet",
                                        "--print_athena_ddl"])
    assert code == 0, err
    assert "STORED AS PARQUET" in ddl and f"LOCATION 's3://{bucket}/pq/'" in ddl

    json_files = {k: v for k, v in _objects(s3_client, bucket, "json").items()
                  if "Verification" not in k}
    parquet_files = _objects(s3_client, bucket, "pq")
    verification = [k for k in parquet_files if "Verification" in k]
    assert verification and all(k.split("/")[-1].startswith("_") for k in verification)
    parquet_files = {k: v for k, v in parquet_files.items() if k not in verification}
    assert all(k.endswith(".parquet") for k in parquet_files)
    assert {s3_client.head_object(Bucket=bucket, Key=key)["ContentType"]
            for key in parquet_files} == {"application/vnd.apache.parquet"}
    assert {s3_client.head_object(Bucket=bucket, Key=key)["ContentType"]
            for key in json_files} == {"text/plain"}
    assert sorted(map(_grouping, parquet_files)) == sorted(map(_grouping, json_files))

    # Every batch, and each of its events, back from the rows as the NDJSON holds it.
    from_json = Counter(_canonical(json.loads(line)) for body in json_files.values()
                        for line in gzip.decompress(body).splitlines())
    tables = [pq.read_table(io.BytesIO(body)) for body in parquet_files.values()]
    assert all(table.schema == parquet_rows.SCHEMA for table in tables)
    from_parquet = Counter(_canonical(batch) for table in tables
                           for batch in parquet_rows.batches_of(table))
    assert from_parquet == from_json

    # DuckDB over the files, with the DDL's columns and types, partitioned by dt.
    out = tmp_path / "out"
    for key, body in parquet_files.items():
        (out / key).parent.mkdir(parents=True, exist_ok=True)
        (out / key).write_bytes(body)
    columns = ddl_columns(ddl)
    assert [name for name in columns] == [field.name for field in parquet_rows.SCHEMA]
    casts = ", ".join(f'CAST("{name}" AS {duckdb_type(kind)}) AS "{name}"'
                      for name, kind in columns.items())
    database = duckdb.connect()
    database.execute(
        f"CREATE TABLE events AS SELECT {casts}, regexp_extract(filename, "
        f"'/(\\d{{4}}-\\d{{2}}-\\d{{2}})/', 1) AS dt FROM read_parquet("
        f"'{out}/**/*.parquet', filename = true)")
    counts = database.execute(
        "SELECT dt, event_type, count(*) FROM events WHERE event_index IS NOT NULL "
        "GROUP BY ALL").fetchall()
    expected = Counter()
    for key, body in json_files.items():
        day = key.split("/")[1]
        for line in gzip.decompress(body).splitlines():
            expected.update((day, e["event_type"]) for e in json.loads(line)["events"])
    assert Counter({(day, kind): n for day, kind, n in counts}) == expected
    assert database.execute("SELECT DISTINCT unique_id FROM events").fetchall() == [("acme",)]
    # Typed columns hold what the JSON holds (an int64 id is the same number).
    (mpid,) = database.execute(
        "SELECT DISTINCT mpid FROM events WHERE mp_deviceid = ?",
        [json.loads(SAMPLE_BATCH.read_text())["mp_deviceid"]]).fetchone()
    assert mpid == json.loads(SAMPLE_BATCH.read_text())["mpid"]
