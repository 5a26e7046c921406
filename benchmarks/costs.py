"""What each step of the forwarder costs per batch, timed alone, beside the plain job's.

    .venv/bin/python -m benchmarks.costs                  # every shape of benchmarks.run
    .venv/bin/python -m benchmarks.costs --batches 5000   # fewer batches per shape

A profile of a whole run (`benchmarks.profile`) says where its time goes, but a
sampler cannot tell a thread that runs from one that waits for the GIL at the same
line. So here each step the pipeline takes for a batch runs alone, in one thread,
over the same batches (`--batches` of each shape, from `sample_data.generate` with
the shape's parameters), and its time is the best of `--repeats` passes, in µs per
input batch, with Python's garbage collector off during a pass (it would otherwise
scan the batches this process keeps for the other steps). The steps the plain job
(`benchmarks.plain`) also takes are timed in its own code beside them. What no step
here covers (Beam's per-element calls between the steps, the runner's shuffles,
threads, S3) is the rest of a run's CPU time, which `benchmarks.profile` attributes.
"""

from __future__ import annotations

import argparse
import collections
import gc
import time
from typing import Callable

import orjson

from benchmarks import plain
from benchmarks.run import SHAPES
from pipeline.tools.sample_data import generate
from transforms import parse
from transforms.machinery import spill_files
from transforms.machinery.files import GZIP_LEVEL, Ndjson
from transforms.machinery.shuffled import ShuffleCodec, ShuffledBatch, ShuffledBatchCoder
from transforms.rules import batch_json, grouping, settings
from transforms.rules.batch_parts import BatchParts
from transforms.values import RawRecord

WINDOW_MS = 600_000


def best_us(step: Callable[[], None], count: int, repeats: int) -> float:
    """The best of `repeats` runs of `step` (which does `count` items), in µs per item."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()  # what this process holds for the other steps is not theirs to scan
        try:
            started = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - started)
        finally:
            gc.enable()
    return best / count * 1e6


def ledger(shape: str, batches: int, repeats: int) -> list[tuple[str, float, str]]:
    """(step, µs per input batch, what it is) of one shape."""
    _, devices, generated, flags, _, _ = SHAPES[shape]
    sessions = any("wait_for_complete_batch" in flag for flag in flags)
    lines = [orjson.dumps(batch) for batch in generate(batches, devices, **generated)]
    n = len(lines)
    records = [RawRecord(f"in.ndjson:{i}", line, None) for i, line in enumerate(lines, 1)]
    arrived = [parse.parse_batch(r, parse.DEFAULT_MAX_BATCH_BYTES, None)[0] for r in records]
    config = settings.ForwardingSettings()
    forwarded = [a._replace(batch=settings.apply_settings(a.batch, config)[0]) for a in arrived]
    forwarded = [a for a in forwarded if a.batch.get("events")]
    codec = ShuffleCodec.trained_on(lines[:1000])
    shuffled = [ShuffledBatch.of(a, codec) for a in forwarded]
    parts = [BatchParts.of(a.batch).to_bytes() for a in forwarded]
    compressed = [codec.compress(p) for p in parts]
    coder = ShuffledBatchCoder()
    encoded = [coder.encode(s) for s in shuffled]
    groups = collections.defaultdict(list)
    span = 86_400_000 if sessions else WINDOW_MS  # a device's window (sessions: its day)
    for a, item in zip(forwarded, shuffled, strict=True):
        groups[(a.device, item.arrival_ms // span)].append(item)
    group_parts = [[(s.arrival_ms, s.parts(codec))
                    for s in sorted(group, key=grouping.arrival_order)]
                   for group in groups.values()]
    merged = [grouping.merge_batches(g).line for g in group_parts]
    files = [merged[i:i + 2000] for i in range(0, len(merged), 2000)]
    counts = collections.Counter()
    plain_batches = [plain.parsed(line, "in.ndjson:1", counts) for line in lines]
    plain_groups = collections.defaultdict(list)
    for item in plain_batches:
        if item is not None:
            plain_groups[(item[0], item[1] // span)].append(item[1:])
    for group in plain_groups.values():
        group.sort(key=lambda b: (b[0], b[1]))

    def each(items, function):
        def step():
            for item in items:
                function(item)
        return step

    rows = [
        ("parse JSON (orjson)", best_us(each(lines, orjson.loads), n, repeats),
         "both: orjson.loads"),
        ("64-bit integer check", best_us(each(lines, batch_json._has_wide_integer), n, repeats),
         "pipeline: find integers beyond 64 bits (plain: orjson reads them as floats)"),
        ("nesting check", best_us(each(lines, batch_json.decode), n, repeats)
         - best_us(each(lines, orjson.loads), n, repeats)
         - best_us(each(lines, batch_json._has_wide_integer), n, repeats),
         "pipeline: the rest of batch_json.decode (bracket count, walk over 100)"),
        ("validate and key (parse_batch less decode)",
         best_us(each(records, lambda r: parse.parse_batch(r, parse.DEFAULT_MAX_BATCH_BYTES,
                                                           None)), n, repeats)
         - best_us(each(lines, batch_json.decode), n, repeats),
         "pipeline: dead letters with reasons, arrival time, device key, app name"),
        ("settings", best_us(each(arrived, lambda a: settings.apply_settings(a.batch, config)),
                             n, repeats), "pipeline: every setting of the integration"),
        ("plain: parse, validate, settings", best_us(each(
            lines, lambda line: plain.parsed(line, "in.ndjson:1", counts)), n, repeats),
         "plain job: the same three in one function (its parse included)"),
        ("encoding parts", best_us(each(forwarded, lambda a: BatchParts.of(a.batch).to_bytes()),
                                   n, repeats),
         "pipeline: each event and the context as JSON bytes, for the merge"),
        ("shuffle compression (zstd, both ways)", best_us(
            lambda: ([codec.compress(p) for p in parts], [codec.decompress(c) for c in compressed]),
            n, repeats), "pipeline: what crosses a shuffle is compressed"),
        ("Beam coder (both ways)", best_us(
            lambda: ([coder.encode(s) for s in shuffled], [coder.decode(e) for e in encoded]),
            n, repeats), "pipeline: ShuffledBatchCoder between steps"),
        ("spill (frame and block)", best_us(
            lambda: [spill_files.block(b"".join(spill_files.frame(("d", s)) for s in shuffled[
                i:i + 500])) for i in range(0, len(shuffled), 500)], n, repeats),
         "pipeline, sliced runs: to local disk, zstd"),
        ("merge per device", best_us(each(group_parts, grouping.merge_batches), n, repeats),
         "pipeline: merge_batches over its parts"),
        ("plain: merge per device", best_us(each(list(plain_groups.values()), plain.merged),
                                            n, repeats), "plain job: its merge"),
        ("gzip output", best_us(each(files, Ndjson(compress=True).body), n, repeats),
         f"both: gzip level {GZIP_LEVEL} of the files"),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="default,many-small,few-large,sessions")
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tables = {shape: ledger(shape, args.batches, args.repeats)
              for shape in args.shapes.split(",")}
    shapes = list(tables)
    print(f"\nµs per input batch, each step alone over {args.batches:,} batches of each shape "
          f"(best of {args.repeats})")
    print("| step | " + " | ".join(shapes) + " | what |")
    print("|---|" + "---:|" * len(shapes) + "---|")
    for index, (step, _, what) in enumerate(tables[shapes[0]]):
        cells = [f"{tables[shape][index][1]:.1f}" for shape in shapes]
        print(f"| {step} | " + " | ".join(cells) + f" | {what} |")


if __name__ == "__main__":
    main()
