"""Sliced bounded runs: memory for a window, or a slice of arrival time, not the archive.

The runners of this machine (the FnApiRunner behind the DirectRunner, and Prism)
hold everything a GroupByKey groups in memory until the run ends, in their own
process, so grouping a month of archives at once needs the month in memory
there. A sliced run is one pipeline that groups on local disk in the workers
instead (`transforms.spill`): it spills the keyed batches per file window (for
sessions: per device shard and slice of arrival time, `--arrival_slice_s`, a
day by default) and then merges, packs and writes one window (or groups one
shard's slices in time order) at a time in a worker. The runner only hands out
window starts and shard numbers.

Fixed windows and file windows never span slices (the slice length is a
multiple of the window size, and both are UTC-aligned); a session still open at
a slice's end is grouped with the next slice; and the grouping, merging,
packing and naming are the unsliced run's own functions. So the forwarded
objects are byte-identical, under identical keys, to an unsliced run's.
Cluster runners (Flink, Spark, Dataflow) spill their own shuffles to disk and
run unsliced.

The spill needs local disk for the input as compressed batches (measured on
the benchmark's NDJSON: 0.19 of its bytes), and for sessions again as compressed
file lines (0.32 in all); the run checks first that SPILL_PER_INPUT_BYTE of it
is free. The directory is removed when the run ends, failed or not (also when the
launcher exits without its runner after Ctrl-C: `remove_open`), and one left by a
killed run is removed by the next run that uses the same spill directory. A run
owns its directory by an exclusive lock (`flock`) on a file in it, held until it
ends: the kernel lets go of it when the process dies, however it dies, and the
lock holds between containers sharing a volume and over NFS, where a process id
would say nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from typing import Callable, Iterator

import apache_beam as beam

from pipeline.build import build_sliced
from pipeline.config import ConfigError, ForwarderConfig
from pipeline.runners import RunnerProfile
from transforms.machinery.shuffled import UNCOMPRESSED

_LOG = logging.getLogger("pipeline")
SPILL_PREFIX = "mparticle-s3-spill-"
OWNER_FILE = ".owner"  # locked (flock) by the run that owns the directory
# A spill directory without an owner file is one being made, or left by a run that
# died between making it and locking it: removed only once this old.
UNOWNED_GRACE_S = 3600
# Spill bytes per input byte, with a margin over the 0.32 measured with sessions on
# the benchmark's NDJSON input. gzip input is about 7 times smaller than its NDJSON.
SPILL_PER_INPUT_BYTE = 0.5
SPILL_PER_GZIP_BYTE = 3.5
MIB = 1 << 20

RunGraph = Callable[[Callable[[beam.Pipeline], object]], dict]


def applies(config: ForwarderConfig, profile: RunnerProfile) -> bool:
    """Whether a run is sliced: bounded, slices asked for, a runner of this machine
    (`RunnerProfile.slices`)."""
    return not config.streaming and config.arrival_slice_s > 0 and profile.slices


def run_sliced(config: ForwarderConfig, run_graph: RunGraph, spill_bytes: int,
               profile: RunnerProfile) -> dict:
    """Runs the sliced pipeline on the runner of `profile`; returns its counters.

    `run_graph(build_graph)` runs one pipeline that `build_graph` builds, to its
    end, and returns its counters. `spill_bytes`: about how much disk the spill takes
    (`spill_bytes_needed`).
    """
    with spill_directory(config.spill_dir, spill_bytes) as spill_dir:
        counters = run_graph(lambda p: build_sliced(p, config, UNCOMPRESSED, spill_dir,
                                                    profile))
        spilled = _spilled(spill_dir)
        _LOG.info("spilled %s; the largest unit grouped at once: %.1f MiB compressed",
                  ", ".join(f"{size / MIB:.1f} MiB of {kind}" for kind, size in spilled.items()
                            if kind != "largest"), spilled["largest"] / MIB)
    return counters


def _spilled(spill_dir: str) -> Counter:
    """Bytes spilled per kind (`transforms.spill`: windows, batches, lines), and
    the largest that one worker grouped at once (a window's batches, or a slice of
    a device shard), compressed."""
    spilled: Counter = Counter()
    for folder, _, names in os.walk(spill_dir):
        size = sum(os.path.getsize(os.path.join(folder, name)) for name in names)
        kind = os.path.relpath(folder, spill_dir).split(os.sep)[0]
        if names:
            spilled[kind] += size
        if names and kind != "lines":
            spilled["largest"] = max(spilled["largest"], size)
    return spilled


# The spill directories of this process's runs, for `remove_open`.
_OPEN: set[str] = set()


@contextlib.contextmanager
def spill_directory(root: str | None, needed_bytes: int) -> Iterator[str]:
    """A new spill directory under `root` (default: the system's temporary one), owned
    by this run (`_own`) and removed at the end whatever happens; refuses to start
    without the space."""
    root = root or tempfile.gettempdir()
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--spill_dir {root!r} cannot be made: {err.strerror}.") from None
    remove_abandoned(root)
    free = shutil.disk_usage(root).free
    if free < needed_bytes:
        raise ConfigError(
            f"--spill_dir {root!r} has {free / MIB:,.0f} MiB free; a sliced run of this input "
            f"needs about {needed_bytes / MIB:,.0f} MiB there. Give a --spill_dir with more space."
        )
    path = tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=root)
    owner = _own(path)
    _OPEN.add(path)
    try:
        yield path
    finally:
        _OPEN.discard(path)
        shutil.rmtree(path, ignore_errors=True)
        os.close(owner)


def remove_open() -> None:
    """Removes the spill directories of this process's runs: for an exit that skips
    their own cleanup (`os._exit`)."""
    for path in list(_OPEN):
        shutil.rmtree(path, ignore_errors=True)


def _own(path: str) -> int:
    """Locks the owner file of `path` for this process; the descriptor that holds it."""
    descriptor = os.open(os.path.join(path, OWNER_FILE), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return descriptor


def spill_bytes_needed(files: list[tuple[str, int]]) -> int:
    """About how much disk the spill of these (path, size) input files takes."""
    return int(sum(size * (SPILL_PER_GZIP_BYTE if path.endswith(".gz") else SPILL_PER_INPUT_BYTE)
                   for path, size in files))


def remove_abandoned(root: str) -> None:
    """Removes spill directories whose run has ended without removing them (killed,
    power lost): those whose owner file no process holds locked."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(SPILL_PREFIX) and os.path.isdir(path) and _abandoned(path):
            _LOG.info("removing %s, left by an earlier run that did not end", name)
            shutil.rmtree(path, ignore_errors=True)


def _abandoned(path: str) -> bool:
    try:
        descriptor = os.open(os.path.join(path, OWNER_FILE), os.O_RDWR)
    except FileNotFoundError:
        return time.time() - os.path.getmtime(path) > UNOWNED_GRACE_S
    except OSError:
        return False  # not ours to judge (another user's, say)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its run holds it
    finally:
        os.close(descriptor)  # lets go of the lock, if it was taken
    return True
