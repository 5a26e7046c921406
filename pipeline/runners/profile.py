"""RunnerProfile: what differs between runners, as one frozen value made once per run.

The graph builder (`pipeline.build`) and the launcher (`pipeline.run`) read it; the
transforms are given only what it decides (how many reads, how sessions are kept,
whether late files are batched), never the runner's name.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import apache_beam as beam

from pipeline.runners import prism, state_commits
from pipeline.runners.names import PORTABLE
from transforms.values import LiveSessions

# PubSubSource readers in each read, without --pubsub_readers, on portable runners
# other than Prism (which run a read's readers in parallel themselves).
PUBSUB_READERS = 2


def together(transform: beam.PTransform, process: str) -> beam.PTransform:
    """Every step where the runner puts it: a runner that places work itself."""
    return transform


@dataclasses.dataclass(frozen=True)
class RunnerProfile:
    """What a run does differently on its runner (`profile_of`).

    `name`: the runner (`names.canonical`).
    `reads`: how many reads of the subscription a live run makes, or of its files a
    sliced run (each file in one), each in a worker process of its own as far as the
    first shuffle or the spill (`in_process`).
    `pubsub_readers`: PubSubSource readers in each read; 0: Beam's ReadFromPubSub,
    which the DirectRunner and Dataflow run natively.
    `sessions`: how live sessions are kept (`transforms.values.LiveSessions`).
    `session_processes`: 0 to keep live sessions (and merge live fixed windows of one
    read) with the other steps; else in this many worker processes of their own, each
    with its part of the keys.
    `late_files_batched`: whether a live run's late batches of a file window go out
    together, a pane `--file_flush_s` after the first of them, rather than a file each.
    `drains_on_stop`: whether a stopped live run drains (its sources stop pulling and
    its open windows are written) before it ends.
    `slices`: whether a bounded run may be sliced on local disk (`pipeline.sliced`): on
    a runner of this machine, which holds what a GroupByKey groups in memory in its own
    process; cluster runners spill their own shuffles to disk.
    `reports_progress`: whether a bounded run's workers tell the launcher what they
    have done (`transforms.io.progress`).
    `in_process`: a step, and the name of the worker process to run it in ("": the
    pipeline's default one) → the step placed there.
    `worker_setup`: what a worker runs before the live sessions' step (Beam patches).
    """

    name: str
    reads: int = 1
    pubsub_readers: int = 0
    sessions: LiveSessions = LiveSessions()
    session_processes: int = 0
    late_files_batched: bool = False
    drains_on_stop: bool = False
    slices: bool = False
    reports_progress: bool = False
    in_process: Callable[[beam.PTransform, str], beam.PTransform] = together
    worker_setup: Callable[[], object] | None = state_commits.pipeline_bag_commits

    def not_drained(self) -> str:
        """What a live run that stopped without its drain may have left unwritten."""
        if self.name == "DirectRunner":
            return ("stopped without a drain (the DirectRunner cannot drain a live run): the "
                    "batches in open windows were acknowledged when pulled and are not in "
                    "S3; on Prism, the live default, a stop writes them first.")
        if self.name == "PrismRunner":
            return ("stopped before the drain ended: the batches in open windows (up to "
                    "--window_size_s of them, or open sessions) may not be in S3, and Prism "
                    "acknowledged them when it took them, so Pub/Sub does not deliver them "
                    "again; forward them from an archive of the input, or seek the "
                    "subscription back to before the stop.")
        return ("stopped without a drain: what was in open windows may not be in S3; stop "
                f"{self.name} jobs with the runner's own drain.")


def profile_of(name: str, *, pubsub_readers: int = 0, session_processes: int = 0,
               dask_address: str | None = None) -> RunnerProfile:
    """The profile of the runner `name` (`names.canonical`); `pubsub_readers` and
    `session_processes`: as asked (--pubsub_readers, --session_harnesses; 0: the
    runner's own); `dask_address`: a Dask run's --dask_client_address.

    - DirectRunner: Beam's ReadFromPubSub; sessions by Beam's merging windows (its
      BundleBasedDirectRunner holds no watermark for a user's timer, so a session
      sent from a timer would be late downstream); no late files batched (Python's
      trigger driver fires no pane when a window closes, so a late pane a while after
      its first element could be dropped); no drain; sliced; progress reported.
    - PrismRunner: `prism.READS` reads (each a stage with its own watermark), one
      PubSubSource reader each, and as many reads of a sliced run's files; sessions
      by timer under `prism.SESSION_SHARDS` shards of the device, in a worker process
      of their own (Prism starts a harness process per environment: one environment
      would leave a run to one core); late
      files batched (its closing firing, `engine/elementmanager.go`); drains (its
      harnesses share the launcher's machine and environment); sliced; progress.
    - Flink, Spark, Portable: PubSubSource with `PUBSUB_READERS` readers; sessions by
      timer per device (their own parallelism places them); late files batched
      (Beam's ReduceFnRunner fires a non-empty pane at a window's close); stopped with
      the runner's own drain; not sliced (they spill their own shuffles); no progress
      (their dashboards show it).
    - Dataflow: as Flink, with Beam's ReadFromPubSub (run natively).
    - DaskRunner (bounded only): progress reported from a local cluster, not from a
      scheduler at --dask_client_address.
    """
    if name == "DirectRunner":
        return RunnerProfile(name, sessions=LiveSessions(by_timer=False), slices=True,
                             reports_progress=True)
    if name == "PrismRunner":
        return RunnerProfile(
            name, reads=pubsub_readers or prism.READS, pubsub_readers=1,
            sessions=LiveSessions(shards=prism.SESSION_SHARDS),
            session_processes=session_processes or 1, late_files_batched=True,
            drains_on_stop=True, slices=True, reports_progress=True,
            in_process=prism.in_process)
    if name == "DaskRunner":
        return RunnerProfile(name, reports_progress=not dask_address)
    readers = (pubsub_readers or PUBSUB_READERS) if name in PORTABLE else 0
    return RunnerProfile(name, pubsub_readers=readers, late_files_batched=True)
