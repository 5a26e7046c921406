"""Progress lines of a bounded run: bytes read of the total, records, events, rate, time left."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from pipeline.progress import progress_line
from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import run_main

LINE = re.compile(
    r"progress: ([\d,.]+) of ([\d,.]+) MiB read \((\d+)%\), ([\d,]+) records, ([\d,]+) events "
    r"forwarded in ([\d,]+) files(?:, [\d,.]+ MiB/s, [\d,]+ events/s, "
    r"(about [\d,]+ s left to read|input read))?"
)


def test_progress_line():
    done = Counter(bytes=50 * 2**20, records=1_000, events=4_000, files=3)
    assert progress_line(done, 200 * 2**20, 10.0) == (
        "progress: 50.0 of 200.0 MiB read (25%), 1,000 records, 4,000 events forwarded in "
        "3 files, 5.0 MiB/s, 400 events/s, about 30 s left to read"
    )
    assert progress_line(Counter(), 0, 0.0).startswith("progress: 0.0 of 0.0 MiB read, 0 records")


@pytest.fixture(scope="module")
def busy_input(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    for part in range(3):
        write_ndjson(str(folder / f"part-{part}.ndjson.gz"), generate(8_000, 800, seed=40 + part))
    return folder


def test_a_bounded_run_reports_progress_from_its_workers(
    s3_endpoint, bucket, busy_input, runner_flags
):
    code, out, err = run_main([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
        f"--input={busy_input}/*", "--progress_every_s=1", "--max_batches_per_file=20",
        *runner_flags,
    ])
    assert code == 0, err[-3000:]
    lines = [LINE.search(line) for line in err.splitlines() if "progress:" in line]
    assert len(lines) >= 2 and all(lines), err[-3000:]
    total_mib = sum(p.stat().st_size for p in busy_input.iterdir()) / 2**20
    assert {match[2] for match in lines} == {f"{total_mib:,.1f}"}  # gzip bytes as stored
    records = [int(match[4].replace(",", "")) for match in lines]
    assert records == sorted(records) and records[-1] == 24_000
    forwarded = re.search(r"events_forwarded\s+([\d,]+)", out)[1]
    assert lines[-1][5] == forwarded and lines[-1][7] == "input read"
