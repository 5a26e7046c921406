"""The examples in the README and the docs run: every forwarder command of their `sh`
blocks, unchanged, against the embedded S3 server (`AWS_ENDPOINT_URL` points boto3 at
it, as it would at any S3-compatible store), each with the buckets it names made and
a file of generated batches under each `--input` pattern. Blocks titled "needs ..."
need what the title says (a cloud or a cluster) and are not run here; the other
commands of `sh` blocks (`./run_local.sh`, pip, the benchmarks, mkdocs) are what CI
itself and the benchmark smoke tests run."""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from pipeline.tools.local_services import moto_server
from pipeline.tools.sample_data import generate

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\S*)(.*)$")


def sh_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line, info after the language, text) of each ```sh block of a page."""
    blocks, lines = [], path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opened = _FENCE.match(lines[index])
        if opened and opened.group(1):
            end = next(at for at in range(index + 1, len(lines)) if lines[at] == "```")
            if opened.group(1) == "sh":
                blocks.append((index + 1, opened.group(2).strip(), "\n".join(
                    lines[index + 1:end])))
            index = end
        index += 1
    return blocks


def commands(text: str) -> list[list[str]]:
    """A block's commands, continuation lines joined, comments dropped."""
    return [argv for line in text.replace("\\\n", " ").splitlines()
            if (argv := shlex.split(line, comments=True))]


def forwarder_commands() -> list[tuple[str, list[str]]]:
    """(page:line, the forwarder's arguments) of every example that runs it."""
    found = []
    for page in PAGES:
        for line, info, text in sh_blocks(page):
            if info.startswith('title="needs'):
                continue
            for argv in commands(text):
                if argv[:3] == ["python", "-m", "pipeline"]:
                    found.append((f"{page.name}:{line}", argv[3:]))
                elif argv[0] == "mparticle-s3-forwarder" and argv[1:2] != ["install-engine"]:
                    found.append((f"{page.name}:{line}", argv[1:]))
    return found


EXAMPLES = forwarder_commands()


def test_the_pages_have_examples_to_run():
    assert len(EXAMPLES) >= 6, EXAMPLES


@pytest.fixture(scope="module")
def example_s3():
    with moto_server() as endpoint:
        yield endpoint


def _flag(args: list[str], name: str) -> list[str]:
    return [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]


@pytest.mark.parametrize("where, args", EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_every_forwarder_example_runs(where, args, example_s3, tmp_path):
    env = {**os.environ, "AWS_ENDPOINT_URL": example_s3, "AWS_ACCESS_KEY_ID": "example",
           "AWS_SECRET_ACCESS_KEY": "example", "AWS_DEFAULT_REGION": "us-east-1",
           "PYTHONPATH": str(ROOT)}
    client = boto3.client("s3", endpoint_url=example_s3, region_name="us-east-1",
                          aws_access_key_id="example", aws_secret_access_key="example")
    for bucket in _flag(args, "s3_bucket_name"):
        client.create_bucket(Bucket=bucket)
    batches = gzip.compress("".join(json.dumps(batch) + "\n"
                                    for batch in generate(200, 20)).encode())
    for pattern in _flag(args, "input"):
        assert pattern.startswith("s3://"), pattern
        bucket, _, key = pattern[len("s3://"):].partition("/")
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=key.replace("*", "sample").replace("?", "x"),
                          Body=batches)
    ran = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, f"{where}: {ran.stdout[-2000:]}{ran.stderr[-3000:]}"
    if _flag(args, "input"):
        assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in (
            ran.stdout)
