"""Options: defaults, settings files, precedence, and one clear sentence per mistake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import (
    ConfigError,
    ForwarderConfig,
    check_beam_args,
    config_from_values,
    load_config,
    log_format_of,
    log_level_of,
    merged_values,
    output_format_of,
    read_settings_file,
)
from pipeline.options import build_parser
from tests.conftest import SAMPLE_BATCH, run_main
from transforms.io.pubsub_resources import topic_subscription_name
from transforms.io.s3 import S3Connection
from transforms.rules.naming import DateFolders
from transforms.rules.settings import ForwardingSettings
from transforms.values import Batching, BatchingMode, FileLayout

BASE = ["--s3_bucket_name=my-bucket", "--input=in/*.ndjson"]


def test_defaults_are_the_integrations():
    config, beam_args = load_config(BASE + ["--runner=DirectRunner"])
    assert beam_args == ["--runner=DirectRunner"]
    assert config.connection.region == "us-east-1"
    assert config.connection.sse_method == "None"
    assert config.batching.mode is BatchingMode.FIXED
    assert config.layout.date_folders is DateFolders.NONE and not config.layout.compress
    assert config.settings.send_custom_events
    assert not config.settings.include_user_attribute_change_events
    assert config.dead_letter_location == "s3://my-bucket/_dead_letters"
    assert config.batching.window_size_s == 600


# The integration page's settings and their defaults (README, Options), written out
# here: each is read back from the config a run gets when no flag is given.
INTEGRATION_DEFAULTS = {
    "folder_name": None,
    "aws_region_endpoint": "us-east-1",
    "access_key_id": None,
    "secret_access_key": None,
    "server_side_encryption_method": "None",
    "unique_id": None,
    "metadata_field_exclusion": (),
    "send_lifecycle_events": True,
    "send_screen_views": True,
    "send_crash_events": True,
    "send_network_performance_events": True,
    "send_custom_events": True,
    "send_push_registrations_and_receipts": True,
    "send_profile_change_events": True,
    "send_commerce_events": True,
    "include_user_attribute_change_events": False,
    "include_user_identity_change_events": False,
    "include_location_information": True,
    "include_event_batch_location": False,
    "include_user_identities": True,
    "include_metadata": True,
    "include_consent_state": True,
    "include_mp_deviceid": True,
    "send_batches_without_events": False,
    "send_as_batch": True,
    "wait_for_complete_batch": False,
    "store_data_in_folders_by_date": "none",
    "use_compression": False,
}


def _setting_in(config, name: str):
    """A setting's value as the run sees it, by the integration's name."""
    connection = {"aws_region_endpoint": "region", "access_key_id": "access_key_id",
                  "secret_access_key": "secret_access_key",
                  "server_side_encryption_method": "sse_method"}
    if name in connection:
        return getattr(config.connection, connection[name])
    if name == "folder_name":
        return config.layout.folder
    if name == "send_as_batch":
        return config.batching.mode is not BatchingMode.PER_EVENT
    if name == "wait_for_complete_batch":
        return config.batching.mode is BatchingMode.SESSIONS
    if name == "store_data_in_folders_by_date":
        return config.layout.date_folders.value
    if name == "use_compression":
        return config.layout.compress
    if name == "send_batches_without_events":
        return config.send_batches_without_events
    return getattr(config.settings, name)


@pytest.mark.parametrize("name, default", sorted(INTEGRATION_DEFAULTS.items()))
def test_every_setting_has_a_flag_and_the_integrations_default(name, default):
    assert f"--{name}" in build_parser().format_help()
    assert _setting_in(load_config(BASE)[0], name) == default


@pytest.mark.parametrize(
    "flags, mode",
    [
        ([], BatchingMode.FIXED),
        (["--send_as_batch=false"], BatchingMode.PER_EVENT),
        (["--wait_for_complete_batch=true"], BatchingMode.SESSIONS),
        (["--send_as_batch=false", "--wait_for_complete_batch"], BatchingMode.SESSIONS),
    ],
)
def test_batching_modes(flags, mode):
    assert load_config(BASE + flags)[0].batching.mode is mode


@pytest.mark.parametrize("suffix", ["json", "yaml"])
def test_settings_file_and_flags_override_it(tmp_path, suffix):
    settings = {
        "s3_bucket_name": "from-file", "folder_name": "exports/", "send_custom_events": False,
        "use_compression": "true", "input": ["a.ndjson", "b.ndjson"], "window_size_s": 60,
    }
    path = tmp_path / f"settings.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(settings))
    else:
        path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in settings.items()))
    config, _ = load_config([f"--settings_file={path}", "--send_custom_events=true"])
    assert config.bucket == "from-file" and config.layout.folder == "exports"
    assert config.settings.send_custom_events is True  # the flag wins
    assert config.layout.compress is True and config.batching.window_size_s == 60
    assert config.inputs == ("a.ndjson", "b.ndjson")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--input=x"], "--s3_bucket_name is required"),
        (["--s3_bucket_name=My_Bucket", "--input=x"], "not a valid bucket name"),
        (["--s3_bucket_name=192.168.1.1", "--input=x"], "not an IP address"),
        (["--s3_bucket_name=ab", "--input=x"], "not a valid bucket name"),
        (["--s3_bucket_name=b-ok"], "No input"),
        (BASE + ["--server_side_encryption_method=AES128"], "must be one of None, AES256, aws:kms"),
        (BASE + ["--kms_key_id=k1"], "--kms_key_id needs --server_side_encryption_method=aws:kms"),
        (
            BASE + ["--server_side_encryption_method=AES256", "--kms_key_id=k1"],
            "--kms_key_id needs",
        ),
        (BASE + ["--access_key_id=AKIA"], "go together"),
        (BASE + ["--aws_region_endpoint=mars"], "not an AWS region"),
        (BASE + ["--use_compression=maybe"], "--use_compression must be true or false"),
        (BASE + ["--window_size_s=ten"], "--window_size_s must be a whole number"),
        (BASE + ["--max_file_bytes=0"], "--max_file_bytes must be a whole number of at least 1"),
        (BASE + ["--session_harnesses=-1"],
         "--session_harnesses must be a whole number of at least 0"),
        (BASE + ["--pubsub_readers=two"], "--pubsub_readers must be a whole number"),
        (BASE + ["--settings_file=/nonexistent.yaml"], "cannot be read"),
        (
            BASE + ["--input_subscription=projects/p/subscriptions/s"],
            "Give one input source, not --input and --input_subscription",
        ),
        (["--s3_bucket_name=b-ok", "--input_subscription=mysub"],
         "must look like projects/<project>/subscriptions/<name>"),
        (["--s3_bucket_name=b-ok", "--input_topic=projects/p/subscriptions/s"],
         "must look like projects/<project>/topics/<name>"),
    ],
)
def test_mistakes_stop_with_one_sentence(flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(flags)


def test_a_bounded_runs_upload_day_is_fixed_when_it_starts_or_named():
    import datetime

    def at(iso: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(iso).replace(tzinfo=datetime.timezone.utc)

    values = merged_values(BASE)[0]
    assert config_from_values(values, now=at("2030-01-01T23:59:59.999")).upload_day == \
        "2030-01-01"
    assert config_from_values(values, now=at("2030-01-02T00:00:00")).upload_day == "2030-01-02"
    named = merged_values(BASE + ["--upload_day=2024-06-01"])[0]
    assert config_from_values(named, now=at("2030-01-02T00:00:00")).upload_day == "2024-06-01"
    live = ["--s3_bucket_name=b-ok", "--input_subscription=projects/acme-prod/subscriptions/s"]
    assert load_config(live)[0].upload_day is None  # each file's window close


def test_the_upload_day_is_utcs_whatever_the_machines_time_zone(monkeypatch):
    import datetime
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        evening = datetime.datetime(2030, 1, 1, 23, 30, tzinfo=datetime.timezone(
            datetime.timedelta(hours=-5)))  # 04:30 on 2 January in UTC
        assert config_from_values(merged_values(BASE)[0], now=evening).upload_day == \
            "2030-01-02"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("flags, message", [
    (BASE + ["--upload_day=2024-13-01"], "--upload_day must be a day as YYYY-MM-DD"),
    (BASE + ["--upload_day=yesterday"], "--upload_day must be a day as YYYY-MM-DD"),
    (["--s3_bucket_name=b-ok", "--input_subscription=projects/acme-prod/subscriptions/s",
      "--upload_day=2024-06-01"], "--upload_day is for bounded runs"),
    (BASE + ["--log_level=LOUD"], "--log_level must be one of DEBUG, INFO, WARNING, ERROR"),
])
def test_upload_day_and_log_level_mistakes(flags, message):
    with pytest.raises(ConfigError, match=message):
        load_config(flags)


def test_pubsub_input_makes_a_streaming_config():
    topic = "projects/acme-prod/topics/mparticle"
    config, _ = load_config(["--s3_bucket_name=b-ok", f"--input_topic={topic}"])
    assert config.streaming and config.input_topic == topic
    assert not load_config(BASE)[0].streaming


@pytest.mark.parametrize("flag, reason", [
    ("--input_topic=projects/p/topics/t", "Invalid PubSub project name: 'p'."),
    ("--input_subscription=projects/Acme/subscriptions/mparticle",
     "Invalid PubSub project name: 'Acme'."),
    ("--input_subscription=projects/acme-prod/topics/t", "must look like projects/<project>/"
     "subscriptions/<name>."),
])
def test_pubsub_names_are_checked_as_pubsub_checks_them(flag, reason):
    with pytest.raises(ConfigError) as err:
        load_config(["--s3_bucket_name=b-ok", flag])
    assert reason in str(err.value)


def test_settings_file_with_unknown_or_bad_content(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text('{"send_custom_event": false}')
    with pytest.raises(ConfigError, match="unknown settings send_custom_event"):
        load_config([f"--settings_file={bad}"])
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON or YAML"):
        load_config([f"--settings_file={bad}"])


def test_entry_point_prints_the_sentence_without_a_traceback():
    code, out, err = run_main(BASE + ["--server_side_encryption_method=rot13"])
    assert code == 2
    assert err.startswith("error: --server_side_encryption_method must be one of")
    assert "Traceback" not in err and out == ""


def test_input_that_matches_nothing_is_a_clear_error(tmp_path):
    code, _, err = run_main(["--s3_bucket_name=b-ok", f"--input={tmp_path}/missing*.ndjson"])
    assert code == 2 and "matches no file" in err


def test_input_that_cannot_be_listed_is_a_clear_error(s3_endpoint):
    code, _, err = run_main([
        "--s3_bucket_name=b-ok", f"--s3_endpoint_url={s3_endpoint}",
        "--input=s3://no-such-input-bucket/day/*.ndjson",
    ])
    assert code == 2 and err.strip() == (
        "error: --input 's3://no-such-input-bucket/day/*.ndjson' cannot be listed: NoSuchBucket."
    )
    code, _, err = run_main(["--s3_bucket_name=b-ok", "--input=hdfs://nn/day/*.ndjson"])
    assert code == 2 and "cannot be listed" in err and "Traceback" not in err


@pytest.mark.parametrize("kind, needle", [("role", '"Principal"'), ("user", '"s3:PutObject"')])
def test_iam_policy_printed_for_a_bucket(kind, needle):
    code, out, _ = run_main(["--s3_bucket_name=acme-events", f"--print_iam_policy={kind}"])
    policy = json.loads(out)
    assert code == 0 and needle in out
    assert "arn:aws:s3:::acme-events/*" in policy["Statement"][0]["Resource"]


def test_user_policy_with_a_kms_key_grants_its_use():
    code, out, _ = run_main(["--s3_bucket_name=acme-events", "--print_iam_policy=user",
                             "--kms_key_id=arn:aws:kms:us-east-1:1:key/k"])
    kms = json.loads(out)["Statement"][1]
    assert code == 0 and kms["Resource"] == "arn:aws:kms:us-east-1:1:key/k"
    assert "kms:GenerateDataKey" in kms["Action"]


def _error(argv: list[str]) -> tuple[int, str]:
    code, out, err = run_main(argv)
    assert "Traceback" not in err and out == ""
    return code, err.strip()


@pytest.mark.parametrize("flags, sentence", [
    (["--use_compresion=true"],
     "error: Unknown option --use_compresion; did you mean --use_compression?"),
    (["--runer=DirectRunner"], "error: Unknown option --runer; did you mean --runner?"),
    (["--use_compres=true"],  # never taken as an abbreviation of --use_compression
     "error: Unknown option --use_compres; did you mean --use_compression?"),
    (["--zzz_qqq=1"], "error: Unknown option --zzz_qqq; python -m pipeline --help lists them."),
    (["stray"], "error: An argument is not a --flag (it is not shown, in case it is a secret): "
               "every option is a --flag=VALUE."),
    (["--runner=BogusRunner"],
     "error: --runner 'BogusRunner' is not a runner this forwarder runs on: use DirectRunner, "
     "PrismRunner, DaskRunner, FlinkRunner, SparkRunner, DataflowRunner or PortableRunner."),
    (["--s3_endpoint_url=not-a-url"],
     "error: --s3_endpoint_url 'not-a-url' must be an http:// or https:// URL with a host, "
     "such as http://127.0.0.1:9000."),
    (["--s3_endpoint_url=ftp://127.0.0.1:21"],
     "error: --s3_endpoint_url 'ftp://127.0.0.1:21' must be an http:// or https:// URL with a "
     "host, such as http://127.0.0.1:9000."),
    (["--s3_endpoint_url=http://127.0.0.1:port"],
     "error: --s3_endpoint_url 'http://127.0.0.1:port' must be an http:// or https:// URL with "
     "a host, such as http://127.0.0.1:9000."),
    (["--dead_letter_location=s3://"], "error: --dead_letter_location 's3://' names no bucket."),
    (["--dead_letter_location=s3://Bad_Bucket/dl"],
     "error: --dead_letter_location 'Bad_Bucket' is not a valid bucket name: 3 to 63 lowercase "
     "letters, digits, dots and hyphens, starting and ending with a letter or digit."),
    (["--dead_letter_location=gs://b/dl"],
     "error: --dead_letter_location 'gs://b/dl' must be s3://bucket/prefix or a local "
     "directory."),
    (["--s3_read_timeout_s=0"],
     "error: --s3_read_timeout_s must be a whole number of at least 1, not 0."),
    (["--s3_write_deadline_s=soon"], "error: --s3_write_deadline_s must be a whole number, "
     "not 'soon'."),
])
def test_every_setting_is_checked_before_anything_is_read(flags, sentence):
    code, err = _error(BASE + flags)
    assert (code, err) == (2, sentence)


LIVE = ["--s3_bucket_name=my-bucket"]
PROJECT = "projects/acme-analytics"


@pytest.mark.parametrize("flags, sentence", [
    (BASE + ["--kms_key_id=k"],
     "--kms_key_id needs --server_side_encryption_method=aws:kms."),
    (BASE + ["--access_key_id=AKIA", "--secret_access_key=a b"],
     "--secret_access_key holds white space or a control character (a copy-and-paste slip?); "
     "it is not shown here."),
    (BASE + ["--access_key_id=AKIA", "--secret_access_key=ab\x07"],
     "--secret_access_key holds white space or a control character (a copy-and-paste slip?); "
     "it is not shown here."),
    (BASE + ["--access_key_id=AKIA"],
     "--access_key_id and --secret_access_key go together: give both, or neither for "
     "role-based auth."),
    (BASE + ["--secret_access_key=abc"],
     "--access_key_id and --secret_access_key go together: give both, or neither for "
     "role-based auth."),
    (BASE + ["--aws_region_endpoint=Mars"],
     "--aws_region_endpoint 'Mars' is not an AWS region such as us-east-1."),
    (BASE + ["--aws_region_endpoint="],
     "--aws_region_endpoint '' is not an AWS region such as us-east-1."),
    (BASE + ["--folder_name=///"], "--folder_name must hold more than slashes."),
    (BASE + ["--metrics_port=65536"],
     "--metrics_port must be a port number up to 65535, not 65536."),
    (BASE + ["--metrics_port=-1"],
     "--metrics_port must be a whole number of at least 0, not '-1'."),
    (BASE + ["--pubsub_unavailable_s=0"],
     "--pubsub_unavailable_s must be a whole number of at least 1, not 0."),
    (BASE + ["--drain_timeout_s=0"],
     "--drain_timeout_s must be a whole number of at least 1, not 0."),
    (BASE + ["--log_format=xml"], "--log_format must be one of text, json, not 'xml'."),
    (LIVE, "No input: give --input (files or globs), --input_subscription or --input_topic."),
    (LIVE + [f"--input_subscription={PROJECT}/subscriptions/s1",
             f"--topic_subscription={PROJECT}/subscriptions/t1"],
     "--topic_subscription goes with --input_topic (the subscription the topic is read "
     "through)."),
    (LIVE + [f"--input_topic={PROJECT}/topics/t1", f"--topic_subscription={PROJECT}/topics/x1"],
     f"--topic_subscription '{PROJECT}/topics/x1' must look like "
     "projects/<project>/subscriptions/<name>."),
])
def test_each_setting_that_cannot_work_is_refused_in_its_own_words(flags, sentence):
    assert _error(flags) == (2, f"error: {sentence}")


@pytest.mark.parametrize("name, problem", [
    ("a..bc", "no two dots, or a dot and a hyphen, side by side"),
    ("ab.-c", "no two dots, or a dot and a hyphen, side by side"),
    ("ab-.c", "no two dots, or a dot and a hyphen, side by side"),
    ("xn--abc", "no reserved prefix or suffix (xn--, sthree-, -s3alias, --ol-s3)"),
    ("sthree-abc", "no reserved prefix or suffix (xn--, sthree-, -s3alias, --ol-s3)"),
    ("abc-s3alias", "no reserved prefix or suffix (xn--, sthree-, -s3alias, --ol-s3)"),
    ("abc--ol-s3", "no reserved prefix or suffix (xn--, sthree-, -s3alias, --ol-s3)"),
    ("192.168.1.1", "not an IP address"),
])
def test_a_bucket_name_s3_refuses_is_refused_with_the_rule_it_breaks(name, problem):
    assert _error([f"--s3_bucket_name={name}", "--input=in/*.ndjson"]) == (
        2, f"error: --s3_bucket_name '{name}' is not a valid bucket name: {problem}.")


def _settings_file(tmp_path, name: str, text: str) -> list[str]:
    (tmp_path / name).write_text(text)
    return BASE + [f"--settings_file={tmp_path / name}"]


@pytest.mark.parametrize("name, text, problem", [
    ("bad.yaml", "a: [1,\nb: 2\n", "is not valid JSON or YAML at line 3, column 1"),
    ("bad.json", '{"a": 1,}', "is not valid JSON or YAML at line 1, column 9"),
    # A character YAML may not hold is found before any parsing: there is no line to give.
    ("bell.yaml", "unique_id: \a\n", "is not valid JSON or YAML"),
    ("list.yaml", "- 1\n- 2\n", "must hold a mapping of option names"),
    ("unknown.yaml", "send_custom_events: false\nzzz: 1\nyyy: 2\n",
     "has unknown settings yyy, zzz; keys are the option names, such as send_custom_events"),
])
def test_a_settings_file_that_cannot_be_used_says_where_and_why(tmp_path, name, text, problem):
    assert _error(_settings_file(tmp_path, name, text)) == (
        2, f"error: --settings_file '{tmp_path / name}' {problem}.")


def test_a_settings_file_may_name_itself_and_hold_any_text(tmp_path):
    config, _ = load_config(_settings_file(
        tmp_path, "s.yaml", "settings_file: ignored\nunique_id: café ☕\n"))
    assert config.settings.unique_id == "café ☕"


def test_a_settings_file_is_read_as_utf8_whatever_the_machines_locale(tmp_path):
    """A container's plain C locale reads files as ASCII unless told otherwise."""
    _settings_file(tmp_path, "s.yaml", "unique_id: café ☕\n")
    assert read_settings_file(str(tmp_path / "s.yaml"))["unique_id"] == "café ☕"
    shown = subprocess.run(
        [sys.executable, "-c", "from pipeline.config import read_settings_file; "
         f"print(ascii(read_settings_file({str(tmp_path / 's.yaml')!r})['unique_id']))"],
        env={**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"},
        capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == ascii("café ☕")


@pytest.mark.parametrize("flags, sentence", [
    (["--arrival_slice_s=-1"], "--arrival_slice_s must be a whole number of at least 0, not '-1'."),
    (["--arrival_slice_s=900", "--window_size_s=600"],
     "--arrival_slice_s=900 must be a multiple of --window_size_s=600, so that no window spans "
     "two slices (such as 600)."),
    (["--arrival_slice_s=2000", "--window_size_s=600"],
     "--arrival_slice_s=2000 must be a multiple of --window_size_s=600, so that no window spans "
     "two slices (such as 1800)."),
    (["--spill_dir=s3://b/x"], "--spill_dir 's3://b/x' must be a local directory."),
    (["--output_format=csv"], "--output_format must be one of json, parquet, not 'csv'."),
])
def test_bounded_run_settings_that_cannot_work_are_refused(flags, sentence):
    assert _error(BASE + flags) == (2, f"error: {sentence}")


def test_an_upload_day_is_refused_for_a_live_run():
    assert _error(LIVE + [f"--input_subscription={PROJECT}/subscriptions/s1",
                          "--upload_day=2024-06-01"]) == (
        2, "error: --upload_day is for bounded runs: a live file's upload day is the day its "
           "window closes.")


def test_the_smallest_values_that_work_are_taken():
    config, _ = load_config(BASE + [
        "--max_batches_per_file=1", "--arrival_slice_s=0", "--spill_dir=/tmp/spill",
        "--dead_letter_location=s3://bucket-x/a/b", "--log_format=JSON", "--log_level=debug",
        "--output_format=JSON"])
    assert (config.layout.max_batches, config.arrival_slice_s, config.dead_letter_location) == (
        1, 0, "s3://bucket-x/a/b")
    assert config.layout.output_format == "json"


def test_every_option_given_reaches_the_config():
    """Each option, given a value other than its default, is the config's: written out
    field by field here, not taken from the code that builds it."""
    config, _ = load_config([
        "--s3_bucket_name=acme-out", "--folder_name=/exports/s3/", f"--input_topic={PROJECT}/"
        "topics/t1", f"--topic_subscription={PROJECT}/subscriptions/mine",
        "--aws_region_endpoint=eu-west-1", "--s3_endpoint_url=http://127.0.0.1:9",
        "--access_key_id=AKIA", "--secret_access_key=shh", "--aws_role_arn=arn:aws:iam::1:role/r",
        "--server_side_encryption_method=aws:kms", "--kms_key_id=k1",
        "--s3_connect_timeout_s=3", "--s3_read_timeout_s=4", "--s3_write_deadline_s=5",
        "--app_name=My App", "--wait_for_complete_batch=true", "--window_size_s=60",
        "--session_gap_s=120", "--allowed_lateness_s=7", "--use_compression=true",
        "--store_data_in_folders_by_date=event_time", "--output_format=parquet",
        "--file_shards=2", "--max_batches_per_file=9", "--max_file_bytes=1000",
        "--send_batches_without_events=true", "--max_batch_bytes=999",
        "--skip_bucket_check=true", "--file_flush_s=11", "--dead_letter_flush_s=12",
        "--progress_every_s=13", "--pubsub_readers=3", "--session_harnesses=2",
        "--pubsub_unavailable_s=14", "--drain_timeout_s=15", "--metrics_port=65535",
        "--send_custom_events=false", "--arrival_slice_s=600", "--spill_dir=/var/spill",
    ])
    assert config == ForwarderConfig(
        bucket="acme-out",
        connection=S3Connection(
            region="eu-west-1", endpoint_url="http://127.0.0.1:9", access_key_id="AKIA",
            secret_access_key="shh", role_arn="arn:aws:iam::1:role/r", sse_method="aws:kms",
            kms_key_id="k1", connect_timeout_s=3, read_timeout_s=4, retry_deadline_s=5),
        settings=ForwardingSettings(send_custom_events=False),
        inputs=(), input_subscription=None, input_topic=f"{PROJECT}/topics/t1",
        topic_subscription=f"{PROJECT}/subscriptions/mine",
        dead_letter_location="s3://acme-out/exports/s3/_dead_letters", app_name="My_App",
        batching=Batching(BatchingMode.SESSIONS, 60, 120, 7),
        layout=FileLayout(folder="exports/s3", compress=True,
                          date_folders=DateFolders.EVENT_TIME, output_format="parquet",
                          shards=2, max_batches=9, max_bytes=1000),
        send_batches_without_events=True, max_batch_bytes=999, skip_bucket_check=True,
        file_flush_s=11, dead_letter_flush_s=12, progress_every_s=13, pubsub_readers=3,
        session_harnesses=2, arrival_slice_s=600, spill_dir="/var/spill", pubsub_unavailable_s=14,
        drain_timeout_s=15, metrics_port=65535, upload_day=None)
    derived, _ = load_config(["--s3_bucket_name=acme-out", "--folder_name=exports",
                              f"--input_topic={PROJECT}/topics/t1"])
    assert derived.topic_subscription == topic_subscription_name(
        f"{PROJECT}/topics/t1", "acme-out", "exports")
    assert derived.layout.date_folders == DateFolders.NONE and derived.app_name is None


def test_prism_without_a_binary_is_one_sentence(tmp_path):
    code, err = _error(BASE + ["--runner=PrismRunner", f"--prism_location={tmp_path}/none"])
    assert (code, err) == (2, f"error: --prism_location '{tmp_path}/none' is not an executable "
                              "file.")


def _sample_input(tmp_path) -> str:
    (tmp_path / "in.ndjson").write_text(SAMPLE_BATCH.read_text().replace("\n", " ") + "\n")
    return f"--input={tmp_path}/in.ndjson"


def test_a_dead_letter_bucket_that_does_not_exist_stops_the_start(s3_endpoint, bucket, tmp_path):
    code, err = _error_with_log([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}", _sample_input(tmp_path),
        "--dead_letter_location=s3://missing-dead-letters/dl",
    ])
    assert (code, err) == (3, "error: --dead_letter_location: S3 bucket 'missing-dead-letters' "
                              f"in region 'us-east-1' at {s3_endpoint} does not exist.")


def test_a_dead_letter_directory_that_cannot_be_made_stops_the_start(
    s3_endpoint, bucket, tmp_path
):
    target = "/proc/forwarder-dead-letters"  # no one can make a directory there, root included
    code, err = _error_with_log([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
        _sample_input(tmp_path), f"--dead_letter_location={target}",
    ])
    assert (code, err) == (3, f"error: --dead_letter_location '{target}' cannot be written: "
                              "No such file or directory.")


def test_a_dead_letter_path_under_a_file_stops_the_start(s3_endpoint, bucket, tmp_path):
    (tmp_path / "a-file").write_text("x")
    target = tmp_path / "a-file" / "dl"
    code, err = _error_with_log([
        f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
        _sample_input(tmp_path), f"--dead_letter_location={target}",
    ])
    assert (code, err) == (3, f"error: --dead_letter_location '{target}' cannot be written: "
                              "Not a directory.")


def _error_with_log(argv: list[str]) -> tuple[int, str]:
    """(exit code, the one error line): a run that got past the option checks logs too."""
    code, out, err = run_main(argv)
    assert "Traceback" not in err and out == ""
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    return code, line


def test_options_of_a_java_job_server_pass_on_but_misspelt_forwarder_options_do_not():
    flink = ["--runner=FlinkRunner", "--flink_master=jobmanager:8081"]
    _, beam_args = load_config(BASE + flink + ["--checkpointing_interval=60000"])
    assert "--checkpointing_interval=60000" in beam_args
    with pytest.raises(ConfigError, match="did you mean --use_compression"):
        load_config(BASE + flink + ["--use_compresion=true"])


@pytest.mark.parametrize("value, mode", [
    ("true", DateFolders.EVENT_TIME), ("false", DateFolders.NONE), ("none", DateFolders.NONE),
    ("event_time", DateFolders.EVENT_TIME), ("upload_time", DateFolders.UPLOAD_TIME),
    ("Event_Time_Or_Upload_Time", DateFolders.EVENT_TIME_OR_UPLOAD_TIME),
])
def test_store_data_in_folders_by_date_takes_the_four_choices_and_true_false(value, mode):
    config, _ = load_config(BASE + [f"--store_data_in_folders_by_date={value}"])
    assert config.layout.date_folders is mode


def test_store_data_in_folders_by_date_refuses_other_values():
    with pytest.raises(ConfigError, match=r"must be one of none, event_time, upload_time, "
                                          r"event_time_or_upload_time \(or true, false\), "
                                          r"not 'daily'"):
        load_config(BASE + ["--store_data_in_folders_by_date=daily"])


def test_metadata_field_exclusion_from_flags_and_settings_file(tmp_path):
    config, _ = load_config(BASE + ["--metadata_field_exclusion=device_name, IP",
                                    "--metadata_field_exclusion=ip,push_token"])
    assert config.settings.metadata_field_exclusion == ("device_name", "ip", "push_token")
    settings = tmp_path / "s.yaml"
    settings.write_text("metadata_field_exclusion: [device_name, user_agent]\n"
                        "include_event_batch_location: true\n")
    config, _ = load_config(BASE + [f"--settings_file={settings}"])
    assert config.settings.metadata_field_exclusion == ("device_name", "user_agent")
    assert config.settings.include_event_batch_location
    assert not load_config(BASE)[0].settings.include_event_batch_location  # the default


def test_metadata_field_exclusion_refuses_an_unknown_name():
    with pytest.raises(ConfigError) as err:
        load_config(BASE + ["--metadata_field_exclusion=device_name,email"])
    assert str(err.value) == (
        "--metadata_field_exclusion 'email' is not a metadata field the forwarder can drop: "
        "use device_name, ip, device_model, user_agent, push_token, network_carrier, "
        "advertising_ids, build_identifier."
    )


def test_help_ends_with_the_engine_flags_that_go_to_beam(capsys):
    """Every flag the forwarder itself reads for its engines is in --help, in the order
    Prism's binary is looked for."""
    from pipeline.run import main

    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--runner", "--direct_num_workers", "--direct_running_mode",
                 "--prism_location", "--dask_client_address", "--dask_worker_memory"):
        assert flag in text, flag
    assert "--prism_location: the Prism binary (else the one beside this Python" in text


