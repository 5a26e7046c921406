"""`--runner=dask`: bounded runs on a Dask cluster (`dask.distributed`).

`DaskRunner` here is a subclass of Beam's (`apache_beam.runners.dask`), which as of
Beam 2.77 cannot run this pipeline. It keeps Beam's options, its transform overrides
(Create, Reshuffle, GroupByKey as ReifyWindows + GroupByKeyOnly + GroupAlsoByWindow,
Flatten) and its result's waiting, and replaces the translation to Dask bags. Each fix,
against the Beam behaviour it corrects, so that it can go when Beam fixes it:

1. One bag per output (Beam: a ParDo's main and tagged outputs are one bag, so the
   dead letters of a step reach the next step as if they were batches).
2. Every leaf is computed (Beam: only the last transform's bag, so of the forwarder's
   two sinks, files and dead letters, one would never be written).
3. Elements stay WindowedValues between steps (Beam: main outputs lose their
   timestamp and window and are re-wrapped at timestamp 0 in the global window).
4. Every ParDo runs, WindowInto and GroupAlsoByWindow included, through Beam's own
   `DoFnRunner` (Beam: those two are looked up by exact class, miss, and do nothing).
5. GroupByKeyOnly groups by the key's encoded bytes (Beam's rule) in a task shuffle,
   not by Python equality in the scheduler's default shuffle.
6. Counters: each task runs its DoFns under a metrics container and returns the
   counters with its output; the result sums those of the tasks that completed, once
   each (a task run again after a worker died counts once), so `result.metrics()`
   answers (Beam: NotImplementedError, and no container on the workers).
7. Work is spread (Beam: Reshuffle is a no-op, and a Create of one glob is one
   partition, so the whole job is one task). A Reshuffle is a materialization point:
   its input is computed first and dealt out one element a partition (up to
   MAX_DEALT_PARTITIONS); the ParDo right after it (reading the files it dealt) has
   each of its output partitions split so that there are at least as many as the
   cluster's partition count: one large input file is shared by every worker.
8. A Read, a side input, or any primitive it does not know is refused with its name
   (Beam: a silent no-op).

`tests/pipeline/test_dask_runner.py::test_the_beam_internals_this_runner_relies_on_are_there`
fails if a Beam upgrade moves what this module imports or overrides.

Without `--dask_client_address`, a local cluster of worker processes, one per core,
each with one thread and an equal share of the machine's memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import Any, Iterable

import apache_beam as beam
import dask
import dask.bag as db
from apache_beam import pvalue
from apache_beam.coders import registry
from apache_beam.internal import pickler
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import DoFnRunner, DoFnState, Receiver
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask.overrides import (
    _Create,
    _Flatten,
    _GroupByKeyOnly,
    _Reshuffle,
    dask_overrides,
)
from apache_beam.runners.direct.direct_metrics import DirectMetrics
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.window import GlobalWindow
from apache_beam.typehints import trivial_inference
from apache_beam.utils import counters
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from pipeline.errors import ConfigError, EngineGone

_LOG = logging.getLogger(__name__)
DaskOptions = beam_dask.DaskOptions
# Partitions per worker thread where the flags do not say (--dask_npartitions).
PARTITIONS_PER_THREAD = 4
# A Reshuffle's elements (the input files) each get a partition, up to this many.
MAX_DEALT_PARTITIONS = 10_000


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner with the fixes the module's docstring lists."""

    def run_pipeline(self, pipeline, options: PipelineOptions):
        client, cluster = _connect(options.view_as(DaskOptions))
        try:
            pipeline.replace_all(dask_overrides())
            nthreads = client.nthreads()
            threads = sum(nthreads.values()) or 1
            partitions = options.view_as(DaskOptions).npartitions or (
                PARTITIONS_PER_THREAD * threads)
            _LOG.info("Dask cluster at %s: %d workers, %d threads; %d partitions",
                      client.scheduler.address, len(nthreads), threads, partitions)
            translation = _Translation(client, partitions)
            pipeline.visit(translation)
            futures = client.compute(translation.to_compute(), optimize_graph=True)
        except BaseException:
            _close(client, cluster)
            raise
        return DaskResult(client, cluster, futures, getattr(options.view_as(DaskOptions),
                                                            "address", None))


