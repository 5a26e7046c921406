"""Write-once objects: retries find their own file, other data is never overwritten,
a failed multipart upload leaves nothing behind."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import os
import tempfile

import boto3
import botocore.exceptions
import pytest

from pipeline.checks import check_bucket_writable
from tests.conftest import list_keys
from tests.fault_proxy import FaultProxy
from transforms.io import s3, stores
from transforms.io.locations import Location
from transforms.io.stores import Outcome


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


@pytest.mark.parametrize("method", ["AES256", "aws:kms"])
def test_every_object_is_encrypted_single_put_and_multipart(s3_endpoint, bucket, method):
    key_id = None
    if method == "aws:kms":
        kms = boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    connection = s3.S3Connection(endpoint_url=s3_endpoint, sse_method=method, kms_key_id=key_id)
    store = stores.S3Store(connection, bucket, single_put_max_bytes=MIB, part_bytes=5 * MIB)
    for key, body in (("small.txt", b"{}\n"), ("big.txt", b"y" * (6 * MIB))):
        assert store.put_new(key, body, sha(body)) is Outcome.WRITTEN
        head = store.client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == method
        assert head["Metadata"][stores.CONTENT_HASH_METADATA] == sha(body)
        if key_id:
            assert key_id in head["SSEKMSKeyId"]
    # The bucket check's object too, and its second write in the same second finds it.
    check = check_bucket_writable(connection, bucket, "f")
    assert check.startswith("f/mParticle_Bucket_Verification_")
    head = store.client.head_object(Bucket=bucket, Key=check)
    assert head["ServerSideEncryption"] == method
    assert head["Metadata"][stores.CONTENT_HASH_METADATA] == sha(b"{}")
    assert read_back(store, check) == b"{}"
    # Written with If-None-Match: another object under its key is never overwritten.
    fixed = lambda: datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)  # noqa: E731
    taken = "mParticle_Bucket_Verification_20300101-000000.txt"
    store.client.put_object(Bucket=bucket, Key=taken, Body=b"someone else's")
    assert check_bucket_writable(connection, bucket, None, fixed) == taken
    assert read_back(store, taken) == b"someone else's"


def test_conditional_write_conflicts_are_retried_then_compared(s3_endpoint, bucket):
    """S3 answers 409 ConditionalRequestConflict to a conditional write racing another."""
    with FaultProxy(s3_endpoint, fault_rate=0.5, faults=("409",), seed=4) as proxy:
        store = stores.S3Store(s3.S3Connection(endpoint_url=proxy.endpoint), bucket,
                               single_put_max_bytes=MIB, part_bytes=5 * MIB)
        bodies = {f"k/{n}.txt": f"{n}\n".encode() for n in range(40)}
        bodies["k/big.txt"] = b"z" * (6 * MIB)
        for key, body in bodies.items():
            assert store.put_new(key, body, sha(body)) is Outcome.WRITTEN
        for key, body in bodies.items():  # a rerun: conflicts, then its own content
            assert store.put_new(key, body, sha(body)) is Outcome.ALREADY_PRESENT
    assert proxy.injected["409"] > 20
    assert {key: read_back(store, key) for key in bodies} == bodies


def test_a_multipart_upload_that_keeps_failing_leaves_nothing(s3_endpoint, bucket):
    with FaultProxy(s3_endpoint, fault_rate=0.0, faults=("500",),
                    fault_always=lambda method, target: "partNumber=2" in target) as proxy:
        connection = s3.S3Connection(endpoint_url=proxy.endpoint, retry_deadline_s=2)
        store = stores.S3Store(connection, bucket, single_put_max_bytes=MIB, part_bytes=5 * MIB)
        body = b"x" * (11 * MIB)
        with pytest.raises(s3.WriteGaveUp, match=f"s3://{bucket}/big.txt after"):
            store.put_new("big.txt", body, sha(body))
    assert store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list_keys(store.client, bucket) == []


def test_a_parquet_object_says_so_and_the_text_files_are_text(s3_store):
    from transforms.machinery.files import BatchFileNaming, Ndjson, Parquet, write_file
    from transforms.values import FileContent
    from transforms.write import DEAD_LETTER_FORMAT

    content = FileContent("App", "", [b'{"events":[]}'], 1_700_000_000_000, 0)
    for file_format, ending, kind in (
            (Parquet(), ".parquet", "application/vnd.apache.parquet"),
            (Ndjson(compress=True), ".txt.gz", "text/plain"),
            (Ndjson(), ".txt", "text/plain"), (DEAD_LETTER_FORMAT, ".ndjson", "text/plain")):
        key, _, _ = write_file(s3_store, "k", file_format, BatchFileNaming(None), content)
        assert key.startswith("k/App_") and key.endswith(ending)
        assert s3_store.client.head_object(Bucket=s3_store.bucket, Key=key)["ContentType"] == kind


def test_a_location_names_its_store_and_the_prefix_inside_it(s3_endpoint, bucket, tmp_path):
    assert (Location.of("s3://bkt/a/b/").bucket, Location.of("s3://bkt/a/b/").prefix) == (
        "bkt", "a/b")
    assert (Location.of("s3://bkt").bucket, Location.of("s3://bkt").prefix) == ("bkt", "")
    assert Location.of(str(tmp_path)) == Location(None, str(tmp_path))
    assert not Location.of(str(tmp_path)).on_s3 and Location.of("s3://bkt").on_s3
    connection = s3.S3Connection(endpoint_url=s3_endpoint)
    store, prefix = stores.open_store(f"s3://{bucket}/a/b/", connection)
    assert (type(store), store.bucket, store.connection, prefix) == (
        stores.S3Store, bucket, connection, "a/b")
    assert store.put_new("a/b/x.txt", b"x", sha(b"x")) is Outcome.WRITTEN
    local, prefix = stores.open_store(str(tmp_path / "dead"), connection)
    assert (type(local), local.root, prefix) == (stores.LocalDirStore, str(tmp_path / "dead"), "")


def test_a_hundred_keys_taken_by_other_data_is_an_error_naming_the_last(tmp_path):
    store = stores.LocalDirStore(str(tmp_path))
    for n in range(stores.MAX_KEY_ATTEMPTS):
        store.put_new(f"k{n}", b"theirs", sha(b"theirs"))
    with pytest.raises(RuntimeError, match="^100 keys in a row were taken by other data, the "
                                           "last 'k99'$"):
        stores.write_once(store, lambda attempt: f"k{attempt}", b"ours", sha(b"ours"))


def test_a_local_file_is_made_beside_its_name_not_in_the_system_temporary_directory(
    tmp_path, monkeypatch
):
    """Made in its own directory and linked to its name: a file never appears half written,
    and a link across filesystems (from the system's temporary directory) would fail."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-directory"))
    store = stores.LocalDirStore(str(tmp_path / "out"))
    assert store.put_new("d/f.ndjson", b"x\n", sha(b"x\n")) is Outcome.WRITTEN
    assert os.listdir(tmp_path / "out" / "d") == ["f.ndjson"]


def test_an_upload_whose_abort_failed_is_disowned_and_never_completed_later(s3_store):
    """When the abort of a failed multipart upload fails too, the writer is disowned:
    closed, so that collecting it later (its close() runs then) completes nothing."""
    import smart_open

    writer = smart_open.open(
        f"s3://{s3_store.bucket}/big.txt", "wb", compression="disable",
        transport_params={"client": s3_store.client, "multipart_upload": True,
                          "min_part_size": 5 * MIB})
    writer.write(b"x" * (6 * MIB))  # a part is uploaded
    stores._abandon(writer)  # noqa: SLF001 - what the store does when the abort fails
    assert writer.closed
    writer.close()
    assert list_keys(s3_store.client, s3_store.bucket) == []
    [upload] = s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket)["Uploads"]
    s3_store.client.abort_multipart_upload(Bucket=s3_store.bucket, Key="big.txt",
                                           UploadId=upload["UploadId"])