def test_an_empty_choice_is_the_default():
    """`--log_format=` (as an environment's empty variable gives it) is the default."""
    assert (log_format_of(""), log_level_of(""), output_format_of("")) == ("text", "INFO", "json")
    assert (log_format_of(" JSON "), log_level_of("warning"), output_format_of("Parquet")) == (
        "json", "WARNING", "parquet")
    with pytest.raises(ConfigError, match=r"^--log_level must be one of DEBUG, INFO, WARNING, "
                                          r"ERROR, not 'loud'\.$"):
        log_level_of("loud")


def test_help_lists_every_option_in_its_group_with_its_default_and_choices(capsys):
    from pipeline.options import GROUPS, OPTIONS, shown_default
    from pipeline.run import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert [text.index(f"{group}: ") for group in GROUPS] == sorted(
        text.index(f"{group}: ") for group in GROUPS)
    listed = text.index("integration settings: ")
    starts = sorted((text.index(f" --{option.name} ", listed), option) for option in OPTIONS)
    ends = [start for start, _ in starts[1:]] + [text.index(" --print_iam_policy ", listed)]
    for (start, option), end in zip(starts, ends, strict=True):
        entry = text[start:end]
        default = shown_default(option)
        if default is not None:
            assert f"Default: {default}." in entry, option.name
        for choice in option.choices:
            assert choice in entry, (option.name, choice)


