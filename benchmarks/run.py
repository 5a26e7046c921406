"""Throughput benchmark: the pipeline against a plain-Python yardstick, one input.

    .venv/bin/python -m benchmarks.run                      # 1,000,000 events (≈250,000 batches)
    .venv/bin/python -m benchmarks.run --batches 2000       # a smoke run

Generates deterministic batches (`pipeline.sample_data`: 20,000 devices, 1-8
events a batch), starts the embedded S3 server, and runs on that input, gzip on,
default file bounds, each into its own bucket:
  1. the yardstick (benchmarks/yardstick.py), one process;
  2. the pipeline on the DirectRunner in-process;
  3. the pipeline on the DirectRunner with 2 worker processes;
  4. the pipeline on Prism (Beam's portable runner, built by ./run_local.sh), whose
     Go process does the shuffles while the Python code runs in an SDK harness
     process of its own (Prism starts one per environment);
then measures the S3 server's ceiling (a raw boto3 PUT loop with the same object
sizes, at concurrency 1 and 2) and prints one table: events/s, batches, files,
bytes, peak RSS of the whole process tree, speed against the yardstick, and the
uploads as a fraction of the ceiling. It checks that every run forwarded the
same events (counts by event id) and reports whether the objects are identical.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import psutil

from pipeline.sample_data import generate, write_ndjson
from tests.conftest import moto_server
from transforms import batch_json

ROOT = Path(__file__).resolve().parent.parent
INPUT_FILES = 8  # the input is split so that workers can share it


def make_input(folder: Path, batches: int, devices: int) -> int:
    """Writes the batches over INPUT_FILES NDJSON files; returns their bytes."""
    generated = iter(generate(batches, devices))
    per_file = -(-batches // INPUT_FILES)
    for index in range(INPUT_FILES):
        chunk = [b for _, b in zip(range(per_file), generated, strict=False)]
        write_ndjson(str(folder / f"part-{index}.ndjson"), iter(chunk))
    return sum(path.stat().st_size for path in folder.iterdir())


def run_measured(command: list[str], env: dict) -> tuple[float, int, str]:
    """Runs a command; returns (seconds, peak RSS of its process tree, stdout)."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=log, text=True)
        peak = 0
        tree = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                rss = tree.memory_info().rss + sum(
                    child.memory_info().rss for child in tree.children(recursive=True)
                )
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
        out = process.stdout.read()
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{command} failed ({process.returncode}):\n{out[-3000:]}"
                               f"\n{log.read()[-5000:]}")
    return time.monotonic() - started, peak, out


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
    parser.add_argument("--devices", type=int, default=20_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        folder = Path(tmp)
        print(f"generating {args.batches:,} batches from {args.devices:,} devices ...", flush=True)
        input_bytes = make_input(folder, args.batches, args.devices)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
               "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(ROOT)}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="local", aws_secret_access_key="local")
        pattern = str(folder / "*.ndjson")
        pipeline = [sys.executable, "-m", "pipeline", f"--input={pattern}",
                    f"--s3_endpoint_url={endpoint}", "--use_compression=true",
                    "--skip_bucket_check=true"]
        runs = {
            "yardstick (plain Python)": [
                sys.executable, "-m", "benchmarks.yardstick", f"--input={pattern}",
                f"--s3_endpoint_url={endpoint}", "--use_compression"],
            "pipeline, DirectRunner in-process": pipeline,
            "pipeline, DirectRunner 2 workers": pipeline + [
                "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
            "pipeline, Prism (SDK harness process)": pipeline + ["--runner=PrismRunner"],
        }
        rows = []
        for number, (name, command) in enumerate(runs.items()):
            bucket = f"bench-{number}"
            client.create_bucket(Bucket=bucket)
            print(f"running: {name} ...", flush=True)
            seconds, peak, _ = run_measured(command + [f"--s3_bucket_name={bucket}"], env)
            events, objects, batches = read_back(client, bucket)
            rows.append({"name": name, "seconds": seconds, "peak": peak, "events": events,
                         "objects": objects, "batches": batches})

        sizes = [len(body) for body in rows[0]["objects"].values()]
        client.create_bucket(Bucket="bench-ceiling")
        ceiling = {c: put_ceiling(client, "bench-ceiling", sizes, c) for c in (1, 2)}

        yard = rows[0]
        total_events = sum(yard["events"].values())
        print()
        print(f"input: {args.batches:,} batches, {total_events:,} events forwarded, "
              f"{input_bytes / 2**20:,.1f} MiB NDJSON in {INPUT_FILES} files; "
              f"{os.cpu_count()} cores")
        header = (f"{'run':<38} {'s':>7} {'events/s':>10} {'batches':>9} {'files':>6} "
                  f"{'MiB out':>8} {'peak RSS MiB':>12} {'RSS/input':>9} {'vs yardstick':>12} "
                  f"{'S3 ceiling share':>16}")
        print(header)
        print("-" * len(header))
        for row, concurrency in zip(rows, (1, 1, 2, 2), strict=True):
            out_bytes = sum(len(b) for b in row["objects"].values())
            share = ceiling[concurrency] / row["seconds"]
            print(f"{row['name']:<38} {row['seconds']:>7.1f} "
                  f"{total_events / row['seconds']:>10,.0f} {row['batches']:>9,} "
                  f"{len(row['objects']):>6,} {out_bytes / 2**20:>8.1f} "
                  f"{row['peak'] / 2**20:>12,.0f} {row['peak'] / input_bytes:>9.2f} "
                  f"{yard['seconds'] / row['seconds']:>11.2f}x {share:>15.0%}")
        print(f"S3 server ceiling for these {len(sizes):,} objects: "
              f"{ceiling[1]:.2f} s at concurrency 1, {ceiling[2]:.2f} s at 2 "
              f"({len(sizes) / ceiling[1]:,.0f} and {len(sizes) / ceiling[2]:,.0f} PUT/s). "
              "Share = that time / the run's time: how much of the run the server bounds.")
        same_events = all(row["events"] == yard["events"] for row in rows)
        same_objects = all(row["objects"] == yard["objects"] for row in rows)
        print(f"same forwarded events (counts by event id) in every run: {same_events}; "
              f"byte-identical objects under identical keys: {same_objects}")
        if not same_events:
            sys.exit(1)


if __name__ == "__main__":
    main()
