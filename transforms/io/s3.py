"""S3 access: the connection settings, a client, what its errors say.

`S3Connection` is a picklable value that workers turn into a boto3 client in
`DoFn.setup` (one per process). Its secret never shows in `repr`, logs or display data.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import boto3
import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.session

from transforms.io import retries

SSE_METHODS = ("None", "AES256", "aws:kms")
ROLE_SESSION_NAME = "mparticle-s3-forwarder"
# Start-up checks (`pipeline.checks`) give up after this many read timeouts (60 s by
# default), so an endpoint that accepts connections but never answers fails the run
# within a minute.
CHECK_TIMEOUTS = 3


@dataclasses.dataclass(frozen=True)
class S3Connection:
    """How to reach the bucket. Blank keys mean the default AWS credential chain."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    role_arn: str | None = None
    sse_method: str = "None"
    kms_key_id: str | None = None
    connect_timeout_s: float = retries.DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = retries.DEFAULT_READ_TIMEOUT_S
    retry_deadline_s: float = retries.DEFAULT_DEADLINE_S

    def for_checks(self) -> S3Connection:
        """The same connection with the start-up checks' shorter retry deadline."""
        deadline_s = CHECK_TIMEOUTS * max(self.read_timeout_s, self.connect_timeout_s)
        return dataclasses.replace(self, retry_deadline_s=min(self.retry_deadline_s, deadline_s))

    @property
    def where(self) -> str:
        """The region, and the endpoint if not AWS's, for messages."""
        where = f"region {self.region!r}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def put_arguments(self) -> dict[str, str]:
        """The server-side-encryption arguments of every PutObject."""
        if self.sse_method == "AES256":
            return {"ServerSideEncryption": "AES256"}
        if self.sse_method == "aws:kms":
            arguments = {"ServerSideEncryption": "aws:kms"}
            if self.kms_key_id:
                arguments["SSEKMSKeyId"] = self.kms_key_id
            return arguments
        return {}


def _assumed_role_session(base: boto3.Session, connection: S3Connection) -> boto3.Session:
    # An S3-compatible store (MinIO, the local server) serves STS at its own endpoint.
    sts = base.client("sts", region_name=connection.region, endpoint_url=connection.endpoint_url)

    def refresh() -> dict[str, Any]:
        credentials = sts.assume_role(
            RoleArn=connection.role_arn, RoleSessionName=ROLE_SESSION_NAME
        )["Credentials"]
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": credentials["Expiration"].isoformat(),
        }

    botocore_session = botocore.session.get_session()
    # botocore has no public setter for a session's credentials; this private
    # attribute is the one boto3's own docs and botocore's tests use.
    botocore_session._credentials = (
        botocore.credentials.RefreshableCredentials.create_from_metadata(
            metadata=refresh(), refresh_using=refresh, method="sts-assume-role"
        )
    )
    return boto3.Session(botocore_session=botocore_session, region_name=connection.region)


@functools.cache
def make_client(connection: S3Connection) -> Any:
    """A boto3 S3 client for the connection (path-style for a custom endpoint).

    One per connection and process: boto3 clients are thread-safe, and making
    one reads botocore's service models from disk, which every DoFn's setup
    would otherwise repeat.
    """
    session = boto3.Session(
        aws_access_key_id=connection.access_key_id or None,
        aws_secret_access_key=connection.secret_access_key or None,
        region_name=connection.region,
    )
    if connection.role_arn:
        session = _assumed_role_session(session, connection)
    config = botocore.config.Config(
        retries={"mode": "standard", "total_max_attempts": 1},  # see transforms.io.retries
        connect_timeout=connection.connect_timeout_s,
        read_timeout=connection.read_timeout_s,
        s3={"addressing_style": "path"} if connection.endpoint_url else None,
    )
    client = session.client("s3", endpoint_url=connection.endpoint_url, config=config)
    return retries.install(client, retries.RetryPolicy(deadline_s=connection.retry_deadline_s))


def error_code(err: botocore.exceptions.ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def client_error_in(err: BaseException) -> botocore.exceptions.ClientError | None:
    """The ClientError an error is or was caused by (smart_open wraps them)."""
    while err is not None:
        if isinstance(err, botocore.exceptions.ClientError):
            return err
        err = err.__cause__ or err.__context__
    return None


class WriteGaveUp(RuntimeError):
    """S3 kept failing one write past the retry deadline; the message is one sentence."""

    PREFIX = "Gave up writing "


def gave_up(bucket: str, key: str, connection: S3Connection, elapsed_s: float,
            err: Exception) -> WriteGaveUp:
    """The error for a write that failed after all its retries, naming the key."""
    detail = f"{error_code(err)} {err}" if isinstance(
        err, botocore.exceptions.ClientError) else f"{type(err).__name__}: {err}"
    return WriteGaveUp(
        f"{WriteGaveUp.PREFIX}s3://{bucket}/{key} after {elapsed_s:.0f} s of S3 errors "
        f"(--s3_write_deadline_s={connection.retry_deadline_s:g}): {detail}"
    )
