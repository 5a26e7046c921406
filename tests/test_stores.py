"""Write-once objects: retries find their own file, other data is never overwritten,
a failed multipart upload leaves nothing behind."""

from __future__ import annotations

import hashlib

import botocore.exceptions
import pytest

from tests.conftest import list_keys
from transforms import s3, stores
from transforms.stores import Outcome


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture
def s3_store(s3_endpoint, bucket):
    return stores.S3Store(s3.S3Connection(endpoint_url=s3_endpoint), bucket)


@pytest.fixture(params=["s3", "local"])
def store(request, s3_store, tmp_path):
    return s3_store if request.param == "s3" else stores.LocalDirStore(str(tmp_path))


def read_back(store, key: str) -> bytes:
    if isinstance(store, stores.S3Store):
        return store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    with open(f"{store.root}/{key}", "rb") as stream:
        return stream.read()


def test_retry_of_the_same_content_finds_its_own_file(store):
    body = b'{"a":1}\n'
    assert store.put_new("k/one.txt", body, sha(body)) is Outcome.WRITTEN
    assert store.put_new("k/one.txt", body, sha(body)) is Outcome.ALREADY_PRESENT
    assert read_back(store, "k/one.txt") == body


def test_other_data_under_the_key_is_never_overwritten(store):
    theirs, ours = b"their data\n", b"our data\n"
    store.put_new("k/f_00001.txt", theirs, sha(theirs))
    key, outcome = stores.write_once(
        store, lambda attempt: f"k/f_{attempt + 1:05d}.txt", ours, sha(ours)
    )
    assert (key, outcome) == ("k/f_00002.txt", Outcome.WRITTEN)
    assert read_back(store, "k/f_00001.txt") == theirs
    assert read_back(store, key) == ours


def test_local_store_leaves_no_temporary_files(tmp_path):
    store = stores.LocalDirStore(str(tmp_path))
    store.put_new("a/b.txt", b"x", sha(b"x"))
    store.put_new("a/b.txt", b"y", sha(b"y"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.txt"]


MIB = 1024 * 1024


def test_large_file_goes_up_in_parts_with_encryption(s3_endpoint, bucket):
    connection = s3.S3Connection(endpoint_url=s3_endpoint, sse_method="AES256")
    store = stores.S3Store(connection, bucket, single_put_max_bytes=MIB, part_bytes=5 * MIB)
    body = bytes(range(256)) * (11 * MIB // 256)
    assert store.put_new("big.txt", body, sha(body)) is Outcome.WRITTEN
    head = store.client.head_object(Bucket=bucket, Key="big.txt")
    assert head["ContentLength"] == len(body) and head["ServerSideEncryption"] == "AES256"
    assert head["ETag"].endswith('-3"')  # three parts
    assert read_back(store, "big.txt") == body


def test_failed_multipart_upload_is_aborted_and_leaves_no_partial_object(s3_endpoint, bucket):
    connection = s3.S3Connection(endpoint_url=s3_endpoint)
    store = stores.S3Store(connection, bucket, single_put_max_bytes=MIB, part_bytes=5 * MIB)
    theirs = b"already here\n"
    store.put_new("big.txt", theirs, sha(theirs))
    body = b"x" * (11 * MIB)
    # CompleteMultipartUpload fails (the key is taken): the parts must not linger.
    assert store.put_new("big.txt", body, sha(body)) is Outcome.KEY_TAKEN
    assert store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert read_back(store, "big.txt") == theirs
    # And an upload into a bucket that is gone fails loudly, leaving nothing.
    with pytest.raises(botocore.exceptions.ClientError):
        stores.S3Store(connection, "no-such-bucket-x").put_new("k.txt", b"x", sha(b"x"))
    assert list_keys(store.client, bucket) == ["big.txt"]

