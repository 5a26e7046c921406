"""A small run of the benchmark command: it runs end to end and its check holds."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_command_smoke_run():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--batches", "400", "--devices", "40"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "same forwarded events (counts by event id) in every run: True" in result.stdout
    assert "byte-identical objects under identical keys: True" in result.stdout
    assert result.stdout.count("x ") >= 4  # a row per run with its ratio
    assert "pipeline, Prism" in result.stdout
