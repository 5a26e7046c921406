"""Role-based auth (`--aws_role_arn`): the client signs with the credentials of the role
it assumed, through the store's own STS, in the connection's region, and takes new ones
when they expire. Against a local server that enforces IAM."""

from __future__ import annotations

import pytest

from transforms.io import s3


def test_the_client_writes_as_the_role_it_assumed(iam_server):
    endpoint, key, role_arn = iam_server["endpoint"], iam_server["assumer"], iam_server["role_arn"]
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
