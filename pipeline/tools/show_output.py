"""Lists what the forwarder wrote to a bucket: keys, sizes, batches and events.

    python -m pipeline.tools.show_output --s3_bucket_name demo --s3_endpoint_url http://127.0.0.1:9000

With --watch N it polls every N seconds and prints each new object as it appears,
until Ctrl-C. NDJSON objects (.txt, .txt.gz) count their lines (batches) and events;
Parquet objects (.parquet) their batches and rows (one an event).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import time

from transforms.io import s3


def describe_objects(client, bucket: str, prefix: str = "", skip=frozenset()) -> list[dict]:
    rows = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            key = item["Key"]
            if key in skip:
                continue
            response = client.get_object(Bucket=bucket, Key=key)
            body = response["Body"].read()
            batches, events = (_parquet_counts if key.endswith(".parquet") else _ndjson_counts)(
                key, body)
            rows.append({
                "key": key, "bytes": item["Size"], "lines": batches, "events": events,
                "sse": response.get("ServerSideEncryption", "-"),
            })
    return rows


def _ndjson_counts(key: str, body: bytes) -> tuple[int, int]:
    """(lines, events) of an NDJSON object (gzipped where its key says so)."""
    if key.endswith(".gz"):
        body = gzip.decompress(body)
    lines = body.decode("utf-8").splitlines()
    events = 0
    for line in lines:
        value = json.loads(line)
        if isinstance(value, dict) and isinstance(value.get("events"), list):
            events += len(value["events"])
    return len(lines), events


def _parquet_counts(key: str, body: bytes) -> tuple[int, int]:
    """(batches, events) of a Parquet object: a row per event, and one per batch
    without events (its event index null)."""
    import pyarrow.parquet as pq

    from transforms.rules.parquet_rows import EVENT_INDEX

    index = pq.read_table(io.BytesIO(body), columns=[EVENT_INDEX]).column(EVENT_INDEX)
    firsts = sum(1 for value in index.to_pylist() if value in (0, None))
    return firsts, index.length() - index.null_count


def _row(row: dict) -> str:
    return f"{row['bytes']:>10,} {row['lines']:>6} {row['events']:>7} {row['sse']:>8}  {row['key']}"


def watch(client, bucket: str, prefix: str, every_s: float) -> None:
    seen: set[str] = set()
    print(f"{'time':>8} {'bytes':>10} {'lines':>6} {'events':>7} {'SSE':>8}  key", flush=True)
    try:
        while True:
            for row in describe_objects(client, bucket, prefix, frozenset(seen)):
                seen.add(row["key"])
                print(f"{time.strftime('%H:%M:%S')} {_row(row)}", flush=True)
            time.sleep(every_s)
    except KeyboardInterrupt:
        print(f"{len(seen)} objects seen")


def main() -> None:
    from pipeline.logs import quiet_beam_notices

    quiet_beam_notices()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s3_bucket_name", required=True)
    parser.add_argument("--s3_endpoint_url")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--most", type=int, default=25, help="rows to print")
    parser.add_argument("--watch", type=float, help="poll every N seconds for new objects")
    args = parser.parse_args()
    client = s3.make_client(s3.S3Connection(endpoint_url=args.s3_endpoint_url))
    if args.watch:
        watch(client, args.s3_bucket_name, args.prefix, args.watch)
        return
    rows = describe_objects(client, args.s3_bucket_name, args.prefix)
    print(f"{'bytes':>10} {'lines':>6} {'events':>7} {'SSE':>8}  key")
    for row in rows[: args.most]:
        print(_row(row))
    if len(rows) > args.most:
        print(f"... and {len(rows) - args.most} more objects")
    print(f"{sum(r['bytes'] for r in rows):>10,} {sum(r['lines'] for r in rows):>6} "
          f"{sum(r['events'] for r in rows):>7} {'':>8}  total in {len(rows)} objects")


if __name__ == "__main__":
    main()
