"""Everything the forwarder knows about runners, in one folder.

- `names`: the `--runner` names users type → the runner (`runner_name`), and what
  runs (`engine_name`).
- `profile`: `RunnerProfile`, what a run does differently on its runner (how many
  reads, how live sessions are kept, whether late files are batched, how a stop
  drains, whether a run is sliced, whether progress comes from workers), made once
  per run (`profile_for`) and read by the graph builder and the launcher.
- `making`: the runner itself, made once per run (`make_runner`).
- `prism`: Prism's binary and options, and where its steps run (worker processes of
  their own); the patches it is built with are in `pipeline/engine/prism`.
- `direct`: the DirectRunner's engines (the FnApiRunner, the BundleBasedDirectRunner
  with a fix to its counters).
- `dask_runner`: the Dask runner (Beam's, with fixes), from the `dask` extra.
- `state_commits`: a Beam SDK patch that sends a bundle's state to the runner at once.
- `processes`, `worker_site/`: the environment of the worker processes a run starts.

The transforms (`transforms/`) name no runner: what differs reaches them as values.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.runners.making import current_metrics, dask_module, make_runner
from pipeline.runners.names import (
    JAVA_JOB_SERVER,
    KNOWN,
    PORTABLE,
    canonical,
    engine_name,
    runner_name,
)
from pipeline.runners.processes import engine_shielded, worker_environment
from pipeline.runners.profile import RunnerProfile, profile_of

__all__ = [
    "JAVA_JOB_SERVER", "KNOWN", "PORTABLE", "RunnerProfile", "canonical",
    "current_metrics", "dask_module", "declare_options", "engine_name", "engine_shielded",
    "make_runner", "profile_for", "profile_of", "runner_name", "worker_environment",
]


def declare_options(name: str | None) -> None:
    """Declares the options of the runner `name` that Beam declares only once the
    runner's module is loaded (Dask's --dask_* options), so they can be checked."""
    if name == "DaskRunner":
        dask_module()


def profile_for(options: PipelineOptions, pubsub_readers: int = 0,
                session_processes: int = 0) -> RunnerProfile:
    """The profile of the runner `options` name (`profile_of`), with a run's
    --pubsub_readers and --session_harnesses."""
    name = runner_name(options)
    dask_address = None
    if name == "DaskRunner":
        dask_address = options.view_as(dask_module().DaskOptions).address
    return profile_of(name, pubsub_readers=pubsub_readers,
                      session_processes=session_processes, dask_address=dask_address)
