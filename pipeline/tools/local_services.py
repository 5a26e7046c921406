"""The embedded local services, for the tests, the benchmarks and the demo: a real
S3-compatible server (moto's server mode) and a real Pub/Sub server (Google's
pstest, `tools/pstest`), each a process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_server(env: dict | None = None) -> Iterator[str]:
    """A moto server process on a free loopback port; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def pstest_binary() -> str:
    """Google's Pub/Sub fake with tools/pstest's patches, as `./run_local.sh` builds it
    (from the Go module proxy, patched: tools/pstest/README.md)."""
    binary = Path(os.environ.get("PSTEST", ROOT / ".local" / "bin" / "pstest"))
    if not binary.exists():
        raise FileNotFoundError(
            f"no local Pub/Sub server at {binary}: `./run_local.sh test` builds it")
    return str(binary)


@contextlib.contextmanager
def pstest_server(*flags: str) -> Iterator[str]:
    """A pstest server on a free loopback port (flags: tools/pstest); yields host:port."""
    port = free_port()
    process = subprocess.Popen([pstest_binary(), "-port", str(port), *flags],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"pstest did not start: {line!r}")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


class DaskCluster:
    """A Dask scheduler and its workers, each a process of its own (`dask_cluster`)."""

    def __init__(self, address: str, scheduler: subprocess.Popen,
                 workers: list[subprocess.Popen]):
        self.address = address
        self.scheduler = scheduler
        self.workers = workers


@contextlib.contextmanager
def dask_cluster(workers: int = 2, env: dict | None = None) -> Iterator[DaskCluster]:
    """`dask scheduler` and `workers` × `dask worker` (one thread, no nanny: a worker
    killed stays dead) on loopback, as an operator starts them; yields the cluster
    once every worker has joined."""
    import distributed

    dask = str(Path(sys.executable).with_name("dask"))
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    environment = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning", **(env or {})}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": environment}
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], **quiet)
    started = [scheduler]
    try:
        started += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-nanny",
                                      "--host", "127.0.0.1", "--no-dashboard"], **quiet)
                    for _ in range(workers)]
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield DaskCluster(address, scheduler, started[1:])
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
