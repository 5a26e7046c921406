"""Where the time goes: each run of `benchmarks.run` under py-spy, its samples put
into the costs the README's Performance section names, per input batch.

    .venv/bin/pip install -e '.[profile]'
    .venv/bin/python -m benchmarks.profile                         # every shape
    .venv/bin/python -m benchmarks.profile --shapes few-large --scale 0.5

Each run of a shape (the plain jobs and the pipeline's, as `benchmarks.run` makes
them, Dask left out) runs once under `py-spy record --subprocesses` (launcher,
workers, SDK harness: every Python process of it). py-spy samples each thread that
is not idle RATE times a second, so a sample is 1/RATE s of one thread's time on a
core or waiting for the GIL. A sample goes to the first cost (from the innermost
frame outwards) whose pattern one of its frames matches, so time spent in a library
goes to the step of the forwarder that called it (orjson's parse to "parse JSON",
zstandard to "shuffle compression"), and what only Beam's own frames hold goes to
"Beam per element" or "Beam data plane". Printed per shape: for each cost, its
microseconds of CPU per input batch in each run: its share of the run's samples
times the run's CPU time (user and system, of every process but py-spy's). `--raw DIR` keeps
py-spy's files.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import psutil

from benchmarks.run import ROOT, SHAPES, _empty, _runs, make_input
from pipeline.tools.local_services import moto_server

RATE = 100  # samples per second and thread



def _lines_calling(call: str) -> str:
    """A function pattern "@file:line|..." of the lines of the forwarder's JSON module and
    the plain job that call `call` (a C function, whose time py-spy gives its caller's line)."""
    lines = []
    for path in ("transforms/rules/batch_json.py", "benchmarks/plain.py"):
        for number, text in enumerate((ROOT / path).read_text().splitlines(), 1):
            if call in text:
                lines.append(f"@{path}:{number}$")
    return "|".join(lines)


_LOADS = _lines_calling("json.loads(")
_DUMPS = _lines_calling("json.dumps(")

# (cost, file pattern, function pattern): tried in this order against each frame
# ("function (file:line)") from the innermost outwards; the first frame that
# matches one decides. Start-up is looked for in the whole stack first. A function
# pattern starting with "@" matches "@file:line" instead of the function's name.
COSTS: list[tuple[str, str, str]] = [
    ("start-up (imports)", r"importlib", r"_find_and_load"),
    ("metrics", r"apache_beam/metrics/|transforms/metrics\.py", r""),
    ("64-bit integer check", r"batch_json\.py",
     r"_has_wide_integer|_long_digit_runs|_decode_exact"),
    ("nesting check", r"batch_json\.py", r"nesting_depth"),
    ("parse JSON (orjson)", r"batch_json\.py|benchmarks/plain\.py", _LOADS),
    ("encode JSON (orjson)", r"batch_json\.py|benchmarks/plain\.py", _DUMPS),
    ("shuffle compression (zstd)", r"zstandard|transforms/machinery/shuffled\.py",
     r"compress|decompress|_pair"),
    ("Beam coders (between steps)", r"apache_beam/coders/|transforms/machinery/shuffled\.py", r""),
    ("spill to disk", r"transforms/spill(_files)?\.py", r""),
    ("gzip output", r"gzip\.py|zlib", r"compress"),
    ("gzip output", r"transforms/machinery/files\.py", r"body"),
    ("S3 (boto3, HTTP)", r"botocore/|boto3/|urllib3/|smart_open/|http/client\.py|ssl\.py|"
                         r"socket\.py|transforms/io/(s3|stores|retries)\.py", r""),
    ("S3 (boto3, HTTP)", r"benchmarks/plain\.py", r"^(put|write)$"),
    ("read input", r"transforms/io/inputs\.py|transforms/read\.py|gzip\.py|_compression\.py",
     r""),
    ("read input", r"benchmarks/plain\.py", r"^read$"),
    ("encoding parts", r"transforms/rules/batch_parts\.py", r""),
    ("validate batch and events", r"transforms/parse\.py|batch_json\.py", r""),
    ("validate batch and events", r"transforms/rules/grouping\.py",
     r"device_key|_time_ms|as_int|plausible"),
    ("validate batch and events", r"benchmarks/plain\.py",
     r"as_int|plausible|device_of|scanned_device|event_ok|^parsed\b"),
    ("settings (filters, identities)", r"settings\.py", r""),
    ("settings (filters, identities)", r"benchmarks/plain\.py", r"^forwarded$"),
    ("merge per device", r"transforms/rules/grouping\.py|transforms/batching\.py", r""),
    ("merge per device", r"benchmarks/plain\.py", r"merged|event_key|groups"),
    ("pack and name files", r"transforms/rules/(packing|naming)\.py|transforms/write\.py", r""),
    ("pack and name files", r"benchmarks/plain\.py", r"pack"),
    ("Beam data plane (gRPC)", r"grpc/|data_plane\.py", r""),
    ("Beam per element", r"apache_beam/", r""),
    ("threads and queues", r"threading\.py|queue\.py|concurrent/", r""),
]
# py-spy's blocking mode (consistent stacks, where --nonblocking gave stacks torn
# mid-call under load) samples idle threads too: a sample whose innermost frame is
# one of these waits (a lock, a condition, a queue, a socket or pipe read, gRPC's
# polling threads) is IDLE, and left out of the CPU shares.
IDLE = "idle (waiting in a lock, queue, socket or poll)"
_IDLE_FUNCTIONS = frozenset((
    "wait", "acquire", "join", "_wait_for_tstate_lock", "_wait_once", "get", "_serve",
    "channel_spin", "select", "poll", "_poll", "_recv", "_recv_bytes", "recv_into",
    "readinto", "accept", "worker", "_listen", "_handle_tasks", "_handle_results",
    "_handle_workers", "_wait_for_updates", "sleep", "_try_wait", "_worker", "log_stdout",
    "readline"))
_FRAME = re.compile(r"(?P<function>.*) \((?P<file>.*?)(?P<line>:\d+)?\)$")
_RULES = [(cost, re.compile(files), re.compile(functions)) for cost, files, functions in COSTS]
OTHER = "other"
RUNNER = "runner process (Prism, Go; not sampled)"


def cost_of(frames: list[str]) -> str:
    """The cost a sample's stack (outermost first) goes to."""
    leaf = _FRAME.match(frames[-1]) if frames else None
    if leaf is None:  # no Python frame: a thread of a C library (gRPC's)
        return IDLE
    name = leaf["function"].rpartition(".")[2]
    if name in _IDLE_FUNCTIONS or (name == "run" and leaf["file"] == "threading.py"):
        return IDLE
    parsed = []
    for frame in frames:
        match = _FRAME.match(frame)
        if not match:
            parsed.append((frame, "", ""))
            continue
        function = match["function"]
        name = function.rpartition(".")[2] if "<" not in function else function
        parsed.append((name, match["file"], f"@{match['file']}{match['line'] or ''}"))
    startup, files, functions = _RULES[0]
    if any(files.search(file) and functions.search(name) for name, file, _ in parsed):
        return startup
    for name, file, at in reversed(parsed):
        for cost, files, functions in _RULES[1:]:
            if files.search(file) and functions.search(at if functions.pattern[:1] == "@"
                                                         else name):
                return cost
    return OTHER


def costs_of(raw: str) -> collections.Counter:
    """Samples per cost of a py-spy raw profile (`stack;frames count` lines; the
    first frames name the process and the thread)."""
    costs = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        costs[cost_of(frames)] += int(count)
    return costs


def profiled(command: list[str], env: dict, out: Path) -> dict:
    """Runs `command` under py-spy into `out` (raw); the CPU seconds (user and
    system) of its Python processes and of the others (Prism's Go process, which
    py-spy cannot sample), also written beside `out` (.json)."""
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if not spy:
        sys.exit("py-spy is not installed: .venv/bin/pip install -e '.[profile]'")
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [spy, "record", "--subprocesses", "-r", str(RATE), "-f", "raw",
             "-o", str(out), "--", *command], cwd=ROOT, env=env, stdout=log, stderr=log)
        cpu: dict[tuple[int, bool], float] = {}
        spied = psutil.Process(process.pid)
        while process.poll() is None:
            for child in spied.children(recursive=True):
                try:
                    times, python = child.cpu_times(), "python" in child.name()
                    cpu[(child.pid, python)] = times.user + times.system
                except psutil.Error:
                    pass
            time.sleep(0.05)
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{command} failed under py-spy:\n{log.read()[-4000:]}")
    seconds = {"python_cpu_s": sum(s for (_, python), s in cpu.items() if python),
               "runner_cpu_s": sum(s for (_, python), s in cpu.items() if not python)}
    out.with_suffix(".json").write_text(json.dumps(seconds))
    return seconds


