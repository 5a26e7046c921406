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
5. GroupByKeyOnly groups by the key's encoded bytes (Beam's rule), and what crosses
   its shuffle is encoded by the GroupByKey's coders (Beam: Python objects, grouped by
   Python equality, held in memory as objects).
6. Counters: each task runs its DoFns under a metrics container and returns the
   counters with its output; the result sums those of the tasks that completed, once
   each (a task run again after a worker died counts once), so `result.metrics()`
   answers (Beam: NotImplementedError, and no container on the workers). Counters are
   kept per stage (below), under the name of its first step.
7. Work is spread (Beam: Reshuffle is a no-op, and a Create of one glob is one
   partition, so the whole job is one task). A Reshuffle is a materialization point:
   its input is computed first and dealt out one element a partition (up to
   MAX_DEALT_PARTITIONS); the ParDo right after it (reading the files it dealt) has
   each of its output partitions split so that there are at least as many as the
   cluster's partition count: one large input file is shared by every worker.
8. A Read, a side input, or any primitive it does not know is refused with its name
   (Beam: a silent no-op), and so is --dask_partition_size (Beam's Create sizing).

Beyond fixes, as Beam's own runners do: ParDos are fused into stages (one task per
partition; each step's output goes to the next in memory), a stage writes the
shuffle of the GroupByKey it feeds already encoded and split (`_ShuffleWriter`), and
the stage after reads its part of it and groups it first.

`tests/pipeline/test_dask_runner.py::test_the_beam_internals_this_runner_relies_on_are_there`
fails if a Beam upgrade moves what this module imports or overrides.

Without `--dask_client_address`, a local cluster of worker processes, one per core,
each with one thread and `--dask_worker_memory` (default: an equal share of the
machine's memory).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import zlib
from typing import Any, Iterable

import apache_beam as beam
import dask
import dask.bag as db
from apache_beam import pvalue
from apache_beam.coders import registry
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
from apache_beam.coders.coders import WindowedValueCoder
from apache_beam.internal import pickler
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
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
from dask.highlevelgraph import HighLevelGraph

from pipeline.errors import ConfigError, EngineGone

_LOG = logging.getLogger(__name__)
DaskOptions = beam_dask.DaskOptions
# Where --dask_npartitions does not say: partitions per worker thread, and at most
# this many input bytes a partition (`partition_count`).
PARTITIONS_PER_THREAD = 8
INPUT_BYTES_PER_PARTITION = 32 * 2**20
# A Reshuffle's elements (the input files) each get a partition, up to this many.
MAX_DEALT_PARTITIONS = 10_000


class LocalClusterOptions(PipelineOptions):
    """How the local cluster (no --dask_client_address) is made."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--dask_worker_memory", default="auto",
            help="Each local Dask worker's memory limit (for example 2GiB; default: an "
            "equal share of the machine's memory). Past 60-70%% of it a worker spills "
            "what it holds to disk; at 95%% it is restarted.")


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner with the fixes the module's docstring lists."""

    def __init__(self, input_bytes: int | None = None):
        """`input_bytes`: the input's size, if known, by which the partitions are sized
        (`partition_count`)."""
        super().__init__()
        self._input_bytes = input_bytes or 0

    def run_pipeline(self, pipeline, options: PipelineOptions):
        client, cluster = _connect(options.view_as(DaskOptions),
                                   options.view_as(LocalClusterOptions).dask_worker_memory)
        try:
            pipeline.replace_all(dask_overrides())
            nthreads = client.nthreads()
            threads = sum(nthreads.values()) or 1
            partitions = options.view_as(DaskOptions).npartitions or partition_count(
                threads, self._input_bytes)
            _LOG.info("Dask cluster at %s: %d workers, %d threads; %d partitions",
                      client.scheduler.address, len(nthreads), threads, partitions)
            translation = _Translation(client, partitions)
            pipeline.visit(translation)
            futures = client.compute(translation.to_compute(), optimize_graph=True)
        except BaseException:
            _close(client, cluster)
            raise
        return DaskResult(client, cluster, futures, options.view_as(DaskOptions).address)


def partition_count(threads: int, input_bytes: int) -> int:
    """How many partitions a run's steps and shuffles have: enough for every worker
    thread to have several, and enough that one holds at most
    INPUT_BYTES_PER_PARTITION of the input, so that what one task holds at once does
    not grow with the input."""
    return max(PARTITIONS_PER_THREAD * threads, -(-input_bytes // INPUT_BYTES_PER_PARTITION))


def _connect(dask_options: DaskOptions, worker_memory: str):
    """A client of the scheduler at --dask_client_address, or of a local cluster whose
    workers each have `worker_memory`."""
    import distributed

    # Dask configures its loggers when it is first imported. As for Beam's
    # (`pipeline.logs`), a failed run is reported once, by the entry point; the
    # workers' logs: `runners.worker_environment`.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for name in ("distributed", "distributed.client"):  # Dask sets both
            logging.getLogger(name).setLevel(logging.CRITICAL)
    address = dask_options.address or dask_options.scheduler_file
    if address:
        try:
            return distributed.Client(
                dask_options.address, scheduler_file=dask_options.scheduler_file,
                timeout=dask_options.timeout if isinstance(dask_options.timeout, int) else 10,
                name=dask_options.name or "mparticle-s3-forwarder",
                connection_limit=dask_options.connection_limit), None
        except (OSError, TimeoutError) as err:
            raise EngineGone(
                f"the Dask scheduler at {address} cannot be reached ({type(err).__name__}): "
                "start it, or check --dask_client_address."
            ) from err
    workers = os.cpu_count() or 1
    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
        memory_limit=worker_memory,
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


class _Stage:
    """ParDos fused into one task per partition, as Beam's runners fuse them: each
    step's outputs go straight to the steps that read them, in memory. A stage reads
    a bag of WindowedValues, or its part of a shuffle (grouping it first); what leaves
    it is a list of WindowedValues, or, for a GroupByKey, already encoded and split
    into the shuffle's parts (`_ShuffleWriter`)."""

    def __init__(self, source: pvalue.PCollection):
        self.source = source
        self.steps: list = []  # AppliedPTransforms, in the pipeline's order
        self.bag: db.Bag | None = None


class _Shuffled:
    """A GroupByKeyOnly's output, not yet read: the parts written by the stage before."""

    def __init__(self, producer: db.Bag, number: int, coders: tuple, partitions: int):
        self.producer = producer  # its tasks return ([exports], counters)
        self.number = number  # which of their exports
        self.coders = coders
        self.partitions = partitions

    def parts(self, layer: dict, target: int) -> list:
        """Adds to `layer` the tasks that take part `target` of each producer's task;
        their keys."""
        name = f"part-{self.producer.name}-{self.number}"
        keys = []
        for source in range(self.producer.npartitions):
            layer[(name, source, target)] = (_part_of, (self.producer.name, source),
                                             self.number, target)
            keys.append((name, source, target))
        return keys


class _Translation(PipelineVisitor):
    """The pipeline → a Dask graph: ParDos fused into stages (`_Stage`), shuffles of
    encoded bytes between them."""

    def __init__(self, client, partitions: int):
        self._client = client
        self._partitions = partitions
        self._nodes: list = []
        self._computed_first: list[db.Bag] = []  # held: the run reuses what they computed
        self._bags: dict[pvalue.PCollection, db.Bag] = {}
        self._shuffled: dict[pvalue.PCollection, _Shuffled] = {}
        self._consumers: dict[pvalue.PCollection, list] = {}
        self._stages: dict = {}  # a ParDo (AppliedPTransform) → its _Stage
        self._counters: list[db.Bag] = []
        # A Reshuffle's output → how many pieces each output partition of the ParDo
        # that reads it is split into.
        self._after_reshuffle: dict[pvalue.PCollection, int] = {}

    def visit_transform(self, node) -> None:
        transform = node.transform
        if node.side_inputs:
            raise NotImplementedError(
                f"--runner=dask does not run side inputs (step {node.full_label!r}).")
        if not isinstance(transform, (_Create, beam.ParDo, _GroupByKeyOnly, _Flatten,
                                      _Reshuffle)):
            raise NotImplementedError(
                f"--runner=dask does not run {type(transform).__name__} "
                f"(step {node.full_label!r}).")
        self._nodes.append(node)
        for each in node.inputs:
            self._consumers.setdefault(each, []).append(node)

    def to_compute(self) -> list[db.Bag]:
        """The graph: every leaf (a PCollection no step reads), and every stage's
        counters."""
        self._fuse()
        for node in self._nodes:
            self._translate(node)
        leaves = [self._bag(pcoll).map_partitions(_nothing)
                  for pcoll in [*self._bags, *self._shuffled]
                  if not self._consumers.get(pcoll)]
        return leaves + self._counters

    def _fuse(self) -> None:
        """Each ParDo joins the stage of the ParDo it reads from, unless what it reads
        is spread (fix 7); else it starts one."""
        produced_in: dict[pvalue.PCollection, _Stage] = {}
        for node in self._nodes:
            if not isinstance(node.transform, beam.ParDo):
                continue
            main = node.inputs[0]
            stage = produced_in.get(main)
            if stage is None or _spread(main):
                stage = _Stage(main)
            stage.steps.append(node)
            self._stages[node] = stage
            for output in node.outputs.values():
                produced_in[output] = stage

    def _translate(self, node) -> None:
        transform = node.transform
        inputs = [each for each in node.inputs if isinstance(each, pvalue.PCollection)]
        if isinstance(transform, _Create):
            self._set(node, self._created(transform.values))
        elif isinstance(transform, beam.ParDo):
            stage = self._stages[node]
            if stage.bag is None:
                self._run_stage(stage)
        elif isinstance(transform, _GroupByKeyOnly):
            (output,) = node.outputs.values()
            self._shuffled[output] = self._shuffled.pop(inputs[0])
        elif isinstance(transform, _Flatten):
            bags = [self._bag(each) for each in inputs]
            self._set(node, db.concat(bags) if bags else self._created([]))
        else:
            self._reshuffle(node, self._bag(inputs[0]))

    def _set(self, node, bag: db.Bag) -> None:
        (output,) = node.outputs.values()
        self._bags[output] = bag

    def _bag(self, pcoll: pvalue.PCollection) -> db.Bag:
        """The bag of a PCollection (a shuffle's output grouped, where it is one)."""
        if pcoll not in self._bags:
            shuffled = self._shuffled[pcoll]
            name = f"grouped-{shuffled.producer.name}-{shuffled.number}"
            layer: dict = {}
            for target in range(shuffled.partitions):
                layer[(name, target)] = (_grouped, shuffled.parts(layer, target),
                                         shuffled.coders)
            self._bags[pcoll] = db.Bag(HighLevelGraph.from_collections(
                name, layer, dependencies=[shuffled.producer]), name, shuffled.partitions)
        return self._bags[pcoll]

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

    def _run_stage(self, stage: _Stage) -> None:
        index = {node: number for number, node in enumerate(stage.steps)}
        dofns, plan, exported, writers = [], [], [], []
        for node in stage.steps:
            args, kwargs = node.transform.raw_side_inputs
            dofns.append((node.transform.fn, list(args), kwargs, node.inputs[0].windowing))
            outputs = []
            for tag, output in node.outputs.items():
                consumers = self._consumers.get(output, [])
                readers = [index[each] for each in consumers
                           if each in index and not _spread(output)]
                export = None
                if len(readers) < len(consumers) or not consumers:
                    export = len(exported)
                    exported.append(output)
                    writers.append(self._shuffle_writer(output, consumers))
                outputs.append((tag, readers, export))
            plan.append((node.full_label, outputs))
        payload = pickler.dumps(dofns)
        digest = hashlib.sha256(payload).hexdigest()
        shuffled = self._shuffled.get(stage.source)
        if shuffled is None:
            shared = dask.delayed(payload, pure=True, name=f"dofns-{digest}")
            stage.bag = self._bag(stage.source).map_partitions(
                _run_fused, shared, digest, plan, writers, None)
        else:  # the stage reads its part of a shuffle, and groups it first
            # Named by what it reads too: two stages of the same DoFns may read two
            # shuffles.
            name = f"stage-{digest[:16]}-{shuffled.producer.name}-{shuffled.number}"
            payload_key = f"dofns-{digest}"
            layer: dict = {payload_key: payload}
            for target in range(shuffled.partitions):
                layer[(name, target)] = (_run_fused, shuffled.parts(layer, target), payload_key,
                                         digest, plan, writers, shuffled.coders)
            stage.bag = db.Bag(HighLevelGraph.from_collections(
                name, layer, dependencies=[shuffled.producer]), name, shuffled.partitions)
        self._counters.append(stage.bag.map_partitions(_counters_of))
        for number, output in enumerate(exported):
            if writers[number] is not None:
                self._shuffled[output] = _Shuffled(stage.bag, number, writers[number].coders,
                                                   self._partitions)
                continue
            bag = stage.bag.map_partitions(_output_of, number)
            # Fix 7: a read of what a Reshuffle spread is spread again, so that one
            # large file's records are shared by every worker.
            pieces = self._after_reshuffle.get(output.producer.inputs[0], 1)
            if pieces > 1:
                bag = bag.repartition(npartitions=bag.npartitions * pieces)
            self._bags[output] = bag

    def _shuffle_writer(self, output: pvalue.PCollection, consumers: list):
        """A `_ShuffleWriter` if a GroupByKeyOnly is all that reads `output` (a
        ReifyWindows' output), else None."""
        if len(consumers) != 1 or not isinstance(consumers[0].transform, _GroupByKeyOnly):
            return None
        return _ShuffleWriter(_shuffle_coders(output), self._partitions)


def _spread(pcoll: pvalue.PCollection) -> bool:
    """Whether `pcoll` is the output of a ParDo reading a Reshuffle's (fix 7)."""
    producer = pcoll.producer
    return (isinstance(producer.transform, beam.ParDo)
            and isinstance(producer.inputs[0].producer.transform, _Reshuffle))


def _length(part: Iterable) -> list[int]:
    return [sum(1 for _ in part)]


def _nothing(part: Iterable) -> list:
    for _ in part:
        pass
    return []


def _output_of(ran: tuple[list, Any], number: int) -> list:
    return ran[0][number]


def _part_of(ran: tuple[list, Any], number: int, target: int) -> bytes:
    return ran[0][number][target]


def _counters_of(ran: tuple[list, Any]) -> list:
    return [_Counted(ran[1])]


class _Fanout(Receiver):
    """A step's output: to the DoFnRunners of the stage that read it, and to what
    leaves the stage (a list, or a `_ShuffleWriter`'s streams)."""

    def __init__(self, readers: list, kept):
        self._readers = readers
        self._kept = kept

    def receive(self, windowed_value: WindowedValue) -> None:
        for reader in self._readers:
            reader.process(windowed_value)
        if self._kept is not None:
            self._kept.append(windowed_value)


class _ShuffleWriter:
    """How a stage writes what a GroupByKeyOnly reads: each (key, WindowedValue) encoded
    by the GroupByKey's coders (the key's deterministic one: Beam groups by encoded key)
    into the stream of the shuffle partition that a stable hash of the key's bytes
    picks. What waits between stages is bytes (small, and cheap for Dask to spill to
    disk), not Python objects."""

    def __init__(self, coders: tuple, partitions: int):
        self.coders = coders
        self.partitions = partitions

    def streams(self) -> _Streams:
        return _Streams(self.coders, self.partitions)


class _Streams:
    def __init__(self, coders: tuple, partitions: int):
        self._encode_key = coders[0].encode
        self._value_impl = coders[1].get_impl()
        self._streams = [create_OutputStream() for _ in range(partitions)]

    def append(self, item: WindowedValue) -> None:
        key, value = item.value
        key_bytes = self._encode_key(key)
        stream = self._streams[zlib.crc32(key_bytes) % len(self._streams)]
        stream.write(key_bytes, True)
        self._value_impl.encode_to_stream(value, stream, True)

    def get(self) -> list[bytes]:
        return [stream.get() for stream in self._streams]


def _shuffle_coders(reified: pvalue.PCollection) -> tuple:
    """(key coder, windowed value coder) of the GroupByKey that `reified` (its
    ReifyWindows' output) feeds: the key's deterministic coder, as Beam requires."""
    grouped_input = reified.producer.inputs[0]
    key_type, value_type = trivial_inference.key_value_types(grouped_input.element_type)
    label = reified.producer.full_label
    return (registry.get_coder(key_type).as_deterministic_coder(label),
            WindowedValueCoder(registry.get_coder(value_type),
                               grouped_input.windowing.windowfn.get_window_coder()))


# The DoFns a worker thread has set up, by the digest of their pickled form: Beam calls
# `setup` once per DoFn instance, and bundles reuse it (Beam: one instance per bundle).
_SET_UP = threading.local()


def _dofns_of(payload: bytes, digest: str) -> list:
    cache = getattr(_SET_UP, "dofns", None)
    if cache is None:
        cache = _SET_UP.dofns = {}
    if digest not in cache:
        cache[digest] = [pickler.loads(payload), False]
    return cache[digest]


def _run_fused(source, payload: bytes, digest: str, plan: list, writers: list,
               shuffle_coders: tuple | None) -> tuple[list, Any]:
    """One partition through one stage's ParDos with Beam's DoFnRunner: ([what leaves
    the stage: a list of WindowedValues, or a shuffle's streams], the counters the stage
    incremented). `source`: WindowedValues, or (`shuffle_coders` given) this
    partition's part of each task of a shuffle's writing stage."""
    entry = _dofns_of(payload, digest)
    kept = [writer.streams() if writer is not None else [] for writer in writers]
    runners: list = [None] * len(plan)
    for number in reversed(range(len(plan))):
        step, outputs = plan[number]
        fn, args, kwargs, windowing = entry[0][number]
        receivers = {tag: _Fanout([runners[reader] for reader in readers],
                                  None if export is None else kept[export])
                     for tag, readers, export in outputs}
        runners[number] = DoFnRunner(fn, args, kwargs, [], windowing,
                                     tagged_receivers=receivers, step_name=step,
                                     state=DoFnState(counters.CounterFactory()))
    label = plan[0][0]
    container = MetricsContainer(label)
    sampler = statesampler.StateSampler(label, counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(label, "process", metrics_container=container):
            if not entry[1]:
                for runner in runners:
                    runner.setup()
                entry[1] = True
            for runner in runners:
                runner.start()
            first = runners[0]
            items = source if shuffle_coders is None else _grouped(source, shuffle_coders)
            for item in items:
                first.process(item)
            for runner in runners:
                runner.finish()
    finally:
        statesampler.set_current_tracker(None)
    return [each.get() if isinstance(each, _Streams) else each for each in kept], (
        container.get_cumulative())


def _grouped(parts: list[bytes], coders: tuple) -> list[WindowedValue]:
    """GroupByKeyOnly: a partition's part of every task that wrote the shuffle
    (`_ShuffleWriter`) → (key, [WindowedValue]) per key, in the global window."""
    groups: dict[bytes, list] = {}
    value_impl = coders[1].get_impl()
    for part in parts:
        stream = create_InputStream(part)
        while stream.size():
            key_bytes = stream.read_all(True)
            groups.setdefault(key_bytes, []).append(value_impl.decode_from_stream(stream, True))
    decode_key = coders[0].decode
    everywhere = (GlobalWindow(),)
    return [WindowedValue((decode_key(key_bytes), values), MIN_TIMESTAMP, everywhere)
            for key_bytes, values in groups.items()]


def check_options(options: PipelineOptions) -> None:
    """Refuses what this runner does not run, in one sentence (ConfigError)."""
    if options.view_as(StandardOptions).streaming:
        raise ConfigError(
            "--runner=dask runs bounded input (--input) only: Dask has no streaming; "
            "forward live input on Prism (the default), Flink, Spark or Dataflow."
        )
    if options.view_as(DaskOptions).partition_size:
        raise ConfigError("--dask_partition_size is not used by --runner=dask here: "
                          "set --dask_npartitions instead.")
    memory = options.view_as(LocalClusterOptions).dask_worker_memory
    if memory != "auto":
        from dask.utils import parse_bytes

        try:
            parse_bytes(memory)
        except ValueError:
            raise ConfigError(f"--dask_worker_memory must be a size such as 2GiB or 512MB, "
                              f"or auto, not {memory!r}.") from None
