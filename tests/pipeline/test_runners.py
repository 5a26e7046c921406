"""Runner knowledge (`pipeline/runners/`): what each runner's profile decides, kept in
that one room; and against the real engines: a portable run lasts as long as its
job, however short Beam's job-server timeout; a live one on Prism fires each timer
once."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.transforms import userstate

from pipeline.runners import make_runner, profile_for, profile_of, worker_environment
from pipeline.runners.prism import SdkHarnessHint
from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import list_keys, run_main
from tests.pipelines import Replayed
from transforms.values import LiveSessions, RawRecord

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, expected", [
    ("DirectRunner", dict(reads=1, pubsub_readers=0, sessions=LiveSessions(by_timer=False),
                          session_processes=0, late_files_batched=False,
                          drains_on_stop=False, slices=True, reports_progress=True)),
    ("PrismRunner", dict(reads=2, pubsub_readers=1, sessions=LiveSessions(shards=4096),
                         session_processes=1, late_files_batched=True, drains_on_stop=True,
                         slices=True, reports_progress=True)),
    ("FlinkRunner", dict(reads=1, pubsub_readers=2, sessions=LiveSessions(),
                         session_processes=0, late_files_batched=True, drains_on_stop=False,
                         slices=False, reports_progress=False)),
    ("DataflowRunner", dict(reads=1, pubsub_readers=0, sessions=LiveSessions(),
                            session_processes=0, late_files_batched=True,
                            drains_on_stop=False, slices=False, reports_progress=False)),
    ("DaskRunner", dict(reads=1, slices=False, reports_progress=True)),
])
def test_each_runners_profile_says_what_a_run_does_differently_on_it(name, expected):
    profile = profile_of(name)
    assert {field: getattr(profile, field) for field in expected} == expected
    if name == "PrismRunner":  # steps apart, in worker processes of their own
        placed = profile.in_process(beam.Map(str), "live sessions")
        assert isinstance(placed.get_resource_hints()[SdkHarnessHint.urn], bytes)
        assert not profile.in_process(beam.Map(str), "").get_resource_hints()
    else:
        assert not profile.in_process(beam.Map(str), "live sessions").get_resource_hints()


def test_a_profile_takes_the_runs_own_numbers_and_a_dask_schedulers_address():
    prism = profile_of("PrismRunner", pubsub_readers=3, session_processes=2)
    assert (prism.reads, prism.pubsub_readers, prism.session_processes) == (3, 1, 2)
    assert profile_of("FlinkRunner", pubsub_readers=5).pubsub_readers == 5
    assert not profile_for(PipelineOptions([
        "--runner=dask", "--dask_client_address=tcp://127.0.0.1:1"])).reports_progress
    assert profile_for(PipelineOptions(["--runner=dask"])).reports_progress


def test_no_transform_names_a_runner_or_where_it_runs():
    """The transforms are told what differs between runners (as values the runner's
    profile decides), never which runner runs them."""
    named = {}
    for path in sorted((ROOT / "transforms").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found = re.findall(r"Prism|Flink|Spark|Dask|DirectRunner|Dataflow|FnApiRunner|"
                               r"[Hh]arness", line)
            if found:
                named[f"{path.relative_to(ROOT)}:{number}"] = found
    assert named == {}


def test_importing_the_transforms_registers_nothing():
    """Coders and resource hints are registered by the code that builds a graph, not
    by importing a module (here, every module of transforms/ and pipeline/runners/)."""
    checked = subprocess.run([sys.executable, "-c", """if True:
        import pkgutil, importlib
        import transforms, pipeline.runners
        from apache_beam.coders import registry
        from apache_beam.transforms.resources import ResourceHint
        for package in (transforms, pipeline.runners):
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                if "dask" not in module.name and "worker_site" not in module.name:
                    importlib.import_module(module.name)
        from transforms.machinery.shuffled import ShuffledBatch
        print(ShuffledBatch in registry._coders, "sdk_harness" in ResourceHint._name_to_known_hints)
        """], capture_output=True, text=True, check=True, cwd=ROOT)
    assert checked.stdout.split() == ["False", "False"]


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
    asked = []
    options = PipelineOptions(flags)
    make_runner(options, lambda: asked.append(input_bytes) or input_bytes)
    direct = options.view_as(DirectOptions)
    return direct.direct_num_workers, direct.direct_running_mode, asked


def test_a_large_bounded_input_gets_a_worker_process_per_core(monkeypatch):
    from pipeline.runners.direct import WORKERS_FROM_BYTES

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


class _SlowTimerPerKey(beam.DoFn):
    """Sets an event-time timer half a second after each element; its firing takes a
    quarter of a second (as a large session's merge can) and writes the key to a file
    of its own, so that each firing is seen once, however the runner runs it."""

    FIRE = userstate.TimerSpec("fire", userstate.TimeDomain.WATERMARK)

    def __init__(self, fired_dir: str):
        self._fired_dir = fired_dir

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                fire=beam.DoFn.TimerParam(FIRE)):
        fire.set(timestamp + 0.5)
        return iter(())

    @userstate.on_timer(FIRE)
    def fired(self, key=beam.DoFn.KeyParam):
        time.sleep(0.25)
        Path(self._fired_dir, uuid.uuid4().hex).write_text(key)
        return iter(())


def test_a_live_prism_run_fires_each_timer_once_however_slow(tmp_path, prism):
    """Prism 2.77 splits a bundle that makes no progress between two progress requests,
    and splits one that holds timers wrongly (apache/beam#35771): their timers fire
    again, or never. A live run on Prism asks it for no splits
    (`pipeline.runners.prism.configure`); without that, 7 to 9 of
    these 30 keys fired twice. A stream of keys, in real time from an unbounded source,
    each with a slow timer: each fires once."""
    records = [RawRecord(f"k{n}", b"{}", publish_time_ms=1_700_000_000_000 + n * 50)
               for n in range(30)]
    options = PipelineOptions(["--runner=PrismRunner"])
    options.view_as(StandardOptions).streaming = True
    runner = make_runner(options)
    with worker_environment(), beam.Pipeline(runner=runner, options=options) as p:
        _ = (p | beam.io.Read(Replayed(records, speedup=1, tail_s=2))
             | beam.Map(lambda record: (record.source, 1))
             | beam.ParDo(_SlowTimerPerKey(str(tmp_path))))
    fired = collections.Counter(path.read_text() for path in tmp_path.iterdir())
    assert fired == collections.Counter(record.source for record in records)


def _malloc_arenas_of_worker(_):
    return os.environ.get("MALLOC_ARENA_MAX"), os.getpid()


def test_prisms_worker_process_keeps_few_malloc_arenas_unless_told_otherwise(
    tmp_path, prism, monkeypatch
):
    """glibc's arenas, one per thread that allocates at once, kept what an SDK harness
    freed through a long live run (`runners.processes.WORKER_MALLOC_ARENAS`): the worker process a
    Prism run starts gets MALLOC_ARENA_MAX, and a value the user set is theirs."""
    from pipeline.runners.processes import WORKER_MALLOC_ARENAS

    def arenas_seen() -> set:
        options = PipelineOptions(["--runner=PrismRunner"])
        runner = make_runner(options)
        out = tmp_path / uuid.uuid4().hex
        with worker_environment(), beam.Pipeline(runner=runner, options=options) as p:
            _ = (p | beam.Create([0]) | beam.Map(_malloc_arenas_of_worker)
                 | beam.Map(json.dumps) | beam.io.WriteToText(str(out)))
        seen = {tuple(json.loads(line)) for path in tmp_path.glob(out.name + "*")
                for line in path.read_text().splitlines()}
        assert all(pid != os.getpid() for _, pid in seen)  # a worker process, not this one
        return {arenas for arenas, _ in seen}

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert arenas_seen() == {str(WORKER_MALLOC_ARENAS)}
    assert "MALLOC_ARENA_MAX" not in os.environ  # restored after the run
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert arenas_seen() == {"4"}
