"""Bounded runs on a Dask cluster (`--runner=dask`, `pipeline.runners.dask_runner`): a real
scheduler and two worker processes on loopback (`dask scheduler`, `dask worker`),
against the DirectRunner's objects, byte for byte, under the same keys."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import threading
import time

import distributed
import pytest

from pipeline.tools.local_services import dask_cluster, free_port
from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import FORWARDED_EXAMPLE, SAMPLE_BATCH, list_keys, run_main

pytestmark = pytest.mark.timeout(300)
CLOCK = datetime.datetime(2026, 11, 30, 12, tzinfo=datetime.timezone.utc)
MODES = {
    "fixed windows": [],
    "sessions": ["--wait_for_complete_batch=true"],
    "per event": ["--send_as_batch=false"],
}


@pytest.fixture(scope="module")
def cluster():
    with dask_cluster(workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The real sample, mParticle's forwarded example, a line that is not JSON (a dead
    letter), and generated batches in one large file and one gzip file."""
    folder = tmp_path_factory.mktemp("in")
    shutil.copy(SAMPLE_BATCH, folder / "sample.json")
    shutil.copy(FORWARDED_EXAMPLE, folder / "forwarded.ndjson")
    (folder / "broken.ndjson").write_bytes(b'{"events": [\n')
    write_ndjson(str(folder / "generated.ndjson"), generate(4000, 300, seed=11))
    write_ndjson(str(folder / "generated.ndjson.gz"), generate(600, 40, seed=12))
    return folder


