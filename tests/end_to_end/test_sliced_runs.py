"""Sliced bounded runs write exactly what one unsliced run writes.

Small inputs, tiny slices (two hours), every batching mode, and the cases at a
slice boundary: sessions open across it (one running over several slices),
the same events on both sides of it, batches whose arrival lies in an earlier
or later slice than their neighbours in the file ("late" in file order), and a
bad record. The objects (forwarded files and dead letters) must be the same
bytes under the same keys. The spill directory is gone afterwards, after a
failed run too, and one left by a killed run is removed.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import pytest

from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import list_keys, run_main

SLICE_S = 7200
BOUNDARY_MS = 1_700_006_400_000  # 2023-11-15T00:00:00Z, a slice boundary
MODES = {
    "fixed": [],
    "sessions": ["--wait_for_complete_batch=true"],
    "per_event": ["--send_as_batch=false"],
}
ENGINES = {
    "DirectRunner": [],
    "DirectRunner-2-workers": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    "PrismRunner": ["--runner=PrismRunner"],
}


def batch(device: str, arrival_ms: int, event_ids: list[int], app: str = "Edge") -> dict:
    return {
        "events": [
            {"event_type": "custom_event",
             "data": {"event_id": event_id, "timestamp_unixtime_ms": arrival_ms - 1000 + i,
                      "event_name": "tap"}}
            for i, event_id in enumerate(event_ids)
        ],
        "application_info": {"application_name": app},
        "mp_deviceid": device,
        "timestamp_unixtime_ms": arrival_ms,
    }


def boundary_cases() -> tuple[list[dict], list[dict]]:
    """(batches for the start of the input, batches for its end) around BOUNDARY_MS."""
    minute = 60_000
    first, last = [], []
    # A session open across the boundary: 10 minutes before and after it.
    first.append(batch("across", BOUNDARY_MS - 10 * minute, [101, 102]))
    first.append(batch("across", BOUNDARY_MS + 10 * minute, [103]))
    # A session running over three slices: a batch every 25 minutes for 5 hours.
    for step in range(12):
        first.append(batch("chain", BOUNDARY_MS - 2 * 3_600_000 + step * 25 * minute, [200 + step]))
    # The same events a second before and a second after the boundary.
    same = batch("twice", BOUNDARY_MS - 1000, [301, 302])
    again = copy.deepcopy(same)
    again["timestamp_unixtime_ms"] = BOUNDARY_MS + 1000
    first.append(same)
    last.append(again)
    # Late in file order: arrived before the boundary, at the end of the last file;
    # and one arrived hours after it at the start of the first.
    last.append(batch("late", BOUNDARY_MS - 30 * minute, [401]))
    first.insert(0, batch("early", BOUNDARY_MS + 5 * 3_600_000, [501]))
    # A session whose gap ends exactly at a slice end: closed there, not carried.
    first.append(batch("exact", BOUNDARY_MS + 2 * 3_600_000 - 30 * minute, [601]))
    return first, last


@pytest.fixture
def sliced_input(tmp_path):
    """Generated batches over about 20 hours across midnight, the boundary cases, a bad
    record, in three files."""
    folder = tmp_path / "in"
    folder.mkdir()
    generated = list(generate(360, 12))
    first, last = boundary_cases()
    write_ndjson(str(folder / "a.ndjson"), iter(first + generated[:180]))
    write_ndjson(str(folder / "b.ndjson.gz"), iter(generated[180:]))
    with open(folder / "c.ndjson", "w") as out:
        for item in last:
            out.write(json.dumps(item) + "\n")
        out.write("{not json\n")
    return folder


def bucket_objects(client, bucket: str) -> dict[str, bytes]:
    """Every object but the bucket checks: forwarded files and dead letters."""
    return {
        key: client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in list_keys(client, bucket)
        if "Verification" not in key
    }


def run_into(s3_endpoint, s3_client, bucket: str, folder, *flags) -> dict[str, bytes]:
    s3_client.create_bucket(Bucket=bucket)
    code, out, err = run_main([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
        f"--input={folder}/*", "--use_compression=true", "--max_batches_per_file=5",
        "--store_data_in_folders_by_date=event_time", "--progress_every_s=0", *flags,
    ])
    assert code == 0, err
    assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in out
    return bucket_objects(s3_client, bucket)


@pytest.mark.parametrize("mode", list(MODES))
def test_sliced_run_writes_the_bytes_of_one_run(
    s3_endpoint, s3_client, sliced_input, tmp_path, mode
):
    whole = run_into(s3_endpoint, s3_client, f"whole-{mode}".replace("_", "-"), sliced_input,
                     "--arrival_slice_s=0", *MODES[mode])
    spill = tmp_path / "spill"
    sliced = run_into(s3_endpoint, s3_client, f"sliced-{mode}".replace("_", "-"), sliced_input,
                      f"--arrival_slice_s={SLICE_S}", f"--spill_dir={spill}", *MODES[mode])
    assert len(whole) > 40 and any("_dead_letters/" in key for key in whole)
    assert sliced.keys() == whole.keys()
    assert sliced == whole
    assert os.listdir(spill) == []


@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "DirectRunner"])
def test_sessions_across_slices_on_every_engine(
    s3_endpoint, s3_client, sliced_input, request, engine
):
    if engine == "PrismRunner":
        request.getfixturevalue("prism")
    flags = ["--wait_for_complete_batch=true", *ENGINES[engine]]
    name = engine.lower()
    whole = run_into(s3_endpoint, s3_client, f"whole-{name}", sliced_input,
                     "--arrival_slice_s=0", *flags)
    sliced = run_into(s3_endpoint, s3_client, f"sliced-{name}", sliced_input,
                      "--arrival_slice_s=21600", *flags)
    assert sliced == whole


def test_a_session_over_three_slices_comes_out_whole(s3_endpoint, s3_client, sliced_input):
    import gzip

    objects = run_into(s3_endpoint, s3_client, "chain", sliced_input,
                       f"--arrival_slice_s={SLICE_S}", "--wait_for_complete_batch=true")
    chains = [json.loads(line) for key, body in objects.items() if "_dead_letters/" not in key
              for line in gzip.decompress(body).splitlines()
              if json.loads(line).get("mp_deviceid") == "chain"]
    assert [[e["data"]["event_id"] for e in b["events"]] for b in chains] == [
        list(range(200, 212))
    ]


def test_spill_is_removed_when_the_run_fails_and_after_a_killed_run(
    s3_endpoint, s3_client, sliced_input, tmp_path
):
    spill = tmp_path / "spill"
    abandoned = spill / "mparticle-s3-spill-abandoned"  # its owner file locked by no one
    (abandoned / "1700006400").mkdir(parents=True)
    (abandoned / "1700006400" / "x.spill").write_bytes(b"left over")
    (abandoned / ".owner").touch()
    code, _, err = run_main([
        "--s3_bucket_name=no-such-bucket", f"--s3_endpoint_url={s3_endpoint}",
        f"--input={sliced_input}/*", "--skip_bucket_check=true", "--progress_every_s=0",
        f"--arrival_slice_s={SLICE_S}", f"--spill_dir={spill}",
    ])
    assert code == 1, err
    assert "NoSuchBucket" in err
    assert os.listdir(spill) == []


def test_a_spill_directory_a_running_job_owns_is_never_taken(
    s3_endpoint, s3_client, bucket, sliced_input, tmp_path
):
    """Another job's directory (its owner file locked by a process of its own, as a
    run on another host or container sharing the volume would hold it) stays; so does
    a directory being made, not yet locked; one unlocked, or unowned for longer than
    UNOWNED_GRACE_S, is removed."""
    from pipeline.sliced import OWNER_FILE, UNOWNED_GRACE_S

    spill = tmp_path / "spill"
    running, making, old = (spill / f"mparticle-s3-spill-{name}" for name in
                            ("running", "making", "old"))
    for folder in (running, making, old):
        (folder / "1700006400").mkdir(parents=True)
        (folder / "1700006400" / "x.spill").write_bytes(b"spilled")
    (running / OWNER_FILE).touch()
    os.utime(old, (time.time() - UNOWNED_GRACE_S - 60,) * 2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'r+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)",
         str(running / OWNER_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_main([
            f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
            f"--input={sliced_input}/*", "--progress_every_s=0",
            f"--arrival_slice_s={SLICE_S}", f"--spill_dir={spill}",
        ])
        assert code == 0, err
        assert sorted(os.listdir(spill)) == [making.name, running.name]
        assert (running / "1700006400" / "x.spill").read_bytes() == b"spilled"
    finally:
        holder.kill()
        holder.wait()


def test_a_slice_must_hold_whole_windows(s3_endpoint, sliced_input):
    code, _, err = run_main([
        "--s3_bucket_name=any", f"--s3_endpoint_url={s3_endpoint}", f"--input={sliced_input}/*",
        "--arrival_slice_s=1000", "--window_size_s=600",
    ])
    assert code == 2
    assert "--arrival_slice_s=1000 must be a multiple of --window_size_s=600" in err




def _sliced_environments(runner: str, flags: list[str]) -> dict[str, set[str]]:
    """The environments of a sliced run's graph on `runner`, by step path (each
    leaf step, under its top-level step and under the one below it)."""
    import apache_beam as beam

    from pipeline.build import build_sliced
    from pipeline.config import load_config
    from pipeline.runners import profile_of
    from transforms.machinery.shuffled import UNCOMPRESSED

    config, _ = load_config(["--s3_bucket_name=graph", "--input=in/*.ndjson", *flags])
    p = beam.Pipeline()
    build_sliced(p, config, UNCOMPRESSED, "spill", profile_of(runner))
    found: dict[str, set[str]] = {}
    for transform in p.to_runner_api().components.transforms.values():
        if transform.environment_id and not transform.subtransforms:
            path = transform.unique_name.split("/")
            for step in {path[0], "/".join(path[:2])}:
                found.setdefault(step, set()).add(transform.environment_id)
    return found


@pytest.mark.parametrize("mode", ["fixed", "sessions"])
def test_a_sliced_run_on_prism_reads_spills_and_writes_in_two_harnesses(mode):
    """Prism starts an SDK harness per environment: a sliced run reads its files in two
    parts, each as far as its spill in an environment of its own, and groups and
    writes each part's share of the shards and windows there too, so both cores
    work. The DirectRunner keeps one environment (its own workers share the bundles)."""
    prism = _sliced_environments("PrismRunner", MODES[mode])
    grouping = ["SpillGroupAndWrite/GroupShards{}"] if mode == "sessions" else []
    parts = []
    for part in range(2):
        steps = [f"{step}{part}" for step in ("ReadBatches", "ParseBatches", "ApplySettings",
                                              "StampArrival")]
        steps += [step.format(part) for step in ("SpillGroupAndWrite/SpillBatches{}",
                                                 *grouping, "SpillGroupAndWrite/WriteWindows{}")]
        [environment] = set().union(*(prism[step] for step in steps))
        parts.append(environment)
    assert len(set(parts)) == 2
    direct = _sliced_environments("DirectRunner", MODES[mode])
    assert "ReadBatches" in direct and len(set().union(*direct.values())) == 1
