"""The whole pipeline (`python -m pipeline`'s main) against the S3 server over HTTP.

Objects are read back with boto3: names, folders, date folders, gzip, SSE as the
server reports it, every forwarded event exactly once, filtered events absent.
"""

from __future__ import annotations

import datetime
import gzip
import json
import re
import shutil

import boto3
import pytest

from pipeline.tools.sample_data import generate, write_ndjson
from tests.conftest import FORWARDED_EXAMPLE, SAMPLE_BATCH, list_keys, run_main
from tests.oracle import forwarded_event_ids
from transforms.rules import batch_json, grouping, naming

KEY = re.compile(
    r"^(?P<folder>out/)(?P<date>\d{4}-\d{2}-\d{2}/)?(?P<app>[A-Za-z0-9_.-]+)_"
    r"(?P<ts>\d{20})_(?P<digits>\d{5})\.txt(?P<gz>\.gz)?$"
)


@pytest.fixture
def inputs(tmp_path):
    """The real sample, mParticle's forwarded example and 400 generated batches."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE_BATCH, folder / "sample.json")
    shutil.copy(FORWARDED_EXAMPLE, folder / "forwarded.ndjson")
    write_ndjson(str(folder / "generated.ndjson.gz"), generate(400, 30))
    return folder


def input_batches(folder) -> list[dict]:
    batches = [json.loads(SAMPLE_BATCH.read_text())]
    batches += [json.loads(line) for line in FORWARDED_EXAMPLE.read_text().splitlines()]
    with gzip.open(folder / "generated.ndjson.gz", "rt") as stream:
        batches += [json.loads(line) for line in stream]
    return batches


def argv(endpoint, bucket, folder, *flags) -> list[str]:
    return [
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={endpoint}",
        f"--input={folder}/*", "--folder_name=out", *flags,
    ]


def forwarded_objects(client, bucket) -> dict[str, list[dict]]:
    """Key → forwarded batches, for every forwarded file (not checks, not dead letters)."""
    objects = {}
    for key in list_keys(client, bucket, "out/"):
        if "mParticle_Bucket_Verification_" in key or "/_dead_letters/" in key:
            continue
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        text = (gzip.decompress(body) if key.endswith(".gz") else body).decode("utf-8")
        assert text.endswith("\n")
        objects[key] = [json.loads(line) for line in text.splitlines()]
    return objects


def event_ids(batches) -> list[int]:
    return [batch_json.as_int(e["data"]["event_id"]) for b in batches for e in b["events"]]


def test_every_event_forwarded_exactly_once_in_named_dated_files(
    s3_endpoint, s3_client, bucket, inputs, runner_flags
):
    code, out, err = run_main(
        argv(s3_endpoint, bucket, inputs, "--store_data_in_folders_by_date=true", *runner_flags)
    )
    assert code == 0, err
    assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in out

    objects = forwarded_objects(s3_client, bucket)
    expected = forwarded_event_ids(input_batches(inputs))
    got = event_ids(b for batches in objects.values() for b in batches)
    assert sorted(got) == sorted(expected) and len(got) == len(set(got))

    filtered_types = {"user_attribute_change", "user_identity_change"}
    for key, batches in objects.items():
        match = KEY.match(key)
        assert match, key
        assert {naming.safe_app_name(b.get("application_info", {}).get("application_name"))
                for b in batches} == {match["app"]}
        first = batches[0]
        first_event_ms = grouping.event_time_ms(first["events"][0])
        assert match["date"] == naming.date_folder(first_event_ms) + "/"
        for batch in batches:
            assert isinstance(batch["user_identities"], list)  # outbound form
            assert not filtered_types & {e["event_type"] for e in batch["events"]}
    verification = [k for k in list_keys(s3_client, bucket) if "Verification" in k]
    assert len(verification) == 1
    assert s3_client.get_object(Bucket=bucket, Key=verification[0])["Body"].read() == b"{}"


def test_int64_values_and_untouched_fields_pass_through(
    s3_endpoint, s3_client, bucket, tmp_path, runner_flags
):
    line = ('{"events":[{"data":{"event_id":"9223372036854775807","timestamp_unixtime_ms":'
            '"1595542763908","custom_attributes":{"z":1,"a":1.5}},"event_type":"custom_event"}],'
            '"mpid":-9223372036854775808,"zeta":null,"alpha":[1,"2"]}')
    (tmp_path / "in.ndjson").write_text(line + "\n")
    code, _, err = run_main(argv(s3_endpoint, bucket, tmp_path, *runner_flags))
    assert code == 0, err
    [(key, [batch])] = forwarded_objects(s3_client, bucket).items()
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert body == line + "\n"
    assert key.startswith("out/unknown_app_20200723221923908000_")


@pytest.mark.parametrize("method", ["AES256", "aws:kms"])
def test_gzip_and_server_side_encryption_as_the_server_reports(
    s3_endpoint, s3_client, bucket, inputs, method, runner_flags
):
    flags = ["--use_compression=true", f"--server_side_encryption_method={method}"]
    if method == "aws:kms":
        kms = boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        flags.append(f"--kms_key_id={key_id}")
    code, _, err = run_main(argv(s3_endpoint, bucket, inputs, *flags, *runner_flags))
    assert code == 0, err
    keys = list(forwarded_objects(s3_client, bucket))  # decompresses every .gz
    assert keys and all(key.endswith(".txt.gz") for key in keys)
    for key in list_keys(s3_client, bucket):
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == method
        if method == "aws:kms":
            assert key_id in head["SSEKMSKeyId"]


def _sample_events(batches) -> list[str]:
    return [e["event_type"] for b in batches for e in b["events"]]


@pytest.mark.parametrize(
    "flags, check",
    [
        ([], lambda objs: len(_sample_events(objs)) == 12),
        (
            ["--include_metadata=false", "--include_user_identities=false", "--unique_id=acme"],
            lambda objs: all(
                "device_info" not in b and "user_identities" not in b and b["unique_id"] == "acme"
                for b in objs
            ),
        ),
        (["--send_as_batch=false"], lambda objs: len(objs) == 12
         and all(len(b["events"]) == 1 for b in objs)),
        (["--wait_for_complete_batch=true", "--session_gap_s=60"],
         lambda objs: len(objs) == 1 and len(objs[0]["events"]) == 12),
        (
            ["--send_lifecycle_events=false", "--send_screen_views=false",
             "--include_user_attribute_change_events=true"],
            lambda objs: sorted(set(_sample_events(objs))) == [
                "breadcrumb", "commerce_event", "crash_report", "custom_event",
                "network_performance", "push_registration", "user_attribute_change",
            ],
        ),
        (["--app_name=My App", "--max_batches_per_file=1"],
         lambda objs: len(objs) == 1),
        (["--metadata_field_exclusion=device_name,ip"],
         lambda objs: all("device" not in b["device_info"] and "ip" not in b
                          and "device_model" in b["device_info"] for b in objs)),
    ],
)
def test_real_sample_under_settings_combinations(
    s3_endpoint, s3_client, bucket, tmp_path, flags, check, runner_flags
):
    shutil.copy(SAMPLE_BATCH, tmp_path / "sample.json")
    code, _, err = run_main(argv(s3_endpoint, bucket, tmp_path, *flags, *runner_flags))
    assert code == 0, err
    objects = forwarded_objects(s3_client, bucket)
    batches = [b for batches in objects.values() for b in batches]
    assert check(batches), batches
    if "--app_name=My App" in flags:
        assert all(key.startswith("out/My_App_") for key in objects)


def test_rerun_writes_the_same_keys_and_no_second_copy(
    s3_endpoint, s3_client, bucket, inputs, runner_flags
):
    flags = ["--skip_bucket_check=true", "--max_batches_per_file=5", *runner_flags]
    code, first_out, _ = run_main(argv(s3_endpoint, bucket, inputs, *flags))
    first = list_keys(s3_client, bucket)
    code2, second_out, _ = run_main(argv(s3_endpoint, bucket, inputs, *flags))
    assert code == code2 == 0
    assert list_keys(s3_client, bucket) == first
    files = re.search(r"files_written\s+([\d,]+)", second_out)[1]
    assert re.search(r"files_already_present\s+([\d,]+)", second_out)[1] == files
    assert "files_already_present" not in first_out


def test_bad_input_goes_to_dead_letters_while_the_rest_is_forwarded(
    s3_endpoint, s3_client, bucket, tmp_path, runner_flags
):
    good = json.loads(SAMPLE_BATCH.read_text())
    (tmp_path / "mixed.ndjson").write_text(
        "\n".join(["{not json", json.dumps(good), "[1,2]", '{"events": "x"}', ""])
    )
    (tmp_path / "garbage.bin").write_bytes(b"\x00\xff binary garbage\n")
    # A gzip file cut in half: the batches before the cut still go out.
    whole = "".join(json.dumps(b) + "\n" for b in generate(200, 5, seed=99)).encode()
    compressed = gzip.compress(whole)
    (tmp_path / "corrupt.ndjson.gz").write_bytes(compressed[: len(compressed) // 2])
    code, out, err = run_main(argv(s3_endpoint, bucket, tmp_path, *runner_flags))
    assert code == 0, err
    objects = forwarded_objects(s3_client, bucket)
    forwarded_ids = event_ids(b for batches in objects.values() for b in batches)
    assert set(forwarded_event_ids([good])) < set(forwarded_ids)
    assert len(forwarded_ids) > 12 + 100  # the sample's and those before the cut
    [dead_key] = list_keys(s3_client, bucket, "out/_dead_letters/")
    letters = [json.loads(line) for line in
               s3_client.get_object(Bucket=bucket, Key=dead_key)["Body"].read().splitlines()]
    by_source = {letter["source"].rsplit("/", 1)[-1]: letter for letter in letters}
    assert set(by_source) == {"mixed.ndjson:1", "mixed.ndjson:3", "mixed.ndjson:4",
                              "garbage.bin:1", "corrupt.ndjson.gz"}
    assert by_source["mixed.ndjson:1"]["raw"] == "{not json"
    assert by_source["corrupt.ndjson.gz"]["stage"] == "read"
    assert all(letter["reason"] for letter in letters)
    assert re.search(r"records_dead_lettered\s+5\b", out)
    assert "records: read = parsed + dead-lettered -> reconciled" in out


def test_missing_bucket_stops_with_a_clear_message(s3_endpoint, tmp_path):
    shutil.copy(SAMPLE_BATCH, tmp_path / "sample.json")
    code, out, err = run_main(argv(s3_endpoint, "no-such-bucket-here", tmp_path))
    assert code == 3 and out == ""
    assert err.strip() == (
        f"error: S3 bucket 'no-such-bucket-here' in region 'us-east-1' at {s3_endpoint} "
        "does not exist."
    )


def test_role_based_auth_writes_through_the_assumed_role(tmp_path, iam_server):
    """A server that enforces IAM: the user may only assume the role; the role may write."""
    shutil.copy(SAMPLE_BATCH, tmp_path / "sample.json")
    endpoint, key, role_arn = iam_server["endpoint"], iam_server["assumer"], iam_server["role_arn"]
    user_flags = [f"--access_key_id={key['AccessKeyId']}",
                  f"--secret_access_key={key['SecretAccessKey']}"]
    without_role, _, err = run_main(argv(endpoint, "by-role", tmp_path, *user_flags))
    with_role, out, err_role = run_main(argv(
        endpoint, "by-role", tmp_path, *user_flags, f"--aws_role_arn={role_arn}"))
    assert without_role == 3 and "AccessDenied" in err
    assert with_role == 0, err_role
    assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in out


def test_denied_bucket_stops_with_what_was_denied(tmp_path, iam_server):
    """A server that enforces IAM: the user may read but not write."""
    shutil.copy(SAMPLE_BATCH, tmp_path / "sample.json")
    key = iam_server["reader"]
    code, out, err = run_main(argv(
        iam_server["endpoint"], "locked", tmp_path,
        f"--access_key_id={key['AccessKeyId']}",
        f"--secret_access_key={key['SecretAccessKey']}",
    ))
    assert code == 3
    assert "bucket 'locked' in region 'us-east-1'" in err
    assert "refused the write check PutObject of 'out/mParticle_Bucket_Verification_" in err
    assert "AccessDenied" in err
    assert key["SecretAccessKey"] not in err + out


def test_direct_runner_and_prism_write_byte_identical_objects_under_identical_keys(
    s3_endpoint, s3_client, inputs, prism
):
    """The same input and settings on both engines: the same keys, the same bytes."""
    written = {}
    for runner in ("DirectRunner", "PrismRunner"):
        bucket = f"same-on-{runner.lower()}"
        s3_client.create_bucket(Bucket=bucket)
        code, out, err = run_main(argv(
            s3_endpoint, bucket, inputs, f"--runner={runner}", "--use_compression=true",
            "--store_data_in_folders_by_date=true", "--max_batches_per_file=7",
        ))
        assert code == 0, err
        assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in out
        written[runner] = {
            key: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in list_keys(s3_client, bucket) if "Bucket_Verification" not in key
        }
    assert len(written["DirectRunner"]) > 20
    assert written["PrismRunner"] == written["DirectRunner"]


def _moving_clock(*times: str):
    """A clock that says each time in turn, then the last one again."""
    stamps = [datetime.datetime.fromisoformat(t).replace(tzinfo=datetime.timezone.utc)
              for t in times]
    return lambda: stamps.pop(0) if len(stamps) > 1 else stamps[0]


@pytest.mark.parametrize("mode, timed_folder, untimed_folder", [
    ("none", "", ""),
    ("event_time", "2023-11-14/", ""),
    ("upload_time", "UPLOAD_DAY/", "UPLOAD_DAY/"),
    ("event_time_or_upload_time", "2023-11-14/", "UPLOAD_DAY/"),
])
@pytest.mark.parametrize("slices", [[], ["--arrival_slice_s=0"]], ids=["sliced", "unsliced"])
def test_date_folders_by_event_time_upload_time_or_both_and_reruns_write_the_same_keys(
    s3_endpoint, s3_client, bucket, tmp_path, mode, timed_folder, untimed_folder, slices,
    runner_flags,
):
    """One batch whose events have times, one whose events have none. The run starts a
    moment before midnight and the clock has passed it by the time anything is written;
    a rerun on the next day that names the first run's upload day writes the same keys."""
    at = 1_700_000_000_000  # 2023-11-14
    timed = {"mpid": 1, "timestamp_unixtime_ms": at, "application_info": {
        "application_name": "Timed"}, "events": [
        {"event_type": "custom_event", "data": {"event_id": 1, "timestamp_unixtime_ms": at}}]}
    untimed = {"mpid": 2, "timestamp_unixtime_ms": at, "application_info": {
        "application_name": "Untimed"}, "events": [
        {"event_type": "custom_event", "data": {"event_id": 2}}]}
    (tmp_path / "in.ndjson").write_text(json.dumps(timed) + "\n" + json.dumps(untimed) + "\n")

    def run(bucket: str, clock, *flags: str) -> dict[str, str]:
        """The run's forwarded keys, each app's folder, and its output."""
        code, out, err = run_main(argv(
            s3_endpoint, bucket, tmp_path, f"--store_data_in_folders_by_date={mode}",
            "--skip_bucket_check=true", *slices, *runner_flags, *flags), clock=clock)
        assert code == 0, err
        keys = list_keys(s3_client, bucket, "out/")
        return {k.split("/")[-1].split("_")[0]: k for k in keys}, out

    before_midnight = _moving_clock("2030-01-01T23:59:59.900", "2030-01-02T00:00:01")
    keys, _ = run(bucket, before_midnight)
    folders = {app: key[len("out/"):-len(key.split("/")[-1])] for app, key in keys.items()}
    assert folders == {"Timed": timed_folder.replace("UPLOAD_DAY", "2030-01-01"),
                       "Untimed": untimed_folder.replace("UPLOAD_DAY", "2030-01-01")}

    next_day = _moving_clock("2030-01-02T08:00:00")
    rerun, out = run(bucket, next_day, "--upload_day=2030-01-01")
    assert rerun == keys
    assert re.search(r"files_already_present\s+2\b", out), out

    s3_client.create_bucket(Bucket=f"{bucket}-again")  # not named: the day the run starts
    again, _ = run(f"{bucket}-again", next_day)
    assert {app: key.replace("2030-01-02", "2030-01-01") for app, key in again.items()} == keys


