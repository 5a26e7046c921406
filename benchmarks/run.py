"""Throughput and memory benchmark: the pipeline against a plain-Python yardstick.

    .venv/bin/python -m benchmarks.run                      # 1,000,000 events (≈250,000 batches)
    .venv/bin/python -m benchmarks.run --batches 2000       # a smoke run
    .venv/bin/python -m benchmarks.run --no-4x              # without the memory rows at 4x
    .venv/bin/python -m benchmarks.run --repeats 3          # medians of 3 alternated runs

Generates deterministic batches (`pipeline.tools.sample_data`: 20,000 devices, 1-8
events a batch), starts the embedded S3 server, and runs on that input, gzip on,
default file bounds, slices of SLICE_S, each into its own bucket, every run timed
as a whole process from start to exit:
  1. the yardstick (benchmarks/yardstick.py), one process;
  2. the pipeline on the DirectRunner in-process;
  3. the pipeline on the DirectRunner with 2 worker processes;
  4. the pipeline on Prism (Beam's portable runner, built by ./run_local.sh), whose
     Go process does the shuffles while the Python code runs in an SDK harness
     process of its own (Prism starts one per environment);
  5. the pipeline on a local Dask cluster (`--runner=dask`: a scheduler in the
     launcher, one worker process per core);
then measures the S3 server's ceiling (a raw boto3 PUT loop with the same object
sizes, at concurrency 1 and 2) and prints one table: events/s, batches, files,
bytes, peak RSS of the whole process tree, speed against the yardstick, and the
uploads as a fraction of the ceiling. Then, at four times the input (the same
devices over four times the days, in four times the files of the same size), runs
2, 3 and 5 again and prints their peak RSS
beside the 1x figure, the largest peak of one process of the run, and the sizes of
the largest slice and the largest window.
It checks that every run at one size forwarded the same events (counts by event
id) and reports whether the objects are identical.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import psutil

from pipeline.tools.local_services import moto_server
from pipeline.tools.sample_data import generate, write_ndjson
from transforms.rules import batch_json
from transforms.spill import slice_start_s
from transforms.values import DEFAULT_WINDOW_SIZE_S

ROOT = Path(__file__).resolve().parent.parent
INPUT_FILES = 8  # the input is split so that workers can share it
# The input spans about 9 hours of arrival time at 1x and 36 at 4x (same devices,
# four times the batches each): slices of 6 hours make both span several.
SLICE_S = 6 * 3600


def make_input(folder: Path, batches: int, devices: int, files: int = INPUT_FILES
               ) -> tuple[int, int, int, int]:
    """Writes the batches over `files` NDJSON files; returns their bytes, the
    batches and NDJSON bytes of the largest slice of arrival time (SLICE_S), and the
    NDJSON bytes of the largest 10-minute window (what a sliced run of fixed windows
    groups at once)."""
    folder.mkdir(parents=True, exist_ok=True)
    generated = iter(generate(batches, devices))
    per_file = -(-batches // files)
    slices: Counter = Counter()
    slice_bytes: Counter = Counter()
    window_bytes: Counter = Counter()
    for index in range(files):
        chunk = [b for _, b in zip(range(per_file), generated, strict=False)]
        write_ndjson(str(folder / f"part-{index}.ndjson"), iter(chunk))
        for batch in chunk:
            arrival_ms = int(batch["timestamp_unixtime_ms"])
            size = len(json.dumps(batch, separators=(",", ":"))) + 1
            start = slice_start_s(arrival_ms, SLICE_S)
            slices[start] += 1
            slice_bytes[start] += size
            window_bytes[slice_start_s(arrival_ms, DEFAULT_WINDOW_SIZE_S)] += size
    largest = max(slice_bytes, key=slice_bytes.get)
    return (sum(p.stat().st_size for p in folder.iterdir()), slices[largest],
            slice_bytes[largest], max(window_bytes.values()))


def run_measured(command: list[str], env: dict) -> tuple[float, int, int, str]:
    """Runs a command; returns (seconds, peak RSS of its process tree, the largest
    peak RSS of one process in it, stdout)."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=log, text=True)
        peak = largest = 0
        tree = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                each = [tree.memory_info().rss] + [
                    child.memory_info().rss for child in tree.children(recursive=True)
                ]
                peak, largest = max(peak, sum(each)), max(largest, *each)
            except psutil.Error:
                pass
            time.sleep(0.05)
        out = process.stdout.read()
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{command} failed ({process.returncode}):\n{out[-3000:]}"
                               f"\n{log.read()[-5000:]}")
    return time.monotonic() - started, peak, largest, out