def test_the_configuration_reference_is_made_from_the_options():
    from pipeline.tools.options_reference import reference

    page = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert page == reference(), "run: python -m pipeline.tools.options_reference > " \
                                "docs/configuration.md"


@pytest.mark.parametrize("flags, sentence", [
    (["--direct_num_work=2"],  # never taken as an abbreviation of Beam's flag either
     "Unknown option --direct_num_work; did you mean --direct_num_workers?"),
    (["--use_compresion=a=b"], "Unknown option --use_compresion; did you mean --use_compression?"),
    (["--runner=FlinkRunner", "--flink_master", "localhost:8081", "--use_compresion=true"],
     "Unknown option --use_compresion; did you mean --use_compression?"),
    (["--runner=FlinkRunner", "--retain_checkpoints=true", "--use_compresion=true"],
     "Unknown option --use_compresion; did you mean --use_compression?"),
])
def test_misspelt_flags_are_refused_whatever_comes_before_them(flags, sentence):
    assert _error(BASE + flags) == (2, f"error: {sentence}")


def test_a_java_job_servers_own_flags_pass_on_and_dasks_are_known():
    _, beam_args = load_config(BASE + ["--runner=FlinkRunner", "--retain_checkpoints=true",
                                       "--flink_master", "localhost:8081"])
    assert beam_args[1:] == ["--retain_checkpoints=true", "--flink_master", "localhost:8081"]
    _, beam_args = load_config(BASE + ["--runner=dask", "--dask_worker_memory=2GiB"])
    assert beam_args == ["--runner=dask", "--dask_worker_memory=2GiB"]