def test_replaying_the_dead_letter_files_after_a_fix_forwards_their_events_once(
    s3_endpoint, s3_client, bucket, tmp_path, runner_flags
):
    """Batches of several MiB (over the default --max_batch_bytes), an event with its
    time in seconds, a line that is not JSON: dead letters, each holding its record
    whole. The fix: a larger --max_batch_bytes, and the time made milliseconds in the
    dead-letter file. Replaying the dead-letter files forwards exactly the events the
    first run did not, each once; what is still bad is a dead letter again, holding the
    record as it first came."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = list(generate(60, 8, seed=41))
    # Quotes and non-ASCII text: a dead letter's line is larger than its record.
    oversize = [{**b, "padding": 'p"\u00e9' * (size // 4)}
                for b, size in zip(generate(2, 2, seed=42), (5 * 2**20, 9 * 2**20), strict=True)]
    carrier = next(generate(1, 1, seed=43))
    seconds = {"event_type": "custom_event",
               "data": {"event_id": 424242, "timestamp_unixtime_ms": 1_700_000_042}}
    carrier["events"] = [*carrier["events"][:1], seconds]
    lines = [json.dumps(b, ensure_ascii=False) for b in good + oversize + [carrier]]
    lines.append("this is not JSON")
    (inputs / "day.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    first_dead, second_dead = tmp_path / "dead", tmp_path / "dead-again"

    code, _, err = run_main(argv(s3_endpoint, bucket, inputs,
                                 f"--dead_letter_location={first_dead}", *runner_flags))
    assert code == 0, err
    first = event_ids(b for batches in forwarded_objects(s3_client, bucket).values()
                      for b in batches)
    [dead_file] = first_dead.glob("*.ndjson")
    letters = [json.loads(line) for line in dead_file.read_text("utf-8").splitlines()]
    assert len(letters) == 4
    kept = sorted(letter["raw"] for letter in letters if letter["reason"].startswith("record is"))
    assert kept == sorted(lines[60:62])  # whole, not cut
    dead_file.write_text(dead_file.read_text("utf-8").replace("1700000042", "1700000042000"),
                         encoding="utf-8")

    code, out, err = run_main(argv(s3_endpoint, bucket, first_dead, "--max_batch_bytes=16777216",
                                   f"--dead_letter_location={second_dead}", *runner_flags))
    assert code == 0, err
    assert "events: read = forwarded + filtered out + dead-lettered -> reconciled" in out
    both = event_ids(b for batches in forwarded_objects(s3_client, bucket).values()
                     for b in batches)
    assert sorted(both) == sorted(forwarded_event_ids(good + oversize + [carrier]))
    replayed_ids = set(both) - set(first)
    assert replayed_ids == set(forwarded_event_ids([*oversize, {"events": [seconds]}]))
    [letter] = [json.loads(line) for path in second_dead.glob("*.ndjson")
                for line in path.read_text().splitlines()]
    assert letter["raw"] == "this is not JSON"
    assert letter["source"].endswith(f"(dead letter of {inputs / 'day.ndjson'}:64)")