def read_back(client, bucket: str) -> tuple[Counter, dict[str, bytes], int]:
    """(events by id, objects, batches) forwarded to a bucket."""
    events, objects, batches = Counter(), {}, 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            objects[item["Key"]] = body
            for line in gzip.decompress(body).splitlines():
                batch = json.loads(line)
                batches += 1
                events.update(batch_json.as_int(e["data"]["event_id"]) for e in batch["events"])
    return events, objects, batches


def put_ceiling(client, bucket: str, sizes: list[int], concurrency: int) -> float:
    """Seconds a raw PutObject loop takes for objects of these sizes."""
    body = os.urandom(max(sizes))
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda n: client.put_object(
            Bucket=bucket, Key=f"ceiling/{n[0]}", Body=body[: n[1]]), enumerate(sizes)))
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every configuration this many times, alternated; the "
                        "tables show medians and the spread of the times")
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--no-4x", dest="four_x", action="store_false",
                        help="skip the memory rows at four times the input")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
               "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(ROOT)}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="local", aws_secret_access_key="local")
        inputs = {}
        for scale in (1, 4) if args.four_x else (1,):
            print(f"generating {scale}x: {args.batches * scale:,} batches from "
                  f"{args.devices:,} devices ...", flush=True)
            folder = Path(tmp) / f"x{scale}"
            inputs[scale] = (folder, *make_input(folder, args.batches * scale, args.devices,
                                                 INPUT_FILES * scale))

        def pipeline(scale: int) -> list[str]:
            return [sys.executable, "-m", "pipeline", f"--input={inputs[scale][0]}/*.ndjson",
                    f"--s3_endpoint_url={endpoint}", "--use_compression=true",
                    "--skip_bucket_check=true", f"--arrival_slice_s={SLICE_S}",
                    f"--spill_dir={tmp}/spill"]

        # In-process is asked for: without it a large input gets a worker per core.
        in_process = ["--direct_num_workers=1"]
        two_workers = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
        dask = ["--runner=dask"]  # a local cluster: one worker process per core
        runs = [
            ("yardstick (plain Python)", 1, [
                sys.executable, "-m", "benchmarks.yardstick",
                f"--input={inputs[1][0]}/*.ndjson", f"--s3_endpoint_url={endpoint}",
                "--use_compression"]),
            ("pipeline, DirectRunner in-process", 1, pipeline(1) + in_process),
            ("pipeline, DirectRunner 2 workers", 1, pipeline(1) + two_workers),
            ("pipeline, Prism (SDK harness process)", 1, pipeline(1) + ["--runner=PrismRunner"]),
            ("pipeline, Dask local cluster, 2 workers", 1, pipeline(1) + dask),
        ]
        if args.four_x:
            runs += [("pipeline, DirectRunner in-process", 4, pipeline(4) + in_process),
                     ("pipeline, DirectRunner 2 workers", 4, pipeline(4) + two_workers),
                     ("pipeline, Dask local cluster, 2 workers", 4, pipeline(4) + dask)]
        rows = [{"name": name, "scale": scale, "times": [], "peaks": [], "largests": []}
                for name, scale, _ in runs]
        for repeat in range(args.repeats):  # alternated: every run once, then again
            for number, (name, scale, command) in enumerate(runs):
                bucket = f"bench-{repeat}-{number}"
                client.create_bucket(Bucket=bucket)
                print(f"running: {name} at {scale}x (repeat {repeat + 1} of "
                      f"{args.repeats}) ...", flush=True)
                seconds, peak, largest, _ = run_measured(
                    command + [f"--s3_bucket_name={bucket}"], env)
                row = rows[number]
                row["times"].append(seconds)
                row["peaks"].append(peak)
                row["largests"].append(largest)
                events, objects, batches = read_back(client, bucket)
                if scale != 1 or repeat:
                    # Only the 1x objects are kept whole (the S3 ceiling's sizes).
                    objects = {k: hashlib.sha256(v).digest() for k, v in objects.items()}
                if repeat == 0:
                    row.update(events=events, objects=objects, batches=batches)
                elif events != row["events"]:
                    raise RuntimeError(f"{name} forwarded other events in repeat {repeat + 1}")
        for row in rows:
            row.update(seconds=statistics.median(row["times"]),
                       peak=statistics.median(row["peaks"]),
                       largest=statistics.median(row["largests"]))

        one_x = [row for row in rows if row["scale"] == 1]
        sizes = [len(body) for body in one_x[0]["objects"].values()]
        client.create_bucket(Bucket="bench-ceiling")
        ceiling = {c: put_ceiling(client, "bench-ceiling", sizes, c) for c in (1, 2)}
        _print_throughput(one_x, ceiling, sizes, inputs[1][1])
        if args.four_x:
            _print_memory(rows, inputs)
        ok = True
        for scale in inputs:
            same = [row for row in rows if row["scale"] == scale]
            same_events = all(row["events"] == same[0]["events"] for row in same)
            same_objects = all(row["objects"] == same[0]["objects"] for row in same)
            ok &= same_events
            print(f"{scale}x: same forwarded events (counts by event id) in every run: "
                  f"{same_events}; byte-identical objects under identical keys: {same_objects}")
        if not ok:
            sys.exit(1)