def _connect(dask_options: DaskOptions):
    """A client of the scheduler at --dask_client_address, or of a local cluster."""
    import distributed

    # Dask configures its loggers when it is first imported. As for Beam's
    # (`pipeline.logs`), a failed run is reported once, by the entry point; the
    # workers' logs: `runners.worker_environment`.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for name in ("distributed", "distributed.client"):  # Dask sets both
            logging.getLogger(name).setLevel(logging.CRITICAL)
    address = dask_options.address
    if address:
        timeout = dask_options.timeout if isinstance(dask_options.timeout, int) else 10
        try:
            return distributed.Client(address, timeout=timeout,
                                      name=dask_options.name or "mparticle-s3-forwarder"), None
        except (OSError, TimeoutError) as err:
            raise EngineGone(
                f"the Dask scheduler at {address} cannot be reached ({type(err).__name__}): "
                "start it, or check --dask_client_address."
            ) from err
    workers = os.cpu_count() or 1
    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
    )
    return distributed.Client(cluster), cluster


def _close(client, cluster) -> None:
    client.close()
    if cluster is not None:
        cluster.close()


class DaskResult(PipelineResult):
    """A running Dask job: waits for every computed collection and sums the counters of
    the tasks that completed (`result.metrics()`)."""

    def __init__(self, client, cluster, futures, address: str | None):
        super().__init__(PipelineState.RUNNING)
        self._client = client
        self._cluster = cluster
        self._futures = futures
        self._address = address or "the local cluster"
        self._results = DirectMetrics()

    def wait_until_finish(self, duration=None) -> str:
        if self._state != PipelineState.RUNNING:
            return self._state
        import distributed

        try:
            results = self._client.gather(self._futures)
            for updates in _all_updates(results):
                self._results.commit_logical(None, updates)
                self._results.commit_physical(None, updates)
            self._state = PipelineState.DONE
        except distributed.client.FutureCancelledError as err:
            self._state = PipelineState.FAILED
            raise EngineGone(
                f"the Dask scheduler at {self._address} went away during the run: "
                "nothing written so far is lost, and a rerun writes the same keys."
            ) from err
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            _close(self._client, self._cluster)
        return self._state

    def cancel(self) -> str:
        self._client.cancel(self._futures)
        _close(self._client, self._cluster)
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self) -> DirectMetrics:
        return self._results


def _all_updates(results: Iterable) -> Iterable:
    for result in results:
        for item in result:
            if isinstance(item, _Counted):
                yield item.updates


class _Counted:
    """One task's metric updates, among what the run computes."""

    def __init__(self, updates):
        self.updates = updates


class _Translation(PipelineVisitor):
    """The pipeline → Dask bags of WindowedValues, one per PCollection."""

    def __init__(self, client, partitions: int):
        self._client = client
        self._partitions = partitions
        self._computed_first: list[db.Bag] = []  # held: the run reuses what they computed
        self._bags: dict[pvalue.PCollection, db.Bag] = {}
        self._consumed: set[pvalue.PCollection] = set()
        self._counters: list[db.Bag] = []
        # A Reshuffle's output → how many pieces each output partition of the ParDo
        # that reads it is split into.
        self._after_reshuffle: dict[pvalue.PCollection, int] = {}

    def to_compute(self) -> list[db.Bag]:
        """Every leaf (a PCollection no step reads), and every step's counters."""
        leaves = [bag.map_partitions(_nothing) for pcoll, bag in self._bags.items()
                  if pcoll not in self._consumed]
        return leaves + self._counters

    def visit_transform(self, node) -> None:
        transform = node.transform
        inputs = [each for each in node.inputs if isinstance(each, pvalue.PCollection)]
        self._consumed.update(inputs)
        if node.side_inputs:
            raise NotImplementedError(
                f"--runner=dask does not run side inputs (step {node.full_label!r}).")
        if isinstance(transform, _Create):
            self._set(node, self._created(transform.values))
        elif isinstance(transform, beam.ParDo):
            self._par_do(node, self._bags[inputs[0]])
        elif isinstance(transform, _GroupByKeyOnly):
            self._set(node, _grouped(self._bags[inputs[0]], inputs[0], self._partitions))
        elif isinstance(transform, _Flatten):
            bags = [self._bags[each] for each in inputs]
            self._set(node, db.concat(bags) if bags else self._created([]))
        elif isinstance(transform, _Reshuffle):
            self._reshuffle(node, self._bags[inputs[0]])
        else:
            raise NotImplementedError(
                f"--runner=dask does not run {type(transform).__name__} "
                f"(step {node.full_label!r}).")

    def _set(self, node, bag: db.Bag) -> None:
        (output,) = node.outputs.values()
        self._bags[output] = bag

    def _reshuffle(self, node, bag: db.Bag) -> None:
        bag = self._client.persist(bag)
        self._computed_first.append(bag)
        count = sum(self._client.compute(bag.map_partitions(_length)).result())
        dealt = max(1, min(count, MAX_DEALT_PARTITIONS))
        if dealt != bag.npartitions:
            bag = bag.repartition(npartitions=dealt)
        self._set(node, bag)
        (output,) = node.outputs.values()
        self._after_reshuffle[output] = -(-self._partitions // dealt)

    def _created(self, values: Iterable) -> db.Bag:
        items = [WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),)) for value in values]
        count = max(1, min(len(items), self._partitions))
        parts = [items[index::count] for index in range(count)]
        name = "create-" + dask.base.tokenize(pickler.dumps(items))
        return db.Bag({(name, index): part for index, part in enumerate(parts)}, name, count)

    def _par_do(self, node, bag: db.Bag) -> None:
        transform = node.transform
        args, kwargs = transform.raw_side_inputs
        main_input = node.inputs[0]
        payload = pickler.dumps((transform.fn, list(args), kwargs, main_input.windowing))
        step = node.full_label
        tags = list(node.outputs)
        digest = hashlib.sha256(payload).hexdigest()
        shared = dask.delayed(payload, pure=True, name=f"dofn-{digest}")
        ran = bag.map_partitions(_run_bundle, shared, digest, step, tags)
        # Fix 7: a read of what a Reshuffle spread is spread again, so that one
        # large file's records are shared by every worker.
        pieces = self._after_reshuffle.get(main_input, 1)
        for tag, output in node.outputs.items():
            out = ran.map_partitions(_output_of, tag)
            if pieces > 1:
                out = out.repartition(npartitions=out.npartitions * pieces)
            self._bags[output] = out
        self._counters.append(ran.map_partitions(_counters_of))


