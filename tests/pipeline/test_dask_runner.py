"""`pipeline.runners.dask_runner`: each fix to Beam's DaskRunner, on a real scheduler and two
worker processes; and the Beam internals it relies on, so that a Beam upgrade that
moves them fails here first."""

from __future__ import annotations

import inspect
import os
import pickle
import uuid

import apache_beam as beam
import pytest
from apache_beam import pvalue
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window

from pipeline.errors import ConfigError
from pipeline.runners import dask_runner
from pipeline.tools.local_services import dask_cluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster():
    with dask_cluster(workers=2) as running:
        yield running


def test_the_beam_internals_this_runner_relies_on_are_there():
    from apache_beam.runners.common import DoFnRunner, DoFnState
    from apache_beam.runners.dask import dask_runner as beam_dask
    from apache_beam.runners.dask import overrides
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils import counters

    # Beam's overrides, which this runner keeps, and what they replace.
    replaced = {type(override).__name__ for override in overrides.dask_overrides()}
    assert replaced == {"CreateOverride", "ReshuffleOverride", "ReadOverride",
                        "GroupByKeyOverride", "FlattenOverride"}
    assert [field for field in overrides._Create.__dataclass_fields__] == ["values"]
    # GroupByKey becomes ReifyWindows (a ParDo), GroupByKeyOnly, GroupAlsoByWindow (a ParDo).
    grouped = beam.Pipeline() | beam.Create([("k", 1)]) | overrides._GroupByKey()
    steps = [part.transform for part in grouped.producer.parent.parts]
    assert [type(step) for step in steps] == [
        beam.ParDo, overrides._GroupByKeyOnly, overrides._GroupAlsoByWindow]
    assert issubclass(overrides._GroupAlsoByWindow, beam.ParDo)
    assert issubclass(beam.WindowInto, beam.ParDo)
    # What the runner calls of Beam's.
    DoFnRunner(beam.Map(len).fn, [], {}, [], beam.Windowing(window.GlobalWindows()),
               tagged_receivers={None: None}, step_name="step",
               state=DoFnState(counters.CounterFactory()))
    assert callable(statesampler.set_current_tracker)
    assert issubclass(dask_runner.DaskRunner, beam_dask.DaskRunner)
    parsed = PipelineOptions(["--dask_client_address=tcp://h:1", "--dask_npartitions=3",
                              "--dask_connection_timeout=4"]).view_as(beam_dask.DaskOptions)
    assert (parsed.address, parsed.npartitions, parsed.timeout) == ("tcp://h:1", 3, 4)


def test_beams_own_dask_runner_still_needs_these_fixes():
    """When this fails, Beam fixed its runner: drop the fixes it made unneeded."""
    from apache_beam.runners.dask import transform_evaluator

    assert transform_evaluator.TRANSLATIONS.get(beam.WindowInto) is None  # fix 4
    source = inspect.getsource(beam_dask_runner_module())
    assert "list(dask_visitor.bags.values())[-1]" in source  # fix 2
    assert "raise NotImplementedError('collecting metrics" in source  # fix 6


def beam_dask_runner_module():
    from apache_beam.runners.dask import dask_runner as beam_dask

    return beam_dask


class _Tagged(beam.DoFn):
    """Even numbers on the main output, odd ones tagged; counts both."""

    def process(self, number, timestamp=beam.DoFn.TimestampParam):
        if number % 2:
            Metrics.counter("test", "odd").inc()
            yield pvalue.TaggedOutput("odd", (number, timestamp.micros))
        else:
            Metrics.counter("test", "even").inc()
            yield window.TimestampedValue(number, number * 10)


def _where(element, timestamp=beam.DoFn.TimestampParam, w=beam.DoFn.WindowParam):
    return element, timestamp.micros // 1_000_000, (w.start.micros // 1_000_000,
                                                    w.end.micros // 1_000_000)


def run(cluster, build, folder) -> tuple[dict, object]:
    """Runs `build(pipeline)` → {label: PCollection} on the cluster; returns what each
    collected (a list per label, read back from files the workers wrote in `folder`)
    and the result."""
    options = PipelineOptions([f"--dask_client_address={cluster.address}"])
    pipeline = beam.Pipeline(runner=dask_runner.DaskRunner(), options=options)
    for label, pcoll in build(pipeline).items():
        pcoll | f"Collect{label}" >> beam.Map(_publish, str(folder / label))
    result = pipeline.run()
    result.wait_until_finish()
    collected = {}
    for label in os.listdir(folder):
        collected[label] = [pickle.loads((folder / label / name).read_bytes())
                            for name in os.listdir(folder / label)]
    return collected, result


