"""S3 faults of any length, injected by a proxy of our own in front of the S3 server.

The product runs as users run it (`python -m pipeline`'s main), against
`--s3_endpoint_url` = the proxy; nothing in the product is patched. A faulty run
must write exactly what a fault-free run of the same input writes: the same
keys, the same bytes, every event once, no other objects.
"""

from __future__ import annotations

import gzip
import json
import re
import time

import pytest

from pipeline.tools.sample_data import generate
from tests.conftest import list_keys, run_main
from tests.fault_proxy import FAULTS, FaultProxy, SilentEndpoint

INPUT_BUCKET = "fault-input"
BATCHES = 1_850  # one device each, one batch a file: at least 1,500 writes
BAD_LINES = [b"not json", b"[1, 2]", b'{"events": "x"}']


@pytest.fixture(scope="module")
def s3_input(s3_client):
    """Two input files on S3: 1,850 one-device batches and three bad lines."""
    s3_client.create_bucket(Bucket=INPUT_BUCKET)
    lines = [json.dumps(batch).encode() for batch in generate(BATCHES, BATCHES, seed=5)]
    half = len(lines) // 2
    for name, chunk in (("a.ndjson.gz", lines[:half]), ("b.ndjson", lines[half:] + BAD_LINES)):
        body = b"\n".join(chunk) + b"\n"
        s3_client.put_object(Bucket=INPUT_BUCKET, Key=f"day/{name}",
                             Body=gzip.compress(body) if name.endswith(".gz") else body)
    return f"s3://{INPUT_BUCKET}/day/*"


def forward(endpoint: str, bucket: str, pattern: str, *flags: str) -> tuple[int, str, str]:
    return run_main([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={endpoint}", f"--input={pattern}",
        "--folder_name=out", "--max_batches_per_file=1", "--use_compression=true", *flags,
    ])


def written(client, bucket: str) -> dict[str, bytes]:
    """Every object but the (time-named) verification objects."""
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in list_keys(client, bucket) if "Bucket_Verification" not in key}


def events_by_id(objects: dict[str, bytes]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for key, body in objects.items():
        if "/_dead_letters/" in key:
            continue
        for line in gzip.decompress(body).splitlines():
            for event in json.loads(line)["events"]:
                event_id = int(event["data"]["event_id"])
                counts[event_id] = counts.get(event_id, 0) + 1
    return counts


def test_a_run_at_20_percent_faults_writes_what_a_fault_free_run_writes(
    s3_endpoint, s3_client, s3_input
):
    s3_client.create_bucket(Bucket="fault-free")
    s3_client.create_bucket(Bucket="faulty")
    code, out, err = forward(s3_endpoint, "fault-free", s3_input)
    assert code == 0, err
    expected = written(s3_client, "fault-free")

    def first_try_fails(method: str, path: str) -> bool:
        # Reads of the input and dead-letter writes are few: fault their first try always.
        return (method == "GET" and "/day/" in path) or "/_dead_letters/" in path

    started = time.monotonic()
    with FaultProxy(s3_endpoint, fault_rate=0.2, seed=20, slow_s=0.1,
                    fault_first=first_try_fails) as proxy:
        code, out, err = forward(proxy.endpoint, "faulty", s3_input)
    seconds = time.monotonic() - started
    assert code == 0, err
    assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in out

    got = written(s3_client, "faulty")
    assert sorted(got) == sorted(expected)  # the same keys, no other objects
    assert got == expected  # and the same bytes
    counts = events_by_id(got)
    assert counts and set(counts.values()) == {1}
    assert sum(1 for key in got if "/_dead_letters/" in key) == 1
    assert len(got) >= 1_500

    requests = sum(proxy.requests.values())
    assert set(proxy.injected) == set(FAULTS)
    assert 0.15 < sum(proxy.injected.values()) / requests < 0.3
    print(f"\n{requests:,} requests, faults injected {dict(proxy.injected)}, "
          f"{proxy.retried_writes():,} writes retried, longest retry "
          f"{proxy.longest_retry_s():.1f} s, {len(got):,} objects, {seconds:.0f} s")


def test_throttling_is_waited_out_not_failed(s3_endpoint, s3_client, bucket, tmp_path):
    """The first five requests are throttled (503 SlowDown) in a row; the run waits."""
    (tmp_path / "in.ndjson").write_text(
        "".join(json.dumps(b) + "\n" for b in generate(30, 30, seed=6))
    )
    with FaultProxy(s3_endpoint, fault_rate=0.0, faults=("503",)) as proxy:
        proxy.fault_always = lambda method, target: proxy.injected["503"] < 5
        code, out, err = forward(proxy.endpoint, bucket, str(tmp_path / "*"))
    assert code == 0, err
    assert proxy.injected["503"] == 5
    assert events_by_id(written(s3_client, bucket))


def error_lines(stderr: str) -> list[str]:
    """What the user is told (the rest of stderr is the run's log)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_write_that_keeps_failing_stops_the_run_naming_the_key(
    s3_endpoint, bucket, tmp_path
):
    (tmp_path / "in.ndjson").write_text(
        "".join(json.dumps(b) + "\n" for b in generate(3, 1, seed=8))
    )
    with FaultProxy(s3_endpoint, fault_rate=1.0, faults=("500",)) as proxy:
        started = time.monotonic()
        code, out, err = forward(proxy.endpoint, bucket, str(tmp_path / "*"),
                                 "--skip_bucket_check=true", "--s3_write_deadline_s=2")
        seconds = time.monotonic() - started
    assert code == 4, err
    [sentence] = error_lines(err)
    assert sentence.startswith(f"error: Gave up writing s3://{bucket}/out/")
    assert "(--s3_write_deadline_s=2): InternalError" in sentence
    assert seconds < 30


def test_a_bucket_check_that_keeps_failing_says_the_servers_error(bucket, s3_endpoint, tmp_path):
    """A server that answers 500 to the write check (a self-hosted store without SSE
    configured, a full disk) is reported with its own error code and message."""
    (tmp_path / "in.ndjson").write_text(json.dumps(next(generate(1, 1))) + "\n")
    with FaultProxy(s3_endpoint, fault_rate=1.0, faults=("500",)) as proxy:
        code, out, err = forward(proxy.endpoint, bucket, str(tmp_path / "*"),
                                 "--s3_read_timeout_s=1", "--s3_connect_timeout_s=1")
    assert code == 3, err
    [sentence] = error_lines(err)
    assert sentence.startswith(f"error: S3 bucket '{bucket}' in region 'us-east-1' at ")
    assert re.search(r" kept failing the write check PutObject of "
                     r"'out/mParticle_Bucket_Verification_[\d-]+\.txt' for 3 s: "
                     r"InternalError injected fault$", sentence), sentence


def test_an_endpoint_that_never_answers_fails_the_start_within_three_read_timeouts(
    bucket, tmp_path
):
    (tmp_path / "in.ndjson").write_text(json.dumps(next(generate(1, 1))) + "\n")
    with SilentEndpoint() as silent:
        started = time.monotonic()
        code, out, err = forward(silent.endpoint, bucket, str(tmp_path / "*"),
                                 "--s3_read_timeout_s=1", "--s3_connect_timeout_s=1")
        seconds = time.monotonic() - started
    assert code == 3
    [sentence] = error_lines(err)
    assert sentence.startswith(f"error: Cannot reach S3 bucket '{bucket}'")
    assert "read timeout 1 s" in sentence
    assert 2 <= seconds < 15
    print(f"\nan endpoint that never answers failed the start after {seconds:.1f} s "
          "(read timeout 1 s)")