def _spread(row: dict) -> str:
    """The fastest and slowest of a run's repeats, if there were several."""
    if len(row["times"]) < 2:
        return ""
    return f"{min(row['times']):.1f}-{max(row['times']):.1f}"


def _print_throughput(rows: list[dict], ceiling: dict, sizes: list[int], input_bytes: int):
    yard = rows[0]
    total_events = sum(yard["events"].values())
    print()
    print(f"input: {yard['batches']:,} batches forwarded, {total_events:,} events, "
          f"{input_bytes / 2**20:,.1f} MiB NDJSON in {INPUT_FILES} files; "
          f"{os.cpu_count()} cores; slices of {SLICE_S // 3600} h")
    header = (f"{'run':<38} {'s':>7} {'(min-max)':>13} {'events/s':>10} {'batches':>9} "
              f"{'files':>6} "
              f"{'MiB out':>8} {'peak RSS MiB':>12} {'RSS/input':>9} {'vs yardstick':>12} "
              f"{'S3 ceiling share':>16}")
    print(header)
    print("-" * len(header))
    for row, concurrency in zip(rows, (1, 1, 2, 2, 2), strict=True):
        out_bytes = sum(len(b) for b in row["objects"].values())
        share = ceiling[concurrency] / row["seconds"]
        print(f"{row['name']:<38} {row['seconds']:>7.1f} {_spread(row):>13} "
              f"{total_events / row['seconds']:>10,.0f} {row['batches']:>9,} "
              f"{len(row['objects']):>6,} {out_bytes / 2**20:>8.1f} "
              f"{row['peak'] / 2**20:>12,.0f} {row['peak'] / input_bytes:>9.2f} "
              f"{yard['seconds'] / row['seconds']:>11.2f}x {share:>15.0%}")
    print(f"S3 server ceiling for these {len(sizes):,} objects: "
          f"{ceiling[1]:.2f} s at concurrency 1, {ceiling[2]:.2f} s at 2 "
          f"({len(sizes) / ceiling[1]:,.0f} and {len(sizes) / ceiling[2]:,.0f} PUT/s). "
          "Share = that time / the run's time: how much of the run the server bounds.")


def _print_memory(rows: list[dict], inputs: dict):
    print()
    print(f"memory at 1x and 4x the input (same devices, four times the days and files), "
          f"slices of {SLICE_S // 3600} h:")
    header = (f"{'run':<38} {'scale':>5} {'input MiB':>9} {'largest slice':>22} "
              f"{'largest window':>14} {'s':>7} {'(min-max)':>13} {'events/s':>10} "
              f"{'peak RSS MiB':>12} "
              f"{'4x/1x':>6} {'one process MiB':>15}")
    print(header)
    print("-" * len(header))
    peaks = {}
    for row in rows:
        if row["name"].startswith("yardstick") or "Prism" in row["name"]:
            continue
        _, input_bytes, slice_batches, slice_bytes, window_bytes = inputs[row["scale"]]
        peaks[(row["name"], row["scale"])] = row["peak"]
        ratio = row["peak"] / peaks[(row["name"], 1)] if row["scale"] != 1 else None
        largest = f"{slice_batches:,} b, {slice_bytes / 2**20:,.0f} MiB"
        print(f"{row['name']:<38} {row['scale']:>4}x {input_bytes / 2**20:>9,.0f} "
              f"{largest:>22} {window_bytes / 2**20:>10,.1f} MiB {row['seconds']:>7.1f} "
              f"{_spread(row):>13} "
              f"{sum(row['events'].values()) / row['seconds']:>10,.0f} "
              f"{row['peak'] / 2**20:>12,.0f} {f'{ratio:.2f}' if ratio else '':>6} "
              f"{row['largest'] / 2**20:>15,.0f}")


if __name__ == "__main__":
    main()
