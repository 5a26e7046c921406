"""Shared fixtures: a real S3-compatible server (moto's server mode) on loopback.

Tests reach it over HTTP through the same boto3 code the product uses.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from pipeline.tools.local_services import (  # noqa: F401 - the tests use them from here
    ROOT,
    free_port,
    moto_server,
    pstest_binary,
    pstest_server,
)
from transforms.io import s3

DATA = Path(__file__).parent / "data"
SAMPLE_BATCH = DATA / "eventsapi.sample.json"
FORWARDED_EXAMPLE = DATA / "s3-forwarded-example.ndjson"

# Credentials for the local server; any value works there.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


# One S3 server for many test processes, started by whoever runs them (the mutation
# run: a test process per mutant); without it, each test process starts its own.
SHARED_S3_ENV = "MPARTICLE_S3_TEST_ENDPOINT"


@pytest.fixture(scope="session")
def s3_endpoint():
    shared = os.environ.get(SHARED_S3_ENV)
    if shared:
        yield shared
        return
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_client(s3_endpoint):
    return s3.make_client(s3.S3Connection(endpoint_url=s3_endpoint))


_bucket_numbers = itertools.count()


@pytest.fixture
def bucket(s3_client) -> str:
    """A new, empty bucket for one test; on a shared server, emptied and removed after
    it (the server lives on, and process ids come round again)."""
    name = f"test-bucket-{os.getpid()}-{next(_bucket_numbers)}"
    s3_client.create_bucket(Bucket=name)
    yield name
    if os.environ.get(SHARED_S3_ENV):
        for key in list_keys(s3_client, name):
            s3_client.delete_object(Bucket=name, Key=key)
        for upload in s3_client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3_client.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                             UploadId=upload["UploadId"])
        s3_client.delete_bucket(Bucket=name)


def run_main(argv: list[str], **kwargs) -> tuple[int, str, str]:
    """Runs the entry point in-process; returns (exit code, stdout, stderr)."""
    from pipeline.run import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv, **kwargs)
    return code, out.getvalue(), err.getvalue()


def list_keys(client, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", ())]
    return sorted(keys)


@pytest.fixture(scope="session")
def pubsub_emulator():
    """A pstest server on a free loopback port; yields its host:port."""
    with pstest_server() as host:
        yield host


@pytest.fixture(scope="session")
def prism() -> str:
    """Prism, as `./run_local.sh` builds it (with the patch in `tools/prism`), found the
    way a run finds it; the tests stop with the product's own message if it is missing."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.runners.prism import binary as prism_binary

    return prism_binary(PipelineOptions([]))


# The bounded end-to-end tests run on both engines: the FnApiRunner (what
# `--runner=DirectRunner` runs) and Prism, Beam's portable runner.
RUNNERS = {"DirectRunner": ["--runner=DirectRunner"], "PrismRunner": ["--runner=PrismRunner"]}


@pytest.fixture(params=list(RUNNERS))
def runner_flags(request) -> list[str]:
    if request.param == "PrismRunner":
        request.getfixturevalue("prism")
    return RUNNERS[request.param]


def poll(condition, deadline_s: float, every_s: float = 0.5):
    """Calls `condition` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


# Reads up to `count` messages with the forwarder's PubSubReader (for at most
# `deadline_s`), cuts their checkpoint and prints how many; then "finalize"s it and
# ends, or "hold"s it, never finalized, until killed.
_READER_PROCESS = """
import sys, time
from transforms.io import pubsub_source
from transforms.io.pubsub_source import PubSubReader
subscription, count, deadline_s, then, lease_s = sys.argv[1:]
if lease_s:  # the lease its last extension gave what it holds
    pubsub_source.ACK_DEADLINE_S = int(lease_s)
reader = PubSubReader(subscription)
got, has, deadline = 0, reader.start(), time.monotonic() + float(deadline_s)
print("pulling", flush=True)
while got < int(count) and time.monotonic() < deadline:
    if has:
        got += 1
    else:
        time.sleep(0.05)
    has = reader.advance()
mark = reader.get_checkpoint_mark()
print("read", got, flush=True)
if then == "finalize":
    mark.finalize_checkpoint()
    reader.close()
else:
    time.sleep(600)
"""


def read_in_another_process(subscription: str, count: int, deadline_s: float,
                            env: dict | None = None) -> int:
    """How many messages (up to `count`) a reader in a process of its own gets, and
    acknowledges, within `deadline_s`."""
    done = subprocess.run(
        [sys.executable, "-c", _READER_PROCESS, subscription, str(count), str(deadline_s),
         "finalize", ""],
        cwd=ROOT, capture_output=True, text=True, env=env or dict(os.environ),
        timeout=deadline_s + 60)
    assert "read " in done.stdout, done.stderr[-2000:]
    return int(done.stdout.split("read ")[1].split()[0])


def read_and_die(subscription: str, count: int, lease_s: int | None = None,
                 publish: Callable[[], None] | None = None) -> None:
    """Reads `count` messages with the forwarder's PubSubReader in a process of its
    own, cuts their checkpoint, and kills the process (SIGKILL) before the checkpoint
    is finalized, as a crash between a bundle's reading and its commit would. What it
    held comes again when its lease (`lease_s`, default the source's) runs out.
    `publish`, if given, is called once the reader is pulling: what it publishes is
    read at once, not a process start-up later."""
    killed = subprocess.Popen(
        [sys.executable, "-c", _READER_PROCESS, subscription, str(count), "600", "hold",
         str(lease_s or "")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert killed.stdout.readline().strip() == "pulling"
        if publish is not None:
            publish()
        assert killed.stdout.readline().strip() == f"read {count}"
    finally:
        killed.send_signal(signal.SIGKILL)  # its leases stop being extended
        killed.wait()


# A role any principal may assume (the local server's IAM; `iam_server`).
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}


def _iam_user(iam, name: str, actions: list[str]) -> dict:
    """A user allowed `actions` on every resource; its access key."""
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    return iam.create_access_key(UserName=name)["AccessKey"]


@pytest.fixture(scope="session")
def iam_server() -> dict:
    """A local server that enforces IAM, with buckets "by-role" and "locked": its
    `endpoint`; the keys of `assumer`, who may only assume the role `role_arn`, which may
    do anything in S3; and the keys of `reader`, who may only read."""
    # The set-up's own ten requests are unauthenticated; IAM applies after them.
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "10"}) as endpoint:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        made = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for bucket in ("by-role", "locked"):
            made.create_bucket(Bucket=bucket)
        assumer = _iam_user(iam, "assumer", ["sts:AssumeRole"])
        reader = _iam_user(iam, "reader", ["s3:GetObject", "s3:ListBucket"])
        role = iam.create_role(RoleName="writer", AssumeRolePolicyDocument=json.dumps(TRUST))
        iam.put_role_policy(RoleName="writer", PolicyName="w", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        yield {"endpoint": endpoint, "assumer": assumer, "reader": reader,
               "role_arn": role["Role"]["Arn"]}
