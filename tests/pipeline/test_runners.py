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
