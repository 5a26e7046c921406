"""A small run of the benchmark command: it runs end to end and its checks hold: every
run forwards the same events, and the plain-Python baselines (one process and every
core) write the pipeline's objects byte for byte, so they do the same work."""

from __future__ import annotations

import subprocess
import sys

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