def test_dasks_flags_are_known_to_a_fresh_process_only_with_its_runner():
    """In a process that has not loaded the Dask runner yet, as every forwarder run."""
    check_beam_args(["--runner=dask", "--dask_worker_memory=2GiB"])  # and in this one
    checked = subprocess.run([sys.executable, "-c", """if True:
        from pipeline.config import ConfigError, check_beam_args
        for args in (["--runner=DirectRunner", "--dask_worker_memory=2GiB"],
                     ["--dask_worker_memory=2GiB", "--run=dask"]):  # Beam takes no --run
            try:
                check_beam_args(args)
            except ConfigError as err:
                print(err)
        check_beam_args(["--runner=dask", "--dask_worker_memory=2GiB"])
        print("taken")"""], capture_output=True, text=True, check=True)
    refused = ("Unknown option --dask_worker_memory; the Dask runner's options are taken "
               "with --runner=dask.")
    assert checked.stdout.splitlines() == [refused, refused, "taken"]


def test_small_forms_each_taken_as_meant(capsys):
    import datetime

    from pipeline.config import validated
    from pipeline.run import main

    config, _ = load_config(BASE + ["--folder_name=/Xports/",
                                    "--s3_endpoint_url=https://minio.example:9000",
                                    "--store_data_in_folders_by_date="])
    assert (config.layout.folder, config.layout.date_folders) == ("Xports", DateFolders.NONE)
    assert config.connection.endpoint_url == "https://minio.example:9000"
    sub = f"{PROJECT}/subscriptions/s1"
    assert load_config(LIVE + [f"--input_subscription={sub}"])[0].input_subscription == sub
    at = datetime.datetime(2030, 1, 1, 12, tzinfo=datetime.timezone.utc)
    assert validated(merged_values(BASE)[0], [], now=at).upload_day == "2030-01-01"
    assert main(["--s3_bucket_name=b-ok", "--print_athena_ddl"]) == 0
    assert "CREATE EXTERNAL TABLE" in capsys.readouterr().out
    assert _error(BASE + ["--runner=FlinkRunner", "--retain_checkpoints", "true",
                          "--use_compresion=true"]) == (
        2, "error: Unknown option --use_compresion; did you mean --use_compression?")


def test_a_config_loaded_without_the_entry_point_checks_the_log_format_too():
    with pytest.raises(ConfigError, match="^--log_format must be one of text, json, not 'xml'"):
        load_config(BASE + ["--log_format=xml"])


def test_a_folder_that_is_more_than_slashes_is_taken():
    assert load_config(BASE + ["--folder_name=X/"])[0].layout.folder == "X"