def _length(part: Iterable) -> list[int]:
    return [sum(1 for _ in part)]


def _nothing(part: Iterable) -> list:
    for _ in part:
        pass
    return []


def _output_of(ran: tuple[dict, Any], tag) -> list:
    return ran[0][tag]


def _counters_of(ran: tuple[dict, Any]) -> list:
    return [_Counted(ran[1])]


class _ListReceiver(Receiver):
    def __init__(self, into: list):
        self._into = into

    def receive(self, windowed_value: WindowedValue) -> None:
        self._into.append(windowed_value)


# The DoFns a worker thread has set up, by the digest of their pickled form: Beam calls
# `setup` once per DoFn instance, and bundles reuse it (Beam: one instance per bundle).
_SET_UP = threading.local()


def _dofn_of(payload: bytes, digest: str) -> tuple:
    cache = getattr(_SET_UP, "dofns", None)
    if cache is None:
        cache = _SET_UP.dofns = {}
    if digest not in cache:
        cache[digest] = [pickler.loads(payload), False]
    return cache[digest]


def _run_bundle(items: Iterable[WindowedValue], payload: bytes, digest: str, step: str,
                tags: list) -> tuple[dict, Any]:
    """One partition through one ParDo with Beam's DoFnRunner: ({tag: [WindowedValue]},
    the counters it incremented)."""
    entry = _dofn_of(payload, digest)
    fn, args, kwargs, windowing = entry[0]
    outputs = {tag: [] for tag in tags}
    receivers = {tag: _ListReceiver(outputs[tag]) for tag in tags}
    container = MetricsContainer(step)
    sampler = statesampler.StateSampler(step, counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(step, "process", metrics_container=container):
            runner = DoFnRunner(fn, args, kwargs, [], windowing, tagged_receivers=receivers,
                                step_name=step, state=DoFnState(counters.CounterFactory()))
            if not entry[1]:
                runner.setup()
                entry[1] = True
            runner.start()
            for item in items:
                runner.process(item)
            runner.finish()
    finally:
        statesampler.set_current_tracker(None)
    return outputs, container.get_cumulative()


def _grouped(bag: db.Bag, pcoll: pvalue.PCollection, partitions: int) -> db.Bag:
    """GroupByKeyOnly: (key, WindowedValue) → (key, [WindowedValue]) in the global window,
    grouped by the key's encoded bytes (a deterministic coder, as Beam requires)."""
    key_type, _ = trivial_inference.key_value_types(pcoll.element_type)
    coder = registry.get_coder(key_type).as_deterministic_coder(pcoll.producer.full_label)
    keyed = bag.map(_encoded_key, coder)
    return keyed.groupby(_first, shuffle="tasks", npartitions=partitions).map(_as_group)


def _encoded_key(item: WindowedValue, coder) -> tuple[bytes, Any]:
    return coder.encode(item.value[0]), item.value


def _first(pair: tuple) -> Any:
    return pair[0]


def _as_group(group: tuple[bytes, list]) -> WindowedValue:
    _, pairs = group
    key = pairs[0][1][0]
    return WindowedValue((key, [value for _, (_, value) in pairs]), MIN_TIMESTAMP,
                         (GlobalWindow(),))


def refuse_live() -> None:
    raise ConfigError(
        "--runner=dask runs bounded input (--input) only: Dask has no streaming; forward "
        "live input on Prism (the default), Flink, Spark or Dataflow."
    )