def _publish(element, folder: str) -> None:
    """Keeps what a step saw in a file of its own (each worker is a process)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, uuid.uuid4().hex), "wb") as out:
        pickle.dump(element, out)


def test_tagged_outputs_timestamps_windows_groups_and_counters(cluster, tmp_path):
    def build(pipeline):
        tagged = (pipeline | beam.Create(range(10))
                  | beam.ParDo(_Tagged()).with_outputs("odd", main="even"))
        windowed = (tagged.even | beam.WindowInto(window.FixedWindows(30))
                    | beam.Map(lambda n: (n % 3, n)) | beam.GroupByKey()
                    | beam.MapTuple(lambda key, numbers: (key, sorted(numbers))))
        return {"odd": tagged.odd, "even": tagged.even | "WhereEven" >> beam.Map(_where),
                "groups": windowed | "WhereGroups" >> beam.Map(_where)}

    collected, result = run(cluster, build, tmp_path)
    # Fix 1: one bag per output.
    assert sorted(number for number, _ in collected["odd"]) == [1, 3, 5, 7, 9]
    # Fix 3: the timestamps a step gives are those the next step sees (the odd ones
    # keep Create's, the minimum timestamp).
    everything = window.GlobalWindow()
    assert sorted(collected["even"]) == [
        (n, n * 10, (everything.start.micros // 1_000_000, everything.end.micros // 1_000_000))
        for n in (0, 2, 4, 6, 8)]
    assert {micros for _, micros in collected["odd"]} == {-9223372036854775000}
    # Fix 4: WindowInto assigns windows and the GroupByKey groups per window (end − 1 ms).
    assert sorted(collected["groups"]) == [
        ((0, [0]), 29, (0, 30)), ((0, [6]), 89, (60, 90)), ((1, [4]), 59, (30, 60)),
        ((2, [2]), 29, (0, 30)), ((2, [8]), 89, (60, 90)),
    ]
    # Fix 6: the counters of every task, once each.
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace("test"))[
                    "counters"]}
    assert counters == {"odd": 5, "even": 5}


def test_the_records_of_one_file_are_shared_by_both_workers(cluster, tmp_path):
    """Fix 7: one input (one element before a Reshuffle) and its read spread over every
    worker."""
    path = tmp_path / "one.txt"
    path.write_text("".join(f"{n}\n" for n in range(2000)))

    def build(pipeline):
        lines = (pipeline | beam.Create([str(path)]) | beam.Reshuffle()
                 | beam.FlatMap(lambda name: open(name).read().split()))
        return {"pids": lines | beam.Map(lambda line: (os.getpid(), line))}

    collected, _ = run(cluster, build, tmp_path / "out")
    assert sorted(int(line) for _, line in collected["pids"]) == list(range(2000))
    assert len({pid for pid, _ in collected["pids"]}) == 2


def test_a_side_input_is_refused_by_name(cluster, tmp_path):
    def build(pipeline):
        numbers = pipeline | "Numbers" >> beam.Create([1, 2])
        return {"sums": numbers | "AddAll" >> beam.Map(
            lambda n, all_: n + sum(all_), beam.pvalue.AsList(numbers))}

    with pytest.raises(NotImplementedError, match="side inputs.*AddAll"):
        run(cluster, build, tmp_path)


def _sizes(group):
    key, values = group
    return key, len(list(values))


def test_the_same_steps_after_two_groupings_stay_two_stages(cluster, tmp_path):
    """Two GroupByKeys, each followed by the same DoFns (the same arguments too): each
    stage reads its own shuffle (they were once one task name)."""
    options = PipelineOptions([f"--dask_client_address={cluster.address}"])
    pipeline = beam.Pipeline(runner=dask_runner.DaskRunner(), options=options)
    for name, count in (("few", 3), ("many", 7)):
        (pipeline | f"Create{name}" >> beam.Create([("k", n) for n in range(count)])
         | f"Group{name}" >> beam.GroupByKey()
         | f"Sizes{name}" >> beam.Map(_sizes)
         | f"Keep{name}" >> beam.Map(_publish, str(tmp_path / "sizes")))
    pipeline.run().wait_until_finish()
    kept = [pickle.loads((tmp_path / "sizes" / each).read_bytes())
            for each in os.listdir(tmp_path / "sizes")]
    assert sorted(kept) == [("k", 3), ("k", 7)]


def test_each_local_worker_gets_the_memory_dask_worker_memory_names():
    """Without --dask_client_address the runner starts a local cluster: a worker per
    core, each with --dask_worker_memory (a size Dask reads); one it cannot read is
    refused at start in one sentence."""
    from apache_beam.runners.dask.dask_runner import DaskOptions

    options = PipelineOptions(["--dask_worker_memory=300MiB"])
    dask_runner.check_options(options)
    memory = options.view_as(dask_runner.LocalClusterOptions).dask_worker_memory
    client, cluster = dask_runner._connect(options.view_as(DaskOptions), memory)  # noqa: SLF001
    try:
        limits = [worker["memory_limit"]
                  for worker in client.scheduler_info()["workers"].values()]
    finally:
        client.close()
        cluster.close()
    assert limits == [300 * 2**20] * (os.cpu_count() or 1)
    with pytest.raises(ConfigError, match="--dask_worker_memory must be a size"):
        dask_runner.check_options(PipelineOptions(["--dask_worker_memory=lots"]))
