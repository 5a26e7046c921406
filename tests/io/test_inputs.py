"""Input files (`transforms.io.inputs`): NDJSON, one document, arrays, gzip, bad lines,
globs, s3:// through the S3 server, and sampling for the shuffle's dictionary."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import SAMPLE_BATCH
from transforms.io import inputs, s3
from transforms.io.inputs import sample_records
from transforms.rules import batch_json


def records(path: str, data: bytes) -> list[tuple[str, bytes]]:
    return [(r.source, r.data) for r in inputs.read_records(path, io.BytesIO(data))]


def test_ndjson_lines_with_line_numbers_and_blank_lines_skipped():
    data = b'\n{"a":1}\n\n{"a":2}\r\n'
    assert records("f", data) == [("f:2", b'{"a":1}'), ("f:4", b'{"a":2}')]


def test_pretty_printed_single_batch_is_one_record():
    text = SAMPLE_BATCH.read_bytes()
    [(source, data)] = records("sample.json", text)
    assert source == "sample.json"
    assert json.loads(data) == json.loads(text)


def test_array_of_batches_gives_one_record_each():
    data = json.dumps([{"a": 1}, {"b": 9223372036854775807}], indent=2).encode()
    assert records("arr.json", data) == [
        ("arr.json#0", b'{"a":1}'),
        ("arr.json#1", b'{"b":9223372036854775807}'),
    ]


def test_one_line_array_is_a_document():
    assert records("a", b'[{"a":1},{"a":2}]\n') == [("a#0", b'{"a":1}'), ("a#1", b'{"a":2}')]


def test_garbage_first_line_does_not_stop_the_file():
    data = b'garbage\n{"a":1}\n{broken\n{"a":2}\n'
    assert records("g", data) == [
        ("g:1", b"garbage"), ("g:2", b'{"a":1}'), ("g:3", b"{broken"), ("g:4", b'{"a":2}'),
    ]


def test_gzip_files_are_read_by_extension(tmp_path):
    path = tmp_path / "batches.ndjson.gz"
    path.write_bytes(gzip.compress(b'{"a":1}\n{"a":2}\n'))
    with inputs.open_input(str(path)) as stream:
        got = [r.data for r in inputs.read_records(str(path), stream)]
    assert got == [b'{"a":1}', b'{"a":2}']


def test_local_globs_and_directories(tmp_path):
    for name in ("b.ndjson", "a.ndjson", "c.txt"):
        (tmp_path / name).write_text("{}\n")
    assert inputs.expand_pattern(str(tmp_path / "*.ndjson")) == [
        str(tmp_path / "a.ndjson"), str(tmp_path / "b.ndjson"),
    ]
    assert len(inputs.expand_pattern(str(tmp_path))) == 3
    assert inputs.expand_pattern(str(tmp_path / "none*")) == []


def test_s3_globs_and_gzip_read_through_the_s3_server(s3_endpoint, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="in/2024/x.ndjson.gz", Body=gzip.compress(b'{"a":1}\n'))
    s3_client.put_object(Bucket=bucket, Key="in/2024/y.ndjson", Body=b'{"a":2}\n')
    s3_client.put_object(Bucket=bucket, Key="other/z.ndjson", Body=b'{"a":3}\n')
    client = s3.make_client(s3.S3Connection(endpoint_url=s3_endpoint))
    paths = inputs.expand_pattern(f"s3://{bucket}/in/*/*.ndjson*", client)
    assert paths == [f"s3://{bucket}/in/2024/x.ndjson.gz", f"s3://{bucket}/in/2024/y.ndjson"]
    got = []
    for path in paths:
        with inputs.open_input(path, client) as stream:
            got += [r.data for r in inputs.read_records(path, stream)]
    assert got == [b'{"a":1}', b'{"a":2}']


@pytest.mark.parametrize("data", [b"", b"\n\n  \n"])
def test_empty_files_have_no_records(data):
    assert records("e", data) == []


@pytest.mark.parametrize("data", [
    b'\xef\xbb\xbf{"a":1}\n{"a":2}\n',
    b"\xef\xbb\xbf\n\n" + b'{"a":1}\n{"a":2}\n',
])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_record(data):
    got = records("bom.ndjson", data)
    assert [d for _, d in got] == [b'{"a":1}', b'{"a":2}']


def test_a_byte_order_mark_before_a_whole_document():
    data = b"\xef\xbb\xbf" + json.dumps({"a": 1}, indent=2).encode()
    assert [json.loads(d) for _, d in records("doc.json", data)] == [{"a": 1}]


def test_sample_records_reads_the_first_files_and_passes_over_unreadable_ones(tmp_path):
    (tmp_path / "a.ndjson.gz").write_bytes(b"not gzip at all")
    write_ndjson(str(tmp_path / "b.ndjson"), generate(30, 5))
    write_ndjson(str(tmp_path / "c.ndjson"), generate(30, 5))
    sampled = list(sample_records([str(tmp_path / "*")], max_records=40))
    assert len(sampled) == 40 and all(batch_json.decode(record)["events"] for record in sampled)


# Batches as a sender may shape them: any fields (integers beyond 64 bits too),
# events with ids and message ids that repeat, as numbers or strings, with or
# without times; sometimes no `events` at all.


