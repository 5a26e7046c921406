"""Role-based auth (`--aws_role_arn`): the client signs with the credentials of the role
it assumed, through the store's own STS, in the connection's region, and takes new ones
when they expire. Against a local server that enforces IAM."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.conftest import moto_server
from transforms.io import s3

TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}


@pytest.fixture(scope="module")
def iam_server():
    """(endpoint, the user's keys, the role's ARN): the user may only assume the role,
    which may do anything in S3."""
    # The set-up's own requests are unauthenticated; IAM applies after them.
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "6"}) as endpoint:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="by-role")
        iam.create_user(UserName="assumer")
        iam.put_user_policy(UserName="assumer", PolicyName="p", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": "*"}]}))
        key = iam.create_access_key(UserName="assumer")["AccessKey"]
        role = iam.create_role(RoleName="writer", AssumeRolePolicyDocument=json.dumps(TRUST))
        iam.put_role_policy(RoleName="writer", PolicyName="w", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        yield endpoint, key, role["Role"]["Arn"]


def test_the_client_writes_as_the_role_it_assumed(iam_server):
    endpoint, key, role_arn = iam_server
    user = s3.S3Connection(region="eu-west-1", endpoint_url=endpoint,
                           access_key_id=key["AccessKeyId"],
                           secret_access_key=key["SecretAccessKey"], retry_deadline_s=2)
    denied = s3.make_client(user)
    with pytest.raises(Exception, match="AccessDenied"):
        denied.put_object(Bucket="by-role", Key="k", Body=b"x")
    client = s3.make_client(s3.S3Connection(**{**user.__dict__, "role_arn": role_arn}))
    client.put_object(Bucket="by-role", Key="k", Body=b"x")
    assert client.get_object(Bucket="by-role", Key="k")["Body"].read() == b"x"
    assert client.meta.region_name == "eu-west-1"
    credentials = client._request_signer._credentials  # noqa: SLF001 - what it signs with
    assert credentials.method == "sts-assume-role"
    frozen = credentials.get_frozen_credentials()
    assert frozen.access_key != key["AccessKeyId"] and frozen.token
    credentials._expiry_time = credentials._expiry_time.replace(year=2000)  # noqa: SLF001
    assert credentials.get_frozen_credentials().access_key != frozen.access_key  # refreshed
    client.put_object(Bucket="by-role", Key="k2", Body=b"y")
