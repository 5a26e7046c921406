"""Start-up checks: everything the run needs is proved before anything is read.

Each failure is one sentence: `ConfigError` (exit 2) for what the user typed,
`s3.BucketCheckError` (exit 3) for a location that cannot be written.
"""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

import botocore.exceptions

from pipeline.config import ConfigError, ForwarderConfig
from transforms import read, s3, stores


def check_inputs_exist(patterns: Sequence[str], connection: s3.S3Connection) -> None:
    """Every --input names at least one file it can list, or one sentence says why."""
    client = read.input_client(patterns, connection.for_checks())
    for pattern in patterns:
        try:
            paths = read.expand_pattern(pattern, client)
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
    written = [f"s3://{config.bucket}/"
               + s3.check_bucket_writable(config.connection, config.bucket, config.folder)]
    bucket, prefix = stores.split_location(config.dead_letter_location)
    if bucket is None:
        _check_local_directory(prefix)
        written.append(prefix)
    elif bucket != config.bucket:  # the bucket's own check covers a prefix inside it
        try:
            key = s3.check_bucket_writable(config.connection, bucket, prefix)
        except s3.BucketCheckError as err:
            raise s3.BucketCheckError(f"--dead_letter_location: {err}") from None
        written.append(f"s3://{bucket}/{key}")
    return written


def _check_local_directory(path: str) -> None:
    """Creates the directory if needed and proves a file can be made in it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as err:
        raise s3.BucketCheckError(
            f"--dead_letter_location {path!r} cannot be written: {err.strerror or err}."
        ) from None
