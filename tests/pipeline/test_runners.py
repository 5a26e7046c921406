"""Runner knowledge (`pipeline/runners.py`) against the real engines: a portable run
lasts as long as its job, however short Beam's job-server timeout."""

from __future__ import annotations

import time

from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import list_keys, run_main


def test_a_bounded_prism_run_outlives_the_job_server_timeout(
    s3_endpoint, s3_client, bucket, tmp_path, prism
):
    """Beam opens the job's state stream with `--job_server_timeout` as its deadline;
    before the fix every portable run ended in DEADLINE_EXCEEDED after that long."""
    write_ndjson(str(tmp_path / "in.ndjson"), generate(6_000, 300))
    timeout_s = 1
    started = time.monotonic()
    code, out, err = run_main([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
        f"--input={tmp_path}/*", "--runner=PrismRunner", f"--job_server_timeout={timeout_s}",
    ])
    elapsed = time.monotonic() - started
    assert code == 0, err[-3000:]
    assert elapsed > 2 * timeout_s  # the run did outlive the timeout
    assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in out
    assert len(list_keys(s3_client, bucket)) > 1


def _direct(flags: list[str], input_bytes: int) -> tuple[int, str, list[int]]:
    """(workers, running mode, sizes asked for) of a bounded DirectRunner run."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    from pipeline.runners import make_runner

    asked = []
    options = PipelineOptions(flags)
    make_runner(options, lambda: asked.append(input_bytes) or input_bytes)
    direct = options.view_as(DirectOptions)
    return direct.direct_num_workers, direct.direct_running_mode, asked


def test_a_large_bounded_input_gets_a_worker_process_per_core(monkeypatch):
    from pipeline.runners import WORKERS_FROM_BYTES

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert _direct([], WORKERS_FROM_BYTES) == (4, "multi_processing", [WORKERS_FROM_BYTES])
    assert _direct(["--runner=DirectRunner"], 10 * WORKERS_FROM_BYTES)[:2] == (
        4, "multi_processing")
    # Below the threshold, one core, or the user's own choice (even Beam's default): as given.
    assert _direct([], WORKERS_FROM_BYTES - 1)[:2] == (1, "in_memory")
    assert _direct(["--direct_num_workers=1"], 10 * WORKERS_FROM_BYTES) == (1, "in_memory", [])
    assert _direct(["--direct_running_mode=multi_threading"], 10 * WORKERS_FROM_BYTES)[:2] == (
        1, "multi_threading")
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert _direct([], 10 * WORKERS_FROM_BYTES)[:2] == (1, "in_memory")
