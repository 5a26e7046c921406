"""The processes a run starts: the environment they inherit (`worker_environment`,
with `worker_site/` whose sitecustomize sets a worker up as the launcher is), and their
own process group, so Ctrl-C reaches the launcher alone (`engine_shielded`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Iterator

# glibc gives each thread that allocates at once an arena of its own, up to eight per
# core, and an arena keeps what was freed in it: an SDK harness's gRPC, puller and
# upload threads made its RSS grow through a long live run, with most of the growth
# freed memory (README, Performance → Live, the figures).
WORKER_MALLOC_ARENAS = 2

_WORKER_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_site")


@contextlib.contextmanager
def worker_environment() -> Iterator[None]:
    """The environment that the worker processes a run starts inherit, for the run,
    restored after it: this Python first on PATH (Beam starts Prism's loopback
    process workers as `python`), and `worker_site` first on PYTHONPATH, whose
    sitecustomize sets a worker up at its start as the launcher is; and Dask's
    processes (`pipeline.runners.dask_runner`) log only what goes wrong, as Beam's do, unless
    DASK_LOGGING__DISTRIBUTED says otherwise; and glibc's malloc in the workers keeps
    WORKER_MALLOC_ARENAS arenas, unless MALLOC_ARENA_MAX says otherwise."""
    saved = {name: os.environ.get(name) for name in (
        "PATH", "PYTHONPATH", "DASK_LOGGING__DISTRIBUTED", "MALLOC_ARENA_MAX")}
    _prepend("PATH", os.path.dirname(sys.executable))
    _prepend("PYTHONPATH", _WORKER_SITE)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("MALLOC_ARENA_MAX", str(WORKER_MALLOC_ARENAS))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _prepend(variable: str, directory: str) -> None:
    entries = os.environ.get(variable, "")
    if entries.split(os.pathsep)[0] != directory:
        os.environ[variable] = directory + (os.pathsep + entries if entries else "")


# prctl(2)'s request for the signal a process gets when the thread that started it ends.
_PR_SET_PDEATHSIG = 1


def _end_with_launcher() -> Callable[[], None] | None:
    """What a child started from the launcher's main thread runs before its program:
    SIGTERM to it when the launcher ends, however it ends (Linux; elsewhere None)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def engine_shielded() -> Iterator[None]:
    """Every process the launcher starts meanwhile (Prism, the SDK harnesses Beam's
    worker pool starts for it) gets a process group of its own, so the SIGINT a
    terminal sends its whole foreground group at Ctrl-C reaches the launcher alone,
    which drains the run; the engine ends when the launcher asks it to, or with it.

    Beam starts them through `subprocess.Popen` (`utils.subprocess_server`,
    `runners.worker.worker_pool_main`), which is what is replaced for the run. One
    started from the main thread (Prism) also gets SIGTERM when the launcher dies. A
    child's death signal follows the thread that started it, not the process, so
    the SDK harnesses, started from the worker pool's gRPC threads, go without: they
    end when their channel to Prism breaks."""
    original = subprocess.Popen
    end_with_launcher = _end_with_launcher()

    class _OwnProcessGroup(original):
        def __init__(self, *args, **kwargs):
            if not kwargs.get("start_new_session") and kwargs.get("process_group") is None:
                kwargs["process_group"] = 0
                if (end_with_launcher is not None and kwargs.get("preexec_fn") is None
                        and threading.current_thread() is threading.main_thread()):
                    kwargs["preexec_fn"] = end_with_launcher
            super().__init__(*args, **kwargs)

    subprocess.Popen = _OwnProcessGroup
    try:
        yield
    finally:
        subprocess.Popen = original