def cpu_per_cost(raw: Path) -> tuple[collections.Counter, int]:
    """CPU seconds per cost of a profiled run (`profiled`'s files): each cost's share of
    the samples times the Python CPU time, and RUNNER; and the number of samples."""
    samples = costs_of(raw.read_text())
    seconds = json.loads(raw.with_suffix(".json").read_text())
    busy = sum(n for cost, n in samples.items() if cost != IDLE)
    costs = collections.Counter({cost: n / busy * seconds["python_cpu_s"]
                                 for cost, n in samples.items() if cost != IDLE})
    costs[RUNNER] = seconds["runner_cpu_s"]
    return costs, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--raw", help="a folder to keep py-spy's raw profiles in")
    parser.add_argument("--again", action="store_true",
                        help="print the tables again from the profiles in --raw, running nothing")
    args = parser.parse_args()
    if args.again:
        for shape in args.shapes.split(","):
            _print_profiles(Path(args.raw), shape, max(100, int(SHAPES[shape][0] * args.scale)))
        return
    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
               "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(ROOT)}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="local", aws_secret_access_key="local")
        raw_dir = Path(args.raw or tmp)
        raw_dir.mkdir(parents=True, exist_ok=True)
        for shape in args.shapes.split(","):
            batches, devices, generated, flags, plain_flags, compressed = SHAPES[shape]
            batches = max(100, int(batches * args.scale))
            folder = Path(tmp) / shape
            make_input(folder, batches, devices, compressed=compressed, **generated)
            pattern = f"{folder}/*.ndjson" + (".gz" if compressed else "")
            for i, (name, _, command_for) in enumerate(
                    _runs(pattern, endpoint, tmp, flags, plain_flags, dask=False)):
                bucket = f"profile-{i}"
                client.create_bucket(Bucket=bucket)
                profiled(command_for(bucket), env, raw_dir / f"{shape}-{i}.txt")
                (raw_dir / f"{shape}-{i}.name").write_text(name)
                _empty(client, bucket)
            shutil.rmtree(folder)
            _print_profiles(raw_dir, shape, batches)


def _print_profiles(raw_dir: Path, shape: str, batches: int) -> None:
    """Microseconds of CPU per input batch, per cost and run, of a shape's profiles."""
    columns = {path.with_suffix(".name").read_text(): cpu_per_cost(path)
               for path in sorted(raw_dir.glob(f"{shape}-*.txt"))}
    names = list(columns)
    print(f"\n{shape}: {batches:,} input batches; µs of CPU per input batch (each cost's "
          f"share of py-spy's samples of the run's Python CPU time)")
    print("| cost | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    order = list(dict.fromkeys(cost for cost, _, _ in COSTS)) + [OTHER, RUNNER]
    for cost in order:
        if any(columns[n][0][cost] for n in names):
            cells = [f"{columns[n][0][cost] / batches * 1e6:,.1f}" for n in names]
            print(f"| {cost} | " + " | ".join(cells) + " |")
    totals = [f"**{sum(columns[n][0].values()) / batches * 1e6:,.1f}**" for n in names]
    print("| **all** | " + " | ".join(totals) + " |")
    print("| py-spy samples, idle left out | " + " | ".join(f"{columns[n][1]:,}" for n in names)
          + " |",
          flush=True)


if __name__ == "__main__":
    main()
