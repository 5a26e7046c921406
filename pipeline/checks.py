"""Start-up checks: everything the run needs is proved before anything is read.

Each failure is one sentence: `ConfigError` (exit 2) for what the user typed,
`BucketCheckError` (exit 3) for a location that cannot be written, `SourceCheckError`
(exit 3) for a Pub/Sub subscription or topic that cannot be read.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
from typing import Callable, Sequence

import botocore.exceptions

from pipeline.config import ConfigError, ForwarderConfig
from transforms.io import inputs, pubsub_resources, s3, stores
from transforms.io.locations import Location
from transforms.rules import naming

# What mParticle writes to prove a bucket writable, and so does the forwarder.
VERIFICATION_BODY = b"{}"


class BucketCheckError(RuntimeError):
    """The start-up write check failed; the message says bucket, region and why."""


class SourceCheckError(RuntimeError):
    """The live source cannot be read; the message names it and says why."""


def check_live_source(config: ForwarderConfig) -> str:
    """Proves the subscription readable, and for a topic makes the subscription it is
    read through unless an earlier run made it; returns what the run reads. Raises
    SourceCheckError (missing, denied, a name refused, Pub/Sub unreachable)."""
    if config.input_topic:
        problem = pubsub_resources.topic_problem(config.input_topic)
        if problem is None:
            made, problem = pubsub_resources.ensure_subscription(
                config.input_topic, config.topic_subscription)
        if problem is not None:
            raise SourceCheckError(problem)
        return (f"topic {config.input_topic} through subscription {config.topic_subscription} "
                f"({'made now' if made else 'made by an earlier run'})")
    problem = pubsub_resources.subscription_problem(config.input_subscription)
    if problem is not None:
        raise SourceCheckError(problem)
    return f"subscription {config.input_subscription}"


def check_inputs_exist(patterns: Sequence[str], connection: s3.S3Connection) -> None:
    """Every --input names at least one file it can list, or one sentence says why."""
    client = inputs.input_client(patterns, connection.for_checks())
    for pattern in patterns:
        try:
            paths = inputs.expand_pattern(pattern, client)
        except botocore.exceptions.ClientError as err:
            code = s3.error_code(err)
            raise ConfigError(f"--input {pattern!r} cannot be listed: {code}.") from None
        except (ValueError, OSError, botocore.exceptions.BotoCoreError) as err:
            raise ConfigError(f"--input {pattern!r} cannot be listed: {err}") from None
        if not paths:
            raise ConfigError(f"--input {pattern!r} matches no file.")


def check_output_writable(config: ForwarderConfig) -> list[str]:
    """Writes the verification objects of the bucket and of the dead-letter location;
    returns where. Raises BucketCheckError saying what was denied."""
    # Beside Parquet files the object is hidden (a leading "_"), as Athena, Hive and
    # Spark skip such files: a table over the folder reads Parquet files only.
    hidden = config.layout.output_format == "parquet"
    written = [Location(config.bucket, "").url_of(check_bucket_writable(
        config.connection, config.bucket, config.layout.folder, hidden=hidden))]
    dead_letters = Location.of(config.dead_letter_location)
    if not dead_letters.on_s3:
        _check_local_directory(dead_letters.path)
        written.append(dead_letters.path)
    elif dead_letters.bucket != config.bucket:  # the bucket's own check covers a prefix inside it
        try:
            key = check_bucket_writable(config.connection, dead_letters.bucket,
                                        dead_letters.prefix)
        except BucketCheckError as err:
            raise BucketCheckError(f"--dead_letter_location: {err}") from None
        written.append(dead_letters.url_of(key))
    return written


def check_bucket_writable(
    connection: s3.S3Connection, bucket: str, folder: str | None,
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
    hidden: bool = False,
) -> str:
    """Writes mParticle's verification object (`{}`) as every object is written
    (`stores.S3Store`: If-None-Match, the content hash, server-side encryption);
    returns its key. Raises BucketCheckError naming the bucket, the region and what
    was denied. Transient errors are retried for the start-up checks' shorter deadline.
    """
    connection = connection.for_checks()
    key = naming.verification_key(folder, now(), hidden)
    where = f"bucket {bucket!r} in {connection.where}"
    store = stores.S3Store(connection, bucket)
    try:
        # Any outcome proves the write: S3 answers a conditional PUT on a taken key
        # (412) only to a caller allowed to write it.
        store.put_new(key, VERIFICATION_BODY, hashlib.sha256(VERIFICATION_BODY).hexdigest())
    except botocore.exceptions.ClientError as err:
        if s3.error_code(err) == "NoSuchBucket":
            raise BucketCheckError(f"S3 {where} does not exist.") from None
        raise BucketCheckError(
            f"S3 {where} refused the write check PutObject of {key!r}: {_said(err)}"
        ) from None
    except botocore.exceptions.NoCredentialsError:
        raise BucketCheckError(
            f"No AWS credentials found to write to S3 {where}: set --access_key_id and "
            "--secret_access_key, or give the default credential chain a role."
        ) from None
    except (botocore.exceptions.BotoCoreError, s3.WriteGaveUp) as err:
        answer = s3.client_error_in(err)
        if answer is not None:  # the server answered, with errors, until the deadline
            raise BucketCheckError(
                f"S3 {where} kept failing the write check PutObject of {key!r} for "
                f"{connection.retry_deadline_s:g} s: {_said(answer)}"
            ) from None
        cause = err.__cause__ if isinstance(err, s3.WriteGaveUp) and err.__cause__ else err
        raise BucketCheckError(
            f"Cannot reach S3 {where} (connect timeout {connection.connect_timeout_s:g} s, "
            f"read timeout {connection.read_timeout_s:g} s, gave up after "
            f"{connection.retry_deadline_s:g} s): {cause}"
        ) from None
    return key


def _said(err: botocore.exceptions.ClientError) -> str:
    """The server's error code and message."""
    return f"{s3.error_code(err)} {err.response.get('Error', {}).get('Message', '')}".strip()


def _check_local_directory(path: str) -> None:
    """Creates the directory if needed and proves a file can be made in it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as err:
        raise BucketCheckError(
            f"--dead_letter_location {path!r} cannot be written: {err.strerror or err}."
        ) from None
