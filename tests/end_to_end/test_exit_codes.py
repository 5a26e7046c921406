"""Exit codes the README documents, each from a real run: 1, 130, and workers that
end with their launcher. (0, 2, 3 and 4 are tested beside the checks that give them:
test_end_to_end, test_config, test_s3_faults.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import ROOT, list_keys, poll, run_main
from tests.fault_proxy import FaultProxy


@pytest.fixture(scope="module")
def long_input(tmp_path_factory) -> str:
    """Enough batches to keep a run busy for several seconds."""
    folder = tmp_path_factory.mktemp("long")
    for part in range(4):
        write_ndjson(str(folder / f"part-{part}.ndjson"),
                     generate(10_000, 2_000, seed=30 + part))
    return f"--input={folder}/*"


def start(s3_endpoint: str, bucket: str, long_input: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", f"--s3_bucket_name={bucket}",
         f"--s3_endpoint_url={s3_endpoint}", long_input, "--max_batches_per_file=1", *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def ended(process: subprocess.Popen, timeout: float) -> str:
    """The stderr of `process` once it ends; killed if it has not within `timeout`."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


def workers_of(process: subprocess.Popen) -> list[psutil.Process]:
    return [child for child in psutil.Process(process.pid).children(recursive=True)
            if child.name().startswith("python") and "sdk_worker_main" in " ".join(child.cmdline())]


def test_a_failed_run_exits_1_with_one_sentence(s3_endpoint, tmp_path):
    (tmp_path / "in.ndjson").write_text("".join(
        __import__("json").dumps(b) + "\n" for b in generate(5, 2)))
    code, out, err = run_main([
        "--s3_bucket_name=bucket-that-was-never-made", f"--s3_endpoint_url={s3_endpoint}",
        f"--input={tmp_path}/*", "--skip_bucket_check=true",
    ])
    assert code == 1 and out == ""
    [sentence] = [line for line in err.splitlines() if line.startswith("error:")]
    assert sentence.startswith("error: the run failed: ")
    assert "NoSuchBucket" in sentence


def test_ctrl_c_during_a_bounded_run_exits_130(s3_endpoint, s3_client, bucket, long_input):
    process = start(s3_endpoint, bucket, long_input)
    # Into the run: its first files are written (the bucket check's object is one).
    assert poll(lambda: len(list_keys(s3_client, bucket)) > 1 or process.poll() is not None,
                deadline_s=60, every_s=0.1)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    err = ended(process, timeout=60)
    assert process.returncode == 130, err[-3000:]
    assert "error: interrupted; nothing written so far is lost" in err


def test_ctrl_c_as_the_worker_processes_start_exits_130(
    s3_endpoint, bucket, long_input, tmp_path
):
    """Interrupted after the DirectRunner started its worker processes and before they
    connected, Beam waits forever for them to be told to stop (apache/beam#19674): the
    launcher exits without the runner once run.INTERRUPT_GRACE_S have passed, and
    removes its spill directory all the same."""
    from pipeline.run import INTERRUPT_GRACE_S

    spill = tmp_path / "spill"
    process = start(s3_endpoint, bucket, long_input, f"--spill_dir={spill}")
    deadline = time.monotonic() + 60
    while not workers_of(process) and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = workers_of(process)
    assert workers, "no worker process started"
    process.send_signal(signal.SIGINT)  # a worker imports Beam for a second or more first
    interrupted = time.monotonic()
    err = ended(process, timeout=INTERRUPT_GRACE_S + 30)
    assert process.returncode == 130, err[-3000:]
    assert err.count("error: interrupted; nothing written so far is lost") == 1, err[-3000:]
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "worker processes outlived the launcher"
    assert os.listdir(spill) == [], os.listdir(spill)
    print(f"\nexited {time.monotonic() - interrupted:.1f} s after Ctrl-C")


def test_workers_end_when_the_launcher_is_killed(s3_endpoint, s3_client, bucket, long_input):
    """Killed while its workers are retrying failing writes: they stop within seconds
    (their channel to the runner breaks), rather than retry for --s3_write_deadline_s."""
    with FaultProxy(s3_endpoint, fault_rate=0.0, faults=("500",)) as proxy:
        process = start(proxy.endpoint, bucket, long_input, "--direct_num_workers=2",
                        "--direct_running_mode=multi_processing")
        deadline = time.monotonic() + 120
        while len(list_keys(s3_client, bucket)) < 50 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = workers_of(process)
        assert len(workers) == 2, [" ".join(w.cmdline()) for w in workers]
        proxy.fault_rate = 1.0  # S3 fails from now on: the workers retry
        failed = sum(proxy.injected.values())
        assert poll(lambda: sum(proxy.injected.values()) >= failed + 4, deadline_s=30,
                    every_s=0.05), dict(proxy.injected)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        killed = time.monotonic()
        _, alive = psutil.wait_procs(workers, timeout=3)
        assert not alive, f"workers still running {time.monotonic() - killed:.1f} s later"
    print(f"\nworkers gone {time.monotonic() - killed:.2f} s after the launcher was killed")


def test_counts_that_do_not_reconcile_exit_1(s3_endpoint, bucket, tmp_path, monkeypatch):
    """A runner that loses one counter update (Prism once did, for files counted after
    their element): the run wrote everything, but its summary cannot prove it."""
    from pipeline import run

    write_ndjson(str(tmp_path / "in.ndjson"), generate(50, 5))
    real_counters_of = run.counters_of

    def one_forwarded_event_lost(result):
        counters = real_counters_of(result)
        counters["events_forwarded"] -= 1
        return counters

    monkeypatch.setattr(run, "counters_of", one_forwarded_event_lost)
    code, out, err = run_main([f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
                               f"--input={tmp_path}/*"])
    assert code == 1, err
    assert "events: read = forwarded + filtered out + dead-lettered -> NOT reconciled: +1 " \
           "events unaccounted" in out
    assert "records: read = parsed + dead-lettered -> reconciled" in out