def forward(endpoint, bucket, folder, *flags) -> tuple[int, str, str]:
    return run_main([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={endpoint}", f"--input={folder}/*",
        "--folder_name=out", "--use_compression=true", "--server_side_encryption_method=AES256",
        *flags,
    ], clock=lambda: CLOCK)


def objects(client, bucket) -> dict[str, tuple[bytes, str | None]]:
    """Key → (bytes, server-side encryption) of every object the run wrote (not the
    write check's, named by the time it ran)."""
    found = {}
    for key in list_keys(client, bucket):
        if "mParticle_Bucket_Verification_" in key:
            continue
        got = client.get_object(Bucket=bucket, Key=key)
        found[key] = (got["Body"].read(), got.get("ServerSideEncryption"))
    return found


def summary(out: str) -> dict[str, str]:
    """The run summary's counters (not its seconds)."""
    lines = [line.split() for line in out.splitlines() if line.startswith("  ")]
    return {words[0]: words[-1] for words in lines if len(words) == 2 and words[0] != "seconds:"}


def direct_run(s3_endpoint, s3_client, folder, flags, new_bucket) -> tuple[dict, dict]:
    bucket = new_bucket()
    code, out, err = forward(s3_endpoint, bucket, folder, "--runner=DirectRunner", *flags)
    assert code == 0, err
    return objects(s3_client, bucket), summary(out)


@pytest.fixture
def new_bucket(s3_client, bucket):
    names = iter([bucket] + [f"{bucket}-{n}" for n in range(1, 4)])

    def make() -> str:
        name = next(names)
        if name != bucket:
            s3_client.create_bucket(Bucket=name)
        return name
    return make


@pytest.mark.parametrize("mode", MODES)
def test_a_dask_cluster_writes_the_direct_runners_objects_byte_for_byte(
    s3_endpoint, s3_client, new_bucket, cluster, inputs, mode
):
    expected, expected_counts = direct_run(s3_endpoint, s3_client, inputs, MODES[mode],
                                           new_bucket)
    bucket = new_bucket()
    code, out, err = forward(s3_endpoint, bucket, inputs, "--runner=dask",
                             f"--dask_client_address={cluster.address}", *MODES[mode])
    assert code == 0, err
    got = objects(s3_client, bucket)
    assert sorted(got) == sorted(expected)
    assert got == expected
    assert {encryption for _, encryption in got.values()} == {"AES256"}
    assert any("/_dead_letters/" in key for key in got)  # the broken line, in both
    assert summary(out) == expected_counts
    assert "-> reconciled" in out


def test_a_worker_killed_mid_run_changes_nothing(s3_endpoint, s3_client, new_bucket, tmp_path):
    """SIGKILL of one of two workers while it runs tasks of the pipeline's middle: the
    run ends with exit 0, the same objects and the same reconciled counts."""
    write_ndjson(str(tmp_path / "many.ndjson"), generate(30_000, 2000, seed=13))
    expected, expected_counts = direct_run(s3_endpoint, s3_client, tmp_path, [], new_bucket)
    with dask_cluster(workers=2) as running:
        killed = _kill_a_worker_when_it_shuffles(running.address)
        bucket = new_bucket()
        code, out, err = forward(s3_endpoint, bucket, tmp_path, "--runner=dask",
                                 f"--dask_client_address={running.address}")
        assert killed.wait(timeout=1), "the run ended before a worker could be killed"
        assert code == 0, err
        assert sum(worker.poll() is not None for worker in running.workers) == 1
    assert objects(s3_client, bucket) == expected
    assert summary(out) == expected_counts
    assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in out


def _kill_a_worker_when_it_shuffles(address: str) -> threading.Event:
    """In a thread: SIGKILLs the first worker seen running a stage that reads a shuffle
    (past the read and parse: `pipeline.runners.dask_runner`'s "stage-" tasks); the event is
    set once it is killed."""
    killed = threading.Event()

    def watch():
        with distributed.Client(address, timeout=30) as client:
            while True:
                busy = [worker for worker, keys in client.processing().items()
                        if any("stage-" in str(key) for key in keys)]
                if busy:
                    break
                time.sleep(0.02)
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.set()

    threading.Thread(target=watch, daemon=True).start()
    return killed


def test_a_scheduler_that_cannot_be_reached_is_one_sentence_and_exit_1(
    s3_endpoint, bucket, inputs
):
    address = f"tcp://127.0.0.1:{free_port()}"
    code, out, err = forward(s3_endpoint, bucket, inputs, "--runner=dask",
                             f"--dask_client_address={address}", "--dask_connection_timeout=2")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"error: the Dask scheduler at {address} cannot be reached (OSError): start it, or "
        "check --dask_client_address."
    )
    assert "Traceback" not in err


def test_a_scheduler_gone_mid_run_is_one_sentence_and_exit_1(s3_endpoint, bucket, tmp_path):
    write_ndjson(str(tmp_path / "many.ndjson"), generate(20_000, 2000, seed=14))
    with dask_cluster(workers=2) as running:

        def kill_the_scheduler():
            with distributed.Client(running.address, timeout=30) as client:
                while not any("_run_fused" in str(key) for keys in client.processing().values()
                              for key in keys):
                    time.sleep(0.02)
            running.scheduler.kill()

        threading.Thread(target=kill_the_scheduler, daemon=True).start()
        code, out, err = forward(s3_endpoint, bucket, tmp_path, "--runner=dask",
                                 f"--dask_client_address={running.address}")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"error: the Dask scheduler at {running.address} went away during the run: nothing "
        "written so far is lost, and a rerun writes the same keys."
    )
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, sentence", [
    (["--input_subscription=projects/my-project/subscriptions/events"],
     "--runner=dask runs bounded input (--input) only: Dask has no streaming; forward live "
     "input on Prism (the default), Flink, Spark or Dataflow."),
    (["--input=/nowhere/*.ndjson", "--dask_partition_size=100"],
     "--dask_partition_size is not used by --runner=dask here: set --dask_npartitions "
     "instead."),
], ids=["live input", "partition size"])
def test_what_dask_does_not_run_is_refused_in_one_sentence(s3_endpoint, bucket, flags,
                                                            sentence):
    code, out, err = run_main([f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
                               "--runner=dask", *flags])
    assert code == 2
    assert err.strip() == f"error: {sentence}"