def test_a_multipart_upload_whose_abort_fails_too_says_so_and_gives_up(
    s3_endpoint, bucket, caplog
):
    with FaultProxy(s3_endpoint, fault_rate=0.0, faults=("500",), fault_always=lambda method,
                    target: "partNumber=2" in target or method == "DELETE") as proxy:
        connection = s3.S3Connection(endpoint_url=proxy.endpoint, retry_deadline_s=1)
        store = stores.S3Store(connection, bucket, single_put_max_bytes=MIB, part_bytes=5 * MIB)
        body = b"x" * (11 * MIB)
        with pytest.raises(s3.WriteGaveUp, match=rf"^Gave up writing s3://{bucket}/big.txt after "
                                                 r"[0-9] s of S3 errors \(--s3_write_deadline_s=1\)"
                                                 r": InternalError "):
            store.put_new("big.txt", body, sha(body))
    assert (f"could not abort the failed multipart upload of s3://{bucket}/big.txt (An error "
            "occurred (InternalError)") in caplog.text
    assert "its parts stay until a lifecycle rule or s3:AbortMultipartUpload removes them" \
        in caplog.text


def test_a_body_up_to_the_bound_goes_in_one_put_and_as_it_is(s3_store):
    store = stores.S3Store(s3_store.connection, s3_store.bucket, single_put_max_bytes=MIB,
                           part_bytes=5 * MIB)
    store.put_new("k/one.bin", b"y" * MIB, sha(b"y" * MIB))
    assert "-" not in store.client.head_object(Bucket=store.bucket, Key="k/one.bin")["ETag"]
    gzipped = gzip.compress(b"line\n", mtime=0)
    store.put_new("k/f.txt.gz", gzipped, sha(gzipped))  # already gzipped: not again
    assert read_back(store, "k/f.txt.gz") == gzipped
    assert Location.of("s3://b/Xdead/").prefix == "Xdead"
