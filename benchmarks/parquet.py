"""Parquet against gzipped NDJSON: what writing costs, and what a query reads.

    .venv/bin/python -m benchmarks.parquet                 # the default shape, 3 repeats
    .venv/bin/python -m benchmarks.parquet --scale 0.05 --repeats 1   # a smoke run

The default input of `benchmarks.run` (250,000 batches at --scale 1) goes through the
pipeline (DirectRunner in-process, date folders by event time) as gzipped NDJSON,
as Parquet with zstd (`--use_compression=true`) and with snappy, alternated over
`--repeats`; each run is timed as a whole process from start to exit. Printed: the
median time and its spread, events/s, files and bytes written. Then a typical query,
the events of one type on one day (the busiest day and its most common type):
DuckDB counts them in both outputs (the counts must agree), and the bytes it must
read for it are compared: every byte of that day's NDJSON files (a JSON reader reads
whole files), against the footers and the `event_type` column chunks of that day's
Parquet files (a columnar reader, Athena's or DuckDB's, reads no other column).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import json
import os
import statistics
import struct
import sys
import tempfile
from pathlib import Path

import boto3
import duckdb
import pyarrow.parquet as pq

from benchmarks.run import ROOT, SHAPES, _empty, make_input, run_measured
from pipeline.tools.local_services import moto_server

FORMATS = {
    "NDJSON, gzip": ["--output_format=json", "--use_compression=true"],
    "Parquet, zstd": ["--output_format=parquet", "--use_compression=true"],
    "Parquet, snappy": ["--output_format=parquet", "--use_compression=false"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batches, devices, generated, _, _, _ = SHAPES["default"]
    batches = max(100, int(batches * args.scale))
    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
               "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(ROOT)}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="local", aws_secret_access_key="local")
        folder = Path(tmp) / "in"
        print(f"generating {batches:,} batches from {devices:,} devices ...", flush=True)
        make_input(folder, batches, devices, **generated)
        times = collections.defaultdict(list)
        written: dict[str, dict[str, bytes]] = {}
        for repeat in range(args.repeats):
            for number, (name, flags) in enumerate(FORMATS.items()):
                bucket = f"parquet-{repeat}-{number}"
                client.create_bucket(Bucket=bucket)
                print(f"running {name} (repeat {repeat + 1} of {args.repeats}) ...", flush=True)
                seconds, _, _, _ = run_measured([
                    sys.executable, "-m", "pipeline", f"--input={folder}/*.ndjson",
                    f"--s3_endpoint_url={endpoint}", f"--s3_bucket_name={bucket}",
                    "--skip_bucket_check=true", "--direct_num_workers=1",
                    "--store_data_in_folders_by_date=event_time", f"--spill_dir={tmp}/spill",
                    *flags], env)
                times[name].append(seconds)
                objects = _objects(client, bucket)
                if repeat == 0:
                    written[name] = objects
                elif sorted(objects) != sorted(written[name]):
                    raise RuntimeError(f"{name} wrote other files in repeat {repeat + 1}")
                _empty(client, bucket)
        events = sum(_event_types(written["NDJSON, gzip"]).values())
        print(f"\n{batches:,} input batches, {events:,} events forwarded; DirectRunner "
              f"in-process; medians of {args.repeats}")
        print("| output | s (median) | min-max | events/s | files | MiB out | vs NDJSON |")
        print("|---|---|---|---|---|---|---|")
        base = sum(map(len, written["NDJSON, gzip"].values()))
        for name, seconds in times.items():
            out = sum(map(len, written[name].values()))
            print(f"| {name} | {statistics.median(seconds):.1f} | {min(seconds):.1f}-"
                  f"{max(seconds):.1f} | {events / statistics.median(seconds):,.0f} | "
                  f"{len(written[name]):,} | {out / 2**20:.1f} | {out / base:.2f}x bytes |")
        _query(written, Path(tmp) / "out")


def _objects(client, bucket: str) -> dict[str, bytes]:
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            objects[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])[
                "Body"].read()
    return objects


def _event_types(objects: dict[str, bytes]) -> collections.Counter:
    """(day, event type) → events, from NDJSON files."""
    counts = collections.Counter()
    for key, body in objects.items():
        for line in gzip.decompress(body).splitlines():
            counts.update((key.split("/")[0], e["event_type"]) for e in json.loads(line)["events"])
    return counts


def _query(written: dict[str, dict[str, bytes]], out: Path) -> None:
    """The events of one type on one day, in both outputs: the count, and the bytes read."""
    counts = _event_types(written["NDJSON, gzip"])
    busiest = collections.Counter()
    for (day, _), n in counts.items():
        busiest[day] += n
    day = busiest.most_common(1)[0][0]
    kind = max((k for d, k in counts if d == day), key=lambda k: counts[(day, k)])
    print(f"\nquery: events of type {kind!r} on {day} (the busiest day, its most common type)")
    print("| output | files read | bytes read | events counted | vs NDJSON |")
    print("|---|---|---|---|---|")
    json_bytes = None
    for name, objects in written.items():
        folder = out / name.replace(", ", "-")
        for key, body in objects.items():
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            (folder / key).write_bytes(body)
        day_files = {k: v for k, v in objects.items() if k.startswith(f"{day}/")}
        database = duckdb.connect()
        if name.startswith("NDJSON"):
            (found,) = database.execute(
                f"SELECT count(*) FROM (SELECT unnest(events) AS e FROM read_json("
                f"'{folder}/{day}/*.txt.gz', format = 'newline_delimited', compression = "
                f"'gzip', columns = {{'events': 'STRUCT(event_type VARCHAR)[]'}})) "
                f"WHERE e.event_type = ?", [kind]).fetchone()
            read = sum(map(len, day_files.values()))
            json_bytes = read
        else:
            (found,) = database.execute(
                f"SELECT count(*) FROM read_parquet('{folder}/{day}/*.parquet') "
                f"WHERE event_type = ? AND event_index IS NOT NULL", [kind]).fetchone()
            read = sum(_column_bytes(body, "event_type") for body in day_files.values())
        if found != counts[(day, kind)]:
            raise RuntimeError(f"{name}: {found:,} events counted, {counts[(day, kind)]:,} "
                               "forwarded")
        print(f"| {name} | {len(day_files):,} | {read:,} | {found:,} | "
              f"{read / json_bytes:.3f}x |")


def _column_bytes(body: bytes, column: str) -> int:
    """What a columnar reader fetches of a Parquet file for one column: the footer
    (and its length and magic), and that column's chunks in every row group."""
    footer = struct.unpack("<I", body[-8:-4])[0] + 8
    metadata = pq.ParquetFile(io.BytesIO(body)).metadata
    index = metadata.schema.names.index(column)
    return footer + sum(metadata.row_group(i).column(index).total_compressed_size
                        for i in range(metadata.num_row_groups))


if __name__ == "__main__":
    main()
