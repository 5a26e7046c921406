"""What a set of runs writes, as digests: for comparing two versions of the forwarder.

    .venv/bin/python -m benchmarks.outputs OUT_DIR [--tree DIR] [CASE ...]

Runs `python -m pipeline` from the tree DIR (default: this checkout) on fixed
inputs and flag sets (CASES: the README's demo input, and four files of generated
batches as the benchmark makes them, in every batching mode, sliced and unsliced,
on the DirectRunner and Prism, gzip, shards, settings) against the embedded S3
server, with a fixed `--upload_day`. Writes, per case, OUT_DIR/<case>.objects (every
object's key, sha256 and size, the clock-named bucket-verification object left
out) and OUT_DIR/<case>.summary (the run's exit code and summary lines, the
seconds left out). Two versions wrote the same when `diff -r` of their OUT_DIRs is
empty. A refactoring that changes no output shows it so.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3

from pipeline.tools.local_services import moto_server
from pipeline.tools.sample_data import generate, write_ndjson

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "fixtures" / "mparticle-docs" / "eventsapi.sample.json"
if not SAMPLE.exists():
    SAMPLE = ROOT / "tests" / "data" / "eventsapi.sample.json"
_DAY = ["--upload_day=2026-11-30"]
_DEMO = ["--folder_name=mparticle", "--store_data_in_folders_by_date=true", *_DAY]
_BENCH = ["--use_compression=true", *_DAY]
_PRISM = ["--runner=PrismRunner"]
_SESSIONS = ["--wait_for_complete_batch=true"]
_PER_EVENT = ["--send_as_batch=false"]
# name → (input folder, flags)
CASES = {
    "demo": ("demo", _DEMO),
    "demo_prism": ("demo", _DEMO + _PRISM),
    "demo_sessions": ("demo", _DEMO + _SESSIONS),
    "demo_sessions_prism": ("demo", _DEMO + _SESSIONS + _PRISM),
    "demo_per_event": ("demo", _DEMO + _PER_EVENT),
    "demo_gzip_shards": ("demo", _DEMO + ["--use_compression=true", "--file_shards=3",
                                          "--max_batches_per_file=100",
                                          "--store_data_in_folders_by_date=false"]),
    "demo_sliced": ("demo", _DEMO + ["--arrival_slice_s=3600"]),
    "demo_sliced_sessions": ("demo", _DEMO + ["--arrival_slice_s=3600"] + _SESSIONS),
    "demo_sliced_per_event_prism": ("demo", _DEMO + ["--arrival_slice_s=3600"] + _PER_EVENT
                                    + _PRISM),
    "demo_settings": ("demo", _DEMO + ["--send_lifecycle_events=false",
                                       "--include_user_identities=false",
                                       "--metadata_field_exclusion=device_name,ip",
                                       "--send_batches_without_events=false"]),
    "bench": ("bench", _BENCH),
    "bench_sliced_prism": ("bench", _BENCH + ["--arrival_slice_s=21600"] + _PRISM),
    "bench_sessions": ("bench", _BENCH + _SESSIONS),
}


def make_inputs(folder: Path) -> None:
    """The demo's input (run_local.sh's) and four files of the benchmark's batches."""
    demo, bench = folder / "demo", folder / "bench"
    demo.mkdir(parents=True)
    bench.mkdir()
    shutil.copy(SAMPLE, demo / SAMPLE.name)
    write_ndjson(str(demo / "generated.ndjson.gz"), iter(generate(5000, 300)))
    (demo / "bad.ndjson").write_text('this line is not JSON\n{"events": "not a list"}\n')
    for index in range(4):
        write_ndjson(str(bench / f"part-{index}.ndjson"), iter(generate(10_000, 3000, index)))


def digest_bucket(client, bucket: str) -> str:
    lines = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            if "_Bucket_Verification_" in item["Key"]:
                continue  # named by the clock, by design (mParticle's)
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            lines.append(f"{item['Key']} {hashlib.sha256(body).hexdigest()} {len(body)}")
    return "\n".join(sorted(lines)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--inputs", type=Path,
                        default=Path(tempfile.gettempdir()) / "mparticle-s3-outputs-input",
                        help="where the inputs are made once and kept: dead letters name "
                             "their source's path, so both versions must read the same")
    parser.add_argument("cases", nargs="*", help=f"some of: {', '.join(CASES)}")
    args = parser.parse_args()
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"no case {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    tree = args.tree.resolve()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
           "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(tree)}
    work = args.inputs.resolve()
    if not work.exists():  # made aside, then renamed: never half made
        part = work.with_name(work.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        make_inputs(part)
        part.rename(work)
    with moto_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="local", aws_secret_access_key="local")
        for name in args.cases or CASES:
            folder, flags = CASES[name]
            bucket = name.replace("_", "-")
            client.create_bucket(Bucket=bucket)
            run = subprocess.run(
                [sys.executable, "-m", "pipeline", f"--s3_bucket_name={bucket}",
                 f"--s3_endpoint_url={endpoint}", f"--input={work}/{folder}/*", *flags],
                cwd=tree, env=env, capture_output=True, text=True)
            (args.out / f"{name}.objects").write_text(digest_bucket(client, bucket))
            summary = [line for line in run.stdout.splitlines()
                       if line.startswith("  ") and "seconds:" not in line]
            (args.out / f"{name}.summary").write_text(
                "\n".join([f"exit {run.returncode}", *summary]) + "\n")
            objects = (args.out / f"{name}.objects").read_text().count("\n")
            print(f"{name:30} exit {run.returncode}  {objects:5d} objects", flush=True)


if __name__ == "__main__":
    main()
