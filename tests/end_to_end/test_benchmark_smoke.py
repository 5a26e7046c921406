"""A small run of the benchmark command: it runs end to end and its checks hold: every
run forwards the same events, and the plain-Python baselines (one process and every
core) write the pipeline's objects byte for byte, so they do the same work; and the
live benchmark's watcher sees files when they come."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.conftest import ROOT


def test_benchmark_command_smoke_run():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--shapes", "default", "--scale", "0.0016",
         "--repeats", "1", "--no-dask"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "same forwarded events (counts by event id) in every run: True" in result.stdout
    assert "byte-identical objects under identical keys: True" in result.stdout
    assert result.stdout.count("x ") >= 5  # a row per run with its ratios
    assert "plain Python, one process" in result.stdout
    assert "pipeline, Prism" in result.stdout
    assert "4x/1x" in result.stdout


def test_parquet_and_cost_benchmarks_smoke_run():
    """`benchmarks.parquet` (whose DuckDB counts must agree with the NDJSON's) and
    `benchmarks.costs` on a few batches."""
    parquet = subprocess.run(
        [sys.executable, "-m", "benchmarks.parquet", "--scale", "0.002", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert parquet.returncode == 0, parquet.stdout[-3000:] + parquet.stderr[-3000:]
    assert "| Parquet, zstd |" in parquet.stdout and "query: events of type" in parquet.stdout
    costs = subprocess.run(
        [sys.executable, "-m", "benchmarks.costs", "--batches", "300", "--repeats", "1",
         "--shapes", "default,sessions"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert costs.returncode == 0, costs.stdout[-3000:] + costs.stderr[-3000:]
    assert "| 64-bit integer check |" in costs.stdout and "| gzip output |" in costs.stdout


def test_the_live_benchmark_sees_a_new_folder_and_apps_first_file_at_the_next_poll(
        s3_client, bucket):
    """The live benchmark times each file from its first sight: a folder's and app's
    first file is seen at the next poll, not at the next listing of the whole bucket
    (`FULL_LIST_S` later), which once made a run's first files look up to 30 s late."""
    from benchmarks.live import Bucket

    watched = Bucket(s3_client, bucket)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    first = f"2026-12-02/mPTravel_{stamp}000000_00001.txt"
    s3_client.put_object(Bucket=bucket, Key=first, Body=b'{"events": [{"event_type": "x"}]}\n')
    watched.poll(whole=True)
    for key in (f"2026-12-02/Shop Android_{stamp}000000_00002.txt",  # a new app
                f"2026-12-03/mPTravel_{stamp}000000_00003.txt",  # a new folder
                f"2026-12-02/mPTravel_{stamp}999999_00004.txt"):  # a known one's next
        s3_client.put_object(Bucket=bucket, Key=key, Body=b'{"events": [{"event_type": "x"}]}\n')
        watched.poll()
        assert key in watched.first_seen, key
    assert watched.events == 4


def test_the_live_benchmark_says_how_much_cpu_the_hypervisor_took():
    """The share of the machine's CPU time stolen between two times, from the samples
    of /proc/stat's counters the benchmark takes every second: the counters' growth in
    that span, not since the boot; unknown with fewer than two samples."""
    from benchmarks.live import Memory

    machine = Memory(os.getpid())
    time.sleep(1.2)
    machine.stop()
    assert machine.cpu and machine.cpu[0][1] > 0  # this machine's counters, read
    machine.cpu = [(100.0, 1000.0, 50.0), (101.0, 1002.0, 50.5), (102.0, 1004.0, 51.5),
                   (103.0, 1006.0, 51.5)]
    assert machine.stolen_share(100, 103) == 1.5 / 6
    assert machine.stolen_share(101, 102) == 1.0 / 2
    assert machine.stolen_share(102, 103) == 0.0
    assert machine.stolen_share(103, 110) is None
    assert machine.most_stolen_minute(100, 103) is None  # no whole minute sampled
