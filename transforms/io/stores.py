"""Write-once object stores: S3 (the product's output) and a local directory.

`put_new` writes an object under a key that must not exist yet, atomically:
a reader sees the whole object or nothing, and a failed upload leaves nothing
behind. If the key is taken it tells whether by the very same content (a
retried or re-run write: nothing to do) or by other data (the caller picks
another key). So no write ever overwrites other data, and a retry never adds
a second copy.
"""

from __future__ import annotations

import enum
import logging
import os
import tempfile
import time
from typing import Any, Callable, Protocol

import botocore.exceptions
import smart_open

from transforms.io import retries, s3
from transforms.io.locations import Location

# Largest body sent as one PutObject; above it the upload is multipart. S3
# takes 5 GiB in one PUT; a smaller bound keeps a retried request cheap.
SINGLE_PUT_MAX_BYTES = 128 * 1024 * 1024
MULTIPART_PART_BYTES = 64 * 1024 * 1024
CONTENT_HASH_METADATA = "content-sha256"
# The key holds an object already: 412 to If-None-Match, or NoSuchUpload when a
# completion that had succeeded is retried after its answer was lost.
_KEY_EXISTS = ("PreconditionFailed", "412", "NoSuchUpload")
MAX_KEY_ATTEMPTS = 100
_LOG = logging.getLogger(__name__)


class Outcome(enum.Enum):
    WRITTEN = "written"
    ALREADY_PRESENT = "already_present"  # same content under that key
    KEY_TAKEN = "key_taken"  # other content under that key


# What an object holds when its writer does not say (`FileFormat.content_type` does).
TEXT = "text/plain"


class ObjectStore(Protocol):
    def put_new(self, key: str, body: bytes, content_sha256: str,
                content_type: str = TEXT) -> Outcome: ...


class S3Store:
    """Objects under s3://bucket/, written through smart_open, with server-side
    encryption, the content hash and `If-None-Match: *` on every write.

    A body up to `single_put_max_bytes` goes up in one PutObject (atomic); a
    larger one in a multipart upload that is aborted if any step fails, the
    completion included, so it never leaves a partial object or orphaned parts.
    """

    def __init__(
        self,
        connection: s3.S3Connection,
        bucket: str,
        client: Any = None,
        single_put_max_bytes: int = SINGLE_PUT_MAX_BYTES,
        part_bytes: int = MULTIPART_PART_BYTES,
    ):
        self.connection = connection
        self.bucket = bucket
        self.client = client or s3.make_client(connection)
        self.single_put_max_bytes = single_put_max_bytes
        self.part_bytes = part_bytes

    def put_new(self, key: str, body: bytes, content_sha256: str,
                content_type: str = TEXT) -> Outcome:
        arguments = {
            **self.connection.put_arguments(),
            "ContentType": content_type,
            "Metadata": {CONTENT_HASH_METADATA: content_sha256},
        }
        started = time.monotonic()
        try:
            self._upload(key, body, arguments)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError, ValueError,
                OSError) as err:
            # smart_open raises a ClientError as the cause of a ValueError.
            client_error = s3.client_error_in(err)
            if client_error is not None and s3.error_code(client_error) in _KEY_EXISTS:
                return self._compare(key, content_sha256)
            cause = client_error or err
            if not retries.is_transient(cause):
                raise cause from None  # denied, no such bucket: retrying would not help
            # The client retried it until its deadline (transforms.io.retries).
            raise s3.gave_up(
                self.bucket, key, self.connection, time.monotonic() - started, cause
            ) from err
        return Outcome.WRITTEN

    def _upload(self, key: str, body: bytes, arguments: dict) -> None:
        single = len(body) <= self.single_put_max_bytes
        if single:
            client_kwargs = {"S3.Client.put_object": {**arguments, "IfNoneMatch": "*"}}
        else:
            client_kwargs = {
                "S3.Client.create_multipart_upload": arguments,
                "S3.Client.complete_multipart_upload": {"IfNoneMatch": "*"},
            }
        writer = smart_open.open(
            f"s3://{self.bucket}/{key}", "wb", compression="disable",
            transport_params={"client": self.client, "client_kwargs": client_kwargs,
                              "multipart_upload": not single, "min_part_size": self.part_bytes},
        )
        try:
            writer.write(body)
            writer.close()
        except BaseException:
            try:
                writer.terminate()  # a multipart upload is aborted: no orphaned parts
            except Exception as abort_error:  # denied, or S3 gone: the upload's error counts
                _LOG.warning(
                    "could not abort the failed multipart upload of s3://%s/%s (%s); its parts "
                    "stay until a lifecycle rule or s3:AbortMultipartUpload removes them",
                    self.bucket, key, abort_error)
                _abandon(writer)
            raise

    def _compare(self, key: str, content_sha256: str) -> Outcome:
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        if head.get("Metadata", {}).get(CONTENT_HASH_METADATA) == content_sha256:
            return Outcome.ALREADY_PRESENT
        return Outcome.KEY_TAKEN


def _abandon(writer: Any) -> None:
    """Marks a multipart writer whose abort failed as closed. Else, when it is garbage
    collected, io.IOBase's __del__ calls its close(), which tries again to complete the
    upload given up on: retried up to the write deadline in whichever thread collects it,
    and written, if it then succeeds, after the run has reported the file failed
    (smart_open 9.0.2 clears the upload id, which its `closed` reads, only on success)."""
    writer._upload_id = None  # noqa: SLF001 - no public way to disown the upload


class LocalDirStore:
    """Files under a local directory, each created whole by a hard link."""

    def __init__(self, root: str):
        self.root = root

    def put_new(self, key: str, body: bytes, content_sha256: str,
                content_type: str = TEXT) -> Outcome:
        """`content_type`: a local file has none."""
        path = os.path.join(self.root, key)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".tmp-", delete=False) as tmp:
            tmp.write(body)
        try:
            os.link(tmp.name, path)  # fails if the name exists: never an overwrite
        except FileExistsError:
            with open(path, "rb") as existing:
                same = existing.read() == body
            return Outcome.ALREADY_PRESENT if same else Outcome.KEY_TAKEN
        finally:
            os.unlink(tmp.name)
        return Outcome.WRITTEN


def write_once(
    store: ObjectStore, key_for_attempt: Callable[[int], str], body: bytes, content_sha256: str,
    content_type: str = TEXT,
) -> tuple[str, Outcome]:
    """Writes `body` (of `content_type`) under the first key that is free or already
    holds it."""
    for attempt in range(MAX_KEY_ATTEMPTS):
        key = key_for_attempt(attempt)
        outcome = store.put_new(key, body, content_sha256, content_type)
        if outcome is not Outcome.KEY_TAKEN:
            return key, outcome
    raise RuntimeError(
        f"{MAX_KEY_ATTEMPTS} keys in a row were taken by other data, the last {key!r}"
    )


def open_store(location: str, connection: s3.S3Connection) -> tuple[ObjectStore, str]:
    """The store for an `s3://bucket/prefix` or local directory, and the key prefix."""
    where = Location.of(location)
    if not where.on_s3:
        return LocalDirStore(where.path), ""
    return S3Store(connection, where.bucket), where.prefix
