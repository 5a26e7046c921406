"""The secret access key never shows: not in what a run prints at DEBUG (good runs,
failing runs, malformed settings files, values that fail validation), not in the
config's repr, not in the job graph's display data."""

from __future__ import annotations

import shutil
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.build import build
from pipeline.config import load_config
from pipeline.logs import MIN_PIECE_CHARS, redact
from tests.conftest import ROOT, SAMPLE_BATCH

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY"
PIECES = [SECRET[i:i + MIN_PIECE_CHARS] for i in range(len(SECRET) - MIN_PIECE_CHARS + 1)]


def leaks(text: str) -> list[str]:
    """The secret, or the pieces of it of MIN_PIECE_CHARS characters, found in `text`."""
    return [piece for piece in [SECRET, *PIECES] if piece in text]


def run_printing_everything(*flags: str) -> tuple[int, str]:
    """`python -m pipeline ... --log_level=DEBUG` in a process of its own: its exit code
    and everything it and its child processes print, stdout and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--log_level=DEBUG", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def settings_files(tmp_path):
    """Settings files that hold the secret and that no parser accepts."""
    files = {
        # An unclosed quote: YAML's own message quotes the line.
        "broken.yaml": f'access_key_id: AKIDEXAMPLE\nsecret_access_key: "{SECRET}\n'
                       "use_compression: [true\n",
        "tab.yaml": f"access_key_id: AKIDEXAMPLE\nsecret_access_key: {SECRET}\n\tbad: 1\n",
        "broken.json": f'{{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "{SECRET}" x}}',
        "valid_but_unknown.yaml": f"secret_acess_key: {SECRET}\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return [tmp_path / name for name in files]


def test_nothing_a_run_prints_at_debug_shows_the_secret(
    s3_endpoint, bucket, tmp_path, settings_files, prism
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SAMPLE_BATCH, inputs / "sample.json")
    (inputs / "bad.ndjson").write_text("not json\n")
    keys = ["--access_key_id=AKIDEXAMPLE", f"--secret_access_key={SECRET}"]
    common = [f"--s3_bucket_name={bucket}", f"--s3_endpoint_url={s3_endpoint}",
              f"--input={inputs}/*"]
    runs = {
        "good, DirectRunner": (0, [*common, *keys]),
        "good, Prism": (0, [*common, *keys, "--runner=PrismRunner"]),
        "bucket missing": (3, [*common[1:], "--s3_bucket_name=no-such-bucket-here", *keys]),
        "fails while running": (1, [*common[1:], "--s3_bucket_name=no-such-bucket-here",
                                    "--skip_bucket_check=true", *keys]),
        "S3 unreachable": (3, [common[0], "--s3_endpoint_url=http://127.0.0.1:9",
                               common[2], "--s3_connect_timeout_s=1",
                               "--s3_read_timeout_s=1", *keys]),
        "secret with a space": (2, [*common, "--access_key_id=AKIDEXAMPLE",
                                    f"--secret_access_key={SECRET[:20]} {SECRET[20:]}"]),
        "secret after a misspelt flag": (2, [*common, "--secret_acess_key", SECRET]),
        "secret without its key id": (2, [*common, f"--secret_access_key={SECRET}"]),
        **{f"settings file {path.name}": (2, [*common, f"--settings_file={path}"])
           for path in settings_files},
    }
    for name, (expected_code, flags) in runs.items():
        code, printed = run_printing_everything(*flags)
        assert code == expected_code, f"{name}: {printed[-3000:]}"
        assert not leaks(printed), f"{name} printed {leaks(printed)}: {printed[-3000:]}"
    # The DEBUG lines were there to be searched: the libraries' own, not only ours.
    code, printed = run_printing_everything(*runs["good, DirectRunner"][1])
    assert "DEBUG" in printed and "botocore" in printed and "apache_beam" in printed


def test_settings_file_errors_say_where_without_quoting(settings_files):
    from tests.conftest import run_main

    for path in settings_files[:3]:
        code, out, err = run_main(["--s3_bucket_name=acme", f"--settings_file={path}"])
        assert code == 2 and " at line " in err and ", column " in err, err
        assert not leaks(err)


def test_redact_hides_the_secret_and_every_long_piece_of_it():
    text = f"a {SECRET} b {SECRET[3:3 + MIN_PIECE_CHARS]} c {SECRET[:MIN_PIECE_CHARS - 1]}"
    hidden = redact(text, [SECRET])
    assert not leaks(hidden)
    assert SECRET[:MIN_PIECE_CHARS - 1] in hidden  # shorter pieces are not recognisable


def test_secret_absent_from_the_job_graphs_display_data_and_config_repr(tmp_path):
    config, beam_args = load_config([
        "--s3_bucket_name=acme", f"--input={tmp_path}/*", "--access_key_id=AKIDEXAMPLE",
        f"--secret_access_key={SECRET}",
    ])
    assert not leaks(repr(config)) and not leaks(" ".join(beam_args))
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build(pipeline, config)
    proto = pipeline.to_runner_api()
    display = [
        item.SerializeToString()
        for transform in proto.components.transforms.values()
        for item in transform.display_data
    ]
    assert display  # the graph does carry display data
    assert not any(SECRET.encode() in item for item in display)
    assert not leaks(str(PipelineOptions(beam_args).display_data()))


@pytest.fixture(scope="module")
def signing_s3():
    """A second S3 server that checks every request's signature against IAM's keys
    (moto's INITIAL_NO_AUTH_ACTION_COUNT: the first four calls, which make a user, its
    key, its policy and a bucket, go unchecked); yields (endpoint, key id, secret)."""
    import boto3

    from pipeline.tools.local_services import moto_server

    with moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as endpoint:
        anyone = {"endpoint_url": endpoint, "region_name": "us-east-1",
                  "aws_access_key_id": "local", "aws_secret_access_key": "local"}
        iam = boto3.client("iam", **anyone)
        iam.create_user(UserName="forwarder")
        key = iam.create_access_key(UserName="forwarder")["AccessKey"]
        iam.put_user_policy(UserName="forwarder", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", '
            '"Resource": "*"}]}'))
        boto3.client("s3", **anyone).create_bucket(Bucket="signed")
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]


@pytest.mark.parametrize("secret_is", ["wrong", "right"])
def test_a_wrong_secret_key_fails_the_start_in_one_sentence(signing_s3, tmp_path, secret_is):
    from tests.conftest import run_main

    endpoint, key_id, secret = signing_s3
    shutil.copy(SAMPLE_BATCH, tmp_path / "sample.json")
    given = SECRET if secret_is == "wrong" else secret
    code, out, err = run_main([
        "--s3_bucket_name=signed", f"--s3_endpoint_url={endpoint}", f"--input={tmp_path}/*",
        f"--access_key_id={key_id}", f"--secret_access_key={given}"])
    if secret_is == "right":  # the server takes a good signature: it is the key it refuses
        assert code == 0, err
        return
    assert code == 3, err
    [sentence] = [line for line in err.splitlines() if line.startswith("error:")]
    assert sentence.startswith("error: S3 bucket 'signed' in region 'us-east-1' at ")
    assert "refused the write check PutObject of " in sentence
    assert "SignatureDoesNotMatch" in sentence, sentence
    assert not leaks(err + out)
    print(f"\n{sentence}")
