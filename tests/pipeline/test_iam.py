"""The printed IAM policy (`--print_iam_policy`) against a server that enforces IAM:
it is exactly what the forwarder needs on its bucket, the abort of a failed
multipart upload included."""

from __future__ import annotations

import gc
import hashlib
import json
import re

import boto3
import pytest

from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import list_keys, moto_server, run_main
from transforms.io import s3, stores

BUCKET = "iam-enforced"
MIB = 1024 * 1024


def printed_user_policy(bucket: str) -> dict:
    code, out, _ = run_main([f"--s3_bucket_name={bucket}", "--print_iam_policy=user"])
    assert code == 0
    return json.loads(out)


def _user(client, name: str, policy: dict) -> s3.S3Connection:
    """An IAM user with `policy`, as the connection the forwarder makes from its keys."""
    client.create_user(UserName=name)
    client.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = client.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module")
def enforced():
    """A server that enforces IAM once set up: the bucket, an administrator, the
    forwarder's user under the printed policy, and one under it less the abort."""
    policy = printed_user_policy(BUCKET)
    without_abort = json.loads(json.dumps(policy))
    without_abort["Statement"][0]["Action"].remove("s3:AbortMultipartUpload")
    everything = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "10"}) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET)
        client = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        users = {name: _user(client, name, p) for name, p in (
            ("admin", everything), ("forwarder", policy), ("no-abort", without_abort))}
        yield endpoint, users


def _connection(endpoint: str, keys: tuple[str, str]) -> s3.S3Connection:
    return s3.S3Connection(endpoint_url=endpoint, access_key_id=keys[0],
                           secret_access_key=keys[1])


def test_the_policy_grants_each_action_the_forwarder_calls_and_no_other():
    [statement] = printed_user_policy(BUCKET)["Statement"]
    assert sorted(statement["Action"]) == [
        "s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"]
    assert statement["Resource"] == [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]
    code, out, _ = run_main([f"--s3_bucket_name={BUCKET}", "--print_iam_policy=role"])
    assert json.loads(out)["Statement"][0]["Action"] == statement["Action"]


def test_a_run_and_its_rerun_under_the_printed_policy(enforced, tmp_path):
    """The bucket check, forwarded files, dead letters in the bucket, and a rerun
    that finds its own files (HeadObject)."""
    endpoint, users = enforced
    write_ndjson(str(tmp_path / "in.ndjson"), generate(300, 20))
    with open(tmp_path / "in.ndjson", "a") as stream:
        stream.write("not json\n")
    keys = users["forwarder"]
    argv = [f"--s3_bucket_name={BUCKET}", f"--s3_endpoint_url={endpoint}",
            f"--input={tmp_path}/*", "--folder_name=run", f"--access_key_id={keys[0]}",
            f"--secret_access_key={keys[1]}", "--max_batches_per_file=20"]
    code, out, err = run_main(argv)
    assert code == 0, err
    code, again, err = run_main(argv)
    assert code == 0, err
    def count(name: str) -> int:
        return int(re.search(rf"^\s*{name}\s+([\d,]+)", again, re.M)[1].replace(",", ""))

    assert count("files_already_present") == (
        count("files_written") + count("dead_letter_files_written"))
    admin = s3.make_client(_connection(endpoint, users["admin"]))
    written = list_keys(admin, BUCKET, "run/")
    assert any("/_dead_letters/" in key for key in written)
    assert sum("Verification" in key for key in written) >= 1
    assert len(written) > 5


@pytest.mark.parametrize("user, orphans", [("forwarder", 0), ("no-abort", 1)])
def test_a_failed_multipart_upload_leaves_no_parts_under_the_printed_policy(
    enforced, user, orphans
):
    """The completion fails (the key is taken); the upload must then be aborted. Under
    the policy less s3:AbortMultipartUpload its parts stay behind, billed, unseen; and
    the writer whose abort failed must not try to complete it again when collected
    (before `stores._abandon`, gc.collect() below retried that for the write deadline)."""
    endpoint, users = enforced
    store = stores.S3Store(_connection(endpoint, users[user]), BUCKET,
                           single_put_max_bytes=MIB, part_bytes=5 * MIB)
    key = f"multipart/{user}.txt"
    theirs = b"already here\n"
    store.put_new(key, theirs, hashlib.sha256(theirs).hexdigest())
    body = b"x" * (11 * MIB)
    outcome = store.put_new(key, body, hashlib.sha256(body).hexdigest())
    gc.collect()  # an abandoned writer must not complete its upload now
    admin = s3.make_client(_connection(endpoint, users["admin"]))
    uploads = admin.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
    assert len(uploads) == orphans
    assert outcome is stores.Outcome.KEY_TAKEN
    assert admin.get_object(Bucket=BUCKET, Key=key)["Body"].read() == theirs

