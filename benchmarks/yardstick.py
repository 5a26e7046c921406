"""The yardstick: the forwarder's bulk job in plain, single-process Python.

    python -m benchmarks.yardstick --input 'in/*.ndjson' --s3_bucket_name B \\
        --s3_endpoint_url URL [--use_compression]

Default settings, 10-minute windows per device, the same pure rules (orjson),
names, NDJSON, gzip level 6 and write-once uploads through boto3 as the
pipeline, with no Beam: a dict of lists in memory, a loop, and a thread pool
for the PUTs (PUT_THREADS), which also gzips each file in its thread. What a
good engineer writes for one core in plain Python; what the pipeline costs
beyond it is the price of Beam, which it must earn with parallelism and
bounded memory.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from transforms.io import inputs, s3, stores
from transforms.parse import DEFAULT_MAX_BATCH_BYTES, parse_batch
from transforms.rules import packing
from transforms.rules.batch_parts import BatchParts
from transforms.rules.grouping import arrival_order, merge_batches, window_start_us
from transforms.rules.settings import ForwardingSettings, apply_settings
from transforms.values import DEFAULT_WINDOW_SIZE_S
from transforms.write import BatchFileNamer, file_contents, write_file

PUT_THREADS = 8  # as many uploads in flight as boto3's default connection pool allows


def run(patterns: list[str], bucket: str, endpoint_url: str, compress: bool) -> dict:
    connection = s3.S3Connection(endpoint_url=endpoint_url)
    settings = ForwardingSettings()
    size_us = DEFAULT_WINDOW_SIZE_S * 1_000_000
    events_read = 0

    windows = defaultdict(list)  # (device, window start) → that device's batches
    for pattern in patterns:
        for path in inputs.expand_pattern(pattern):
            with inputs.open_input(path) as stream:
                for record in inputs.read_records(path, stream):
                    arrived, _, count = parse_batch(record, DEFAULT_MAX_BATCH_BYTES, None)
                    events_read += count
                    if arrived is None:
                        continue
                    batch, _ = apply_settings(arrived.batch, settings)
                    if batch["events"]:
                        start = window_start_us(arrived.arrival_ms * 1000, size_us)
                        windows[(arrived.device, start)].append(arrived._replace(batch=batch))

    files = defaultdict(list)  # (app, window start) → (arrival, events, line)
    for (_, start), batches in windows.items():
        batches.sort(key=arrival_order)
        merged = merge_batches([(each.arrival_ms, BatchParts.of(each.batch)) for each in batches])
        newest = batches[-1]
        files[(newest.app_name, start)].append(
            (newest.arrival_ms, merged.event_count, merged.line)
        )

    store = stores.S3Store(connection, bucket)
    namer = BatchFileNamer(None, compress)
    contents = (
        content
        for (app_name, _), entries in files.items()
        for content in file_contents(
            app_name, "", entries,
            packing.DEFAULT_MAX_BATCHES_PER_FILE, packing.DEFAULT_MAX_FILE_BYTES,
        )
    )
    written = {"files": 0, "bytes": 0, "events": 0}
    with ThreadPoolExecutor(PUT_THREADS) as pool:
        sizes = pool.map(lambda content: (write_file(store, "", namer, content)[2],
                                          content.event_count), contents)
        for size, events in sizes:
            written["files"] += 1
            written["bytes"] += size
            written["events"] += events
    return {"events_read": events_read, **written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", action="append", required=True)
    parser.add_argument("--s3_bucket_name", required=True)
    parser.add_argument("--s3_endpoint_url")
    parser.add_argument("--use_compression", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    result = run(args.input, args.s3_bucket_name, args.s3_endpoint_url, args.use_compression)
    result["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
