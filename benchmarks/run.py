"""Throughput and memory benchmark: the pipeline against plain Python, on several
input shapes.

    .venv/bin/python -m benchmarks.run                      # every shape, 3 repeats
    .venv/bin/python -m benchmarks.run --shapes default --repeats 1 --scale 0.01  # a smoke run
    .venv/bin/python -m benchmarks.run --no-4x              # without the memory rows at 4x

Shapes (deterministic batches from `pipeline.tools.sample_data`, NDJSON in
INPUT_FILES files; `--scale` multiplies the batches):
  default     250,000 batches from 20,000 devices, 1-8 events each, about 1.7 input
              batches per outbound batch;
  many-small  200,000 batches from 10,000 devices, busier: about 5 per outbound batch;
  few-large   20,000 batches of 40-80 events from 20,000 devices: about 1 per outbound;
  sessions    the default input, --wait_for_complete_batch=true (30-minute gap);
  gzip-input  the default input, each file gzipped;
  many-devices-day  200,000 batches from 10,000 devices whose days start at any hour:
              a day of arrivals, about 5 per outbound batch.
For each, with the embedded S3 server, gzip output, default file bounds, each run
into its own bucket and timed as a whole process from start to exit, alternated
over `--repeats`:
  1. plain Python, one process (`benchmarks/plain.py`: the same work, importing
     nothing of the forwarder or Beam);
  2. plain Python on every core (`benchmarks/plain.py --processes N`);
  3. the pipeline on the DirectRunner in-process;
  4. the pipeline on the DirectRunner with a worker process per core;
  5. the pipeline on Prism (Beam's portable runner, built by ./run_local.sh), whose
     Go process does the shuffles while the Python code runs in an SDK harness
     process of its own;
  6. the pipeline on a local Dask cluster (`--runner=dask`: a scheduler in the
     launcher, one worker process per core);
and prints a table per shape: the median time and its spread, events/s, batches,
files, bytes, peak RSS of the whole process tree, and speed against both plain
jobs. It checks that every run of a shape forwarded the same events (counts by event
id), and says whether the objects are byte-identical under identical keys. Then,
for the default shape at four times the input (the same devices over four times the
days, in four times the files of the same size), runs 3, 4 and 6 again and prints
their peak RSS beside the 1x figure, the largest peak of one process of the run, and
the sizes of the largest slice and the largest window; and the S3 server's ceiling
(a raw boto3 PUT loop with the default shape's object sizes, at concurrency 1 and 2).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
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
from transforms.machinery.spill_files import slice_start_s
from transforms.rules import batch_json
from transforms.values import DEFAULT_WINDOW_SIZE_S

ROOT = Path(__file__).resolve().parent.parent
INPUT_FILES = 8  # the input is split so that workers can share it
# The input spans about 9 hours of arrival time at 1x and 36 at 4x (same devices,
# four times the batches each): slices of 6 hours make both span several.
SLICE_S = 6 * 3600
CORES = os.cpu_count() or 1

# name → (batches, devices, sample_data.generate's keywords, pipeline flags,
# benchmarks.plain flags, gzipped input files)
SHAPES = {
    "default": (250_000, 20_000, {}, [], [], False),
    "many-small": (200_000, 10_000, {"quiet_share": 0.05}, [], [], False),
    "few-large": (20_000, 20_000, {"events_per_batch": (40, 80)}, [], [], False),
    "sessions": (250_000, 20_000, {}, ["--wait_for_complete_batch=true"], ["--sessions=1800"],
                 False),
    "gzip-input": (250_000, 20_000, {}, [], [], True),
    # Devices whose days start at any hour: a day of arrivals, about five batches
    # merging into each outbound batch.
    "many-devices-day": (200_000, 10_000, {"quiet_share": 0.05,
                                           "start_spread_ms": 86_400_000}, [], [], False),
}


def make_input(folder: Path, batches: int, devices: int, files: int = INPUT_FILES,
               compressed: bool = False, **shape) -> tuple[int, int, int, int]:
    """Writes the batches over `files` NDJSON files (gzipped if `compressed`); returns
    their bytes, the batches and NDJSON bytes of the largest slice of arrival time
    (SLICE_S), and the NDJSON bytes of the largest 10-minute window (what a sliced
    run of fixed windows groups at once). `shape`: `generate`'s keywords."""
    folder.mkdir(parents=True, exist_ok=True)
    generated = iter(generate(batches, devices, **shape))
    per_file = -(-batches // files)
    slices: Counter = Counter()
    slice_bytes: Counter = Counter()
    window_bytes: Counter = Counter()
    for index in range(files):
        chunk = [b for _, b in zip(range(per_file), generated, strict=False)]
        path = folder / f"part-{index}.ndjson"
        write_ndjson(str(path), iter(chunk))
        if compressed:
            with open(path, "rb") as plain, gzip.open(f"{path}.gz", "wb", compresslevel=6) as out:
                out.write(plain.read())
            path.unlink()
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


def _measure(runs: list[tuple], repeats: int, client, env: dict, keep_objects: bool,
             tag: str) -> list[dict]:
    """Runs each (name, scale, command) `repeats` times, alternated (every run once, then
    again); returns a row per run with its times, peaks, and what it forwarded."""
    rows = [{"name": name, "scale": scale, "times": [], "peaks": [], "largests": []}
            for name, scale, _ in runs]
    for repeat in range(repeats):
        for number, (name, scale, command) in enumerate(runs):
            bucket = f"bench-{tag}-{repeat}-{number}"
            client.create_bucket(Bucket=bucket)
            print(f"running {tag}: {name} at {scale}x (repeat {repeat + 1} of {repeats}) ...",
                  flush=True)
            seconds, peak, largest, _ = run_measured(command(bucket), env)
            row = rows[number]
            row["times"].append(seconds)
            row["peaks"].append(peak)
            row["largests"].append(largest)
            events, objects, batches = read_back(client, bucket)
            out_bytes = sum(len(body) for body in objects.values())
            if not keep_objects or repeat:
                objects = {k: hashlib.sha256(v).digest() for k, v in objects.items()}
            if repeat == 0:
                row.update(events=events, objects=objects, batches=batches, out_bytes=out_bytes)
            elif events != row["events"]:
                raise RuntimeError(f"{name} forwarded other events in repeat {repeat + 1}")
            _empty(client, bucket)
    for row in rows:
        row.update(seconds=statistics.median(row["times"]),
                   peak=statistics.median(row["peaks"]),
                   largest=statistics.median(row["largests"]))
    return rows


def _empty(client, bucket: str) -> None:
    """Deletes a bucket's objects (the embedded server keeps them in memory)."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies every shape's batches (0.01: a smoke run)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="run every configuration this many times, alternated; the "
                        "tables show medians and the spread of the times")
    parser.add_argument("--no-4x", dest="four_x", action="store_false",
                        help="skip the memory rows at four times the input")
    parser.add_argument("--no-dask", dest="dask", action="store_false",
                        help="skip the Dask runs")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shapes: {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
               "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(ROOT)}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="local", aws_secret_access_key="local")
        ok = True
        default_rows = None
        for shape in shapes:
            batches, devices, generated, flags, plain_flags, compressed = SHAPES[shape]
            batches = max(100, int(batches * args.scale))
            print(f"generating {shape}: {batches:,} batches from {devices:,} devices ...",
                  flush=True)
            folder = Path(tmp) / shape
            stats = make_input(folder, batches, devices, compressed=compressed, **generated)
            input_bytes = stats[0]
            pattern = f"{folder}/*.ndjson" + (".gz" if compressed else "")
            rows = _measure(_runs(pattern, endpoint, tmp, flags, plain_flags, args.dask),
                            args.repeats, client, env, keep_objects=shape == "default",
                            tag=shape)
            _print_throughput(shape, rows, input_bytes, compressed)
            same_events = all(row["events"] == rows[0]["events"] for row in rows)
            same_objects = all(row["objects"] == rows[0]["objects"] for row in rows)
            ok &= same_events
            print(f"{shape}: same forwarded events (counts by event id) in every run: "
                  f"{same_events}; byte-identical objects under identical keys: "
                  f"{same_objects}", flush=True)
            shutil.rmtree(folder)
            if shape == "default":
                default_rows, default_stats = rows, stats
        if args.four_x and default_rows:
            _memory_at_4x(args, default_rows, default_stats, tmp, endpoint, client, env)
        if default_rows:
            sizes = [len(body) for body in default_rows[0]["objects"].values()]
            client.create_bucket(Bucket="bench-ceiling")
            ceiling = {c: put_ceiling(client, "bench-ceiling", sizes, c) for c in (1, 2)}
            print(f"S3 server ceiling for the default shape's {len(sizes):,} objects: "
                  f"{ceiling[1]:.2f} s at concurrency 1, {ceiling[2]:.2f} s at 2 "
                  f"({len(sizes) / ceiling[1]:,.0f} and {len(sizes) / ceiling[2]:,.0f} "
                  "PUT/s); the runs above took "
                  f"{min(row['seconds'] for row in default_rows):.1f} s and more.")
        if not ok:
            sys.exit(1)


def _runs(pattern: str, endpoint: str, tmp: str, flags: list[str], plain_flags: list[str],
          dask: bool, scale: int = 1, speed_rows: bool = True) -> list[tuple]:
    """(name, scale, command for a bucket) of each run of one input. `speed_rows`: the
    plain jobs and Prism too; without, only the runners whose memory the 4x rows
    compare (the plain jobs hold the whole input, and Prism's shuffles hold it)."""
    def pipeline(*more: str):
        return lambda bucket: [
            sys.executable, "-m", "pipeline", f"--input={pattern}",
            f"--s3_endpoint_url={endpoint}", "--use_compression=true",
            "--skip_bucket_check=true", f"--arrival_slice_s={SLICE_S}",
            f"--spill_dir={tmp}/spill", f"--s3_bucket_name={bucket}", *flags, *more]

    def plain_job(*more: str):
        return lambda bucket: [
            sys.executable, "-m", "benchmarks.plain", f"--input={pattern}",
            f"--bucket={bucket}", f"--endpoint_url={endpoint}", "--gzip", *plain_flags,
            *more]

    runs = []
    if speed_rows:
        runs += [("plain Python, one process", scale, plain_job()),
                 (f"plain Python, {CORES} processes", scale,
                  plain_job(f"--processes={CORES}"))]
    # In-process is asked for: without it a large input gets a worker per core.
    runs += [("pipeline, DirectRunner in-process", scale, pipeline("--direct_num_workers=1")),
             (f"pipeline, DirectRunner {CORES} workers", scale, pipeline(
                 f"--direct_num_workers={CORES}", "--direct_running_mode=multi_processing"))]
    if speed_rows:
        runs.append(("pipeline, Prism (SDK harness process)", scale,
                     pipeline("--runner=PrismRunner")))
    if dask:
        runs.append((f"pipeline, Dask local cluster, {CORES} workers", scale,
                     pipeline("--runner=dask")))
    return runs


def _memory_at_4x(args, default_rows: list[dict], default_stats: tuple, tmp: str,
                  endpoint: str, client, env):
    """The default shape at four times the input, beside its 1x rows."""
    batches, devices, generated, flags, plain_flags, _ = SHAPES["default"]
    batches = max(100, int(batches * args.scale))
    folder = Path(tmp) / "memory-4x"
    print(f"generating the default shape at 4x: {4 * batches:,} batches ...", flush=True)
    inputs = {1: default_stats,
              4: make_input(folder, 4 * batches, devices, 4 * INPUT_FILES, **generated)}
    rows = _measure(_runs(f"{folder}/*.ndjson", endpoint, tmp, flags, plain_flags,
                          args.dask, scale=4, speed_rows=False),
                    args.repeats, client, env, keep_objects=False, tag="4x")
    _print_memory(default_rows + rows, inputs)


def _spread(row: dict) -> str:
    """The fastest and slowest of a run's repeats, if there were several."""
    if len(row["times"]) < 2:
        return ""
    return f"{min(row['times']):.1f}-{max(row['times']):.1f}"


def _print_throughput(shape: str, rows: list[dict], input_bytes: int, compressed: bool):
    one, every = rows[0], rows[1]  # the plain jobs
    total_events = sum(one["events"].values())
    print()
    print(f"{shape}: {one['batches']:,} outbound batches, {total_events:,} events forwarded, "
          f"{input_bytes / 2**20:,.1f} MiB {'gzipped ' if compressed else ''}NDJSON in "
          f"{INPUT_FILES} files; {CORES} cores; medians of {len(one['times'])}")
    header = (f"{'run':<42} {'s':>7} {'(min-max)':>13} {'events/s':>10} {'files':>6} "
              f"{'MiB out':>8} {'peak RSS MiB':>12} {'vs plain 1':>10} "
              f"{f'vs plain {CORES}':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['name']:<42} {row['seconds']:>7.1f} {_spread(row):>13} "
              f"{total_events / row['seconds']:>10,.0f} {len(row['objects']):>6,} "
              f"{row['out_bytes'] / 2**20:>8.1f} {row['peak'] / 2**20:>12,.0f} "
              f"{one['seconds'] / row['seconds']:>9.2f}x "
              f"{every['seconds'] / row['seconds']:>9.2f}x")


def _print_memory(rows: list[dict], inputs: dict):
    print()
    print(f"memory at 1x and 4x the input (same devices, four times the days and files), "
          f"slices of {SLICE_S // 3600} h:")
    header = (f"{'run':<42} {'scale':>5} {'input MiB':>9} {'largest slice':>22} "
              f"{'largest window':>14} {'s':>7} {'(min-max)':>13} {'events/s':>10} "
              f"{'peak RSS MiB':>12} "
              f"{'4x/1x':>6} {'one process MiB':>15}")
    print(header)
    print("-" * len(header))
    peaks = {}
    for row in rows:
        if row["name"].startswith("plain") or "Prism" in row["name"]:
            continue
        input_bytes, slice_batches, slice_bytes, window_bytes = inputs[row["scale"]]
        peaks[(row["name"], row["scale"])] = row["peak"]
        ratio = row["peak"] / peaks[(row["name"], 1)] if row["scale"] != 1 else None
        largest = f"{slice_batches:,} b, {slice_bytes / 2**20:,.0f} MiB"
        print(f"{row['name']:<42} {row['scale']:>4}x {input_bytes / 2**20:>9,.0f} "
              f"{largest:>22} {window_bytes / 2**20:>10,.1f} MiB {row['seconds']:>7.1f} "
              f"{_spread(row):>13} "
              f"{sum(row['events'].values()) / row['seconds']:>10,.0f} "
              f"{row['peak'] / 2**20:>12,.0f} {f'{ratio:.2f}' if ratio else '':>6} "
              f"{row['largest'] / 2**20:>15,.0f}")


if __name__ == "__main__":
    main()
