"""Flags and settings file → one validated, frozen `ForwarderConfig`.

Precedence: defaults, then the settings file, then flags. Every problem is a
`ConfigError` whose message is one sentence naming the option and what is
allowed; the entry point prints it without a stack trace.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import difflib
import ipaddress
import json
import re
import urllib.parse
from typing import Any, Callable, Sequence

import yaml
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipeline import runners
from pipeline.errors import ConfigError
from pipeline.options import FALSE_WORDS, OPTIONS, OPTIONS_BY_NAME, TRUE_WORDS, build_parser
from transforms.io.locations import Location, is_url
from transforms.io.pubsub_resources import topic_subscription_name
from transforms.io.s3 import S3Connection
from transforms.rules import naming
from transforms.rules.naming import DateFolders
from transforms.rules.settings import EXCLUDABLE_METADATA_FIELDS, ForwardingSettings
from transforms.values import Batching, BatchingMode, FileLayout

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


@dataclasses.dataclass(frozen=True)
class ForwarderConfig:
    bucket: str
    connection: S3Connection
    settings: ForwardingSettings
    inputs: tuple[str, ...]
    input_subscription: str | None
    input_topic: str | None
    # The subscription --input_topic is read through (given or derived); None without it.
    topic_subscription: str | None
    dead_letter_location: str
    app_name: str | None
    batching: Batching  # how batches are grouped per device
    layout: FileLayout  # how forwarded batches become files
    send_batches_without_events: bool
    max_batch_bytes: int
    skip_bucket_check: bool
    # These have their defaults in `pipeline.options.OPTIONS`, as every option does.
    file_flush_s: int
    dead_letter_flush_s: int
    progress_every_s: int
    pubsub_readers: int  # 0: the runner's own (`RunnerProfile.reads`, `.pubsub_readers`)
    session_harnesses: int  # 0: the runner's own number (`RunnerProfile.session_processes`)
    arrival_slice_s: int  # 0: unsliced (see pipeline.sliced)
    spill_dir: str | None
    pubsub_unavailable_s: int
    drain_timeout_s: int
    metrics_port: int  # 0: no metrics server
    # Date folders by upload time: the day a bounded run names them; None when live
    # (each file's window close, `naming.window_close_day`).
    upload_day: str | None = None

    @property
    def output_location(self) -> str:
        return f"s3://{self.bucket}"

    @property
    def subscription(self) -> str | None:
        """The subscription a live run reads: --input_subscription, or the topic's."""
        return self.input_subscription or self.topic_subscription

    @property
    def streaming(self) -> bool:
        """Live forwarding from Pub/Sub rather than a bounded run over files."""
        return bool(self.input_subscription or self.input_topic)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"--{name} must be true or false, not {value!r}.")


def _as_int(name: str, value: Any, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be a whole number, not {value!r}.") from None
    if isinstance(value, bool) or number < minimum:
        raise ConfigError(f"--{name} must be a whole number of at least {minimum}, not {value!r}.")
    return number


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value or ()]


def choice_of(name: str, value: Any, case: Callable[[str], str] = str.lower) -> str:
    """One of the option's choices (`Option.choices`), compared in `case`; a blank
    value is the option's default."""
    option = OPTIONS_BY_NAME[name]
    word = case(str(value or option.default).strip())
    if word not in option.choices:
        raise ConfigError(
            f"--{name} must be one of {', '.join(option.choices)}, not {value!r}.")
    return word


def log_level_of(value: Any) -> str:
    return choice_of("log_level", value, str.upper)


def log_format_of(value: Any) -> str:
    return choice_of("log_format", value)


def date_folders_of(value: Any) -> DateFolders:
    """mParticle's four choices, and true/false (true: by event time)."""
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return DateFolders.EVENT_TIME
    if word in FALSE_WORDS:
        return DateFolders.NONE
    try:
        return DateFolders(word)
    except ValueError:
        choices = ", ".join(mode.value for mode in DateFolders)
        raise ConfigError(
            f"--store_data_in_folders_by_date must be one of {choices} (or true, false), "
            f"not {value!r}."
        ) from None


def output_format_of(value: Any) -> str:
    return choice_of("output_format", value)


def _metadata_field_exclusion(values: list[str]) -> tuple[str, ...]:
    """Comma-separated or repeated names → the fields, each one known."""
    names = [name.strip().lower() for value in values for name in str(value).split(",")]
    names = [name for name in names if name]
    for name in names:
        if name not in EXCLUDABLE_METADATA_FIELDS:
            raise ConfigError(
                f"--metadata_field_exclusion {name!r} is not a metadata field the forwarder can "
                f"drop: use {', '.join(EXCLUDABLE_METADATA_FIELDS)}."
            )
    return tuple(dict.fromkeys(names))


def _coerce(option_name: str, value: Any) -> Any:
    kind = OPTIONS_BY_NAME[option_name].kind
    if value is None:
        return None
    if kind is bool:
        return _as_bool(option_name, value)
    if kind is int:
        return _as_int(option_name, value, minimum=0)
    if kind is list:
        return _as_list(value)
    text = str(value).strip()
    return text or None  # a blank setting means "not set", as in mParticle's UI


def read_settings_file(path: str) -> dict[str, Any]:
    """A JSON or YAML mapping keyed by option names."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as err:
        raise ConfigError(f"--settings_file {path!r} cannot be read: {err.strerror}.") from None
    try:
        loaded = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(
            f"--settings_file {path!r} is not valid JSON or YAML{_where_in_file(err)}."
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--settings_file {path!r} must hold a mapping of option names.")
    unknown = sorted(set(loaded) - set(OPTIONS_BY_NAME) - {"settings_file"})
    if unknown:
        raise ConfigError(
            f"--settings_file {path!r} has unknown settings {', '.join(unknown)}; "
            "keys are the option names, such as send_custom_events."
        )
    return loaded


def _where_in_file(err: Exception) -> str:
    """Where a parser stopped, as line and column: never the text there, which may be
    the line that holds the secret access key."""
    if isinstance(err, json.JSONDecodeError):
        return f" at line {err.lineno}, column {err.colno}"
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f" at line {mark.line + 1}, column {mark.column + 1}"
    return ""


def merged_values(argv: Sequence[str]) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """(option values after precedence, Beam's args, the print-and-exit flags given)."""
    parser = build_parser()
    given, beam_args = parser.parse_known_args(list(argv))
    given = vars(given)
    prints = {name: given.pop(name) for name in ("print_iam_policy", "print_athena_ddl")
              if name in given}
    values = {option.name: option.default for option in OPTIONS}
    settings_file = given.get("settings_file")
    if settings_file:
        for name, value in read_settings_file(settings_file).items():
            values[name] = _coerce(name, value)
    for name, value in given.items():
        values[name] = _coerce(name, value)
    return values, beam_args, prints


def validate_bucket_name(name: str | None, option: str = "s3_bucket_name") -> str:
    if not name:
        raise ConfigError(f"--{option} is required.")
    problem = None
    if not _BUCKET_NAME.match(name):
        problem = (
            "3 to 63 lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit"
        )
    elif ".." in name or ".-" in name or "-." in name:
        problem = "no two dots, or a dot and a hyphen, side by side"
    elif name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3")):
        problem = "no reserved prefix or suffix (xn--, sthree-, -s3alias, --ol-s3)"
    else:
        try:
            ipaddress.ip_address(name)
            problem = "not an IP address"
        except ValueError:
            pass
    if problem:
        raise ConfigError(f"--{option} {name!r} is not a valid bucket name: {problem}.")
    return name


def _check(values: dict[str, Any]) -> None:
    choice_of("server_side_encryption_method", values["server_side_encryption_method"],
              case=lambda word: word)
    if values["kms_key_id"] and values["server_side_encryption_method"] != "aws:kms":
        raise ConfigError("--kms_key_id needs --server_side_encryption_method=aws:kms.")
    secret = values["secret_access_key"]
    if secret and (not secret.isprintable() or any(char.isspace() for char in secret)):
        raise ConfigError(
            "--secret_access_key holds white space or a control character (a copy-and-paste "
            "slip?); it is not shown here."
        )
    if bool(values["access_key_id"]) != bool(values["secret_access_key"]):
        raise ConfigError(
            "--access_key_id and --secret_access_key go together: give both, or neither "
            "for role-based auth."
        )
    if not values["s3_endpoint_url"] and not _REGION.match(values["aws_region_endpoint"] or ""):
        raise ConfigError(
            f"--aws_region_endpoint {values['aws_region_endpoint'] or ''!r} is not an AWS region "
            "such as us-east-1."
        )
    sources = [name for name in ("input", "input_subscription", "input_topic") if values[name]]
    if not sources:
        raise ConfigError(
            "No input: give --input (files or globs), --input_subscription or --input_topic."
        )
    if len(sources) > 1:
        raise ConfigError(
            f"Give one input source, not {' and '.join('--' + s for s in sources)}."
        )
    for name, kind in (("input_subscription", "subscriptions"), ("input_topic", "topics"),
                       ("topic_subscription", "subscriptions")):
        if values[name]:
            _check_pubsub_name(name, kind, values[name])
    if values["topic_subscription"] and not values["input_topic"]:
        raise ConfigError("--topic_subscription goes with --input_topic (the subscription "
                          "the topic is read through).")
    for name in ("window_size_s", "session_gap_s", "max_batches_per_file", "max_file_bytes",
                 "file_shards", "max_batch_bytes", "file_flush_s", "dead_letter_flush_s",
                 "s3_connect_timeout_s", "s3_read_timeout_s", "s3_write_deadline_s"):
        _as_int(name, values[name], minimum=1)
    for name in ("pubsub_readers", "session_harnesses"):  # 0: the runner's own number
        _as_int(name, values[name], minimum=0)
    _as_int("pubsub_unavailable_s", values["pubsub_unavailable_s"], minimum=1)
    _as_int("drain_timeout_s", values["drain_timeout_s"], minimum=1)
    port = _as_int("metrics_port", values["metrics_port"], minimum=0)
    if port > 65535:
        raise ConfigError(f"--metrics_port must be a port number up to 65535, not {port}.")
    log_format_of(values["log_format"])
    _check_slices(values)
    log_level_of(values["log_level"])
    if values["folder_name"] and values["folder_name"].strip("/") == "":
        raise ConfigError("--folder_name must hold more than slashes.")
    if values["s3_endpoint_url"]:
        _check_endpoint_url(values["s3_endpoint_url"])
    if values["dead_letter_location"]:
        _check_dead_letter_location(values["dead_letter_location"])


def _check_slices(values: dict[str, Any]) -> None:
    """A slice holds whole fixed windows (and file windows), UTC-aligned as they are."""
    _as_int("arrival_slice_s", values["arrival_slice_s"], minimum=0)
    slice_s, window_s = values["arrival_slice_s"], values["window_size_s"]
    if slice_s and slice_s % window_s:
        raise ConfigError(
            f"--arrival_slice_s={slice_s} must be a multiple of --window_size_s={window_s}, "
            f"so that no window spans two slices (such as {max(slice_s // window_s, 1) * window_s}"
            ")."
        )
    spill_dir = values["spill_dir"]
    if spill_dir and "://" in spill_dir:
        raise ConfigError(f"--spill_dir {spill_dir!r} must be a local directory.")


def _check_pubsub_name(option: str, kind: str, path: str) -> None:
    """projects/<project>/<kind>/<name>, each part as Pub/Sub (and Beam's reader) allow."""
    if not re.fullmatch(rf"projects/[^/]+/{kind}/[^/]+", path):
        raise ConfigError(f"--{option} {path!r} must look like projects/<project>/{kind}/<name>.")
    from apache_beam.io.gcp.pubsub import parse_subscription, parse_topic

    try:
        (parse_subscription if kind == "subscriptions" else parse_topic)(path)
    except ValueError as err:
        raise ConfigError(f"--{option} {path!r}: {err}") from None


def _check_endpoint_url(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"--s3_endpoint_url {url!r} must be an http:// or https:// URL with a host, "
            "such as http://127.0.0.1:9000."
        )


def _check_dead_letter_location(location: str) -> None:
    where = Location.of(location)
    if where.on_s3:
        if not where.bucket:
            raise ConfigError(f"--dead_letter_location {location!r} names no bucket.")
        validate_bucket_name(where.bucket, option="dead_letter_location")
    elif is_url(location):
        raise ConfigError(
            f"--dead_letter_location {location!r} must be s3://bucket/prefix or a local directory."
        )


def check_beam_args(beam_args: Sequence[str]) -> None:
    """Refuses what neither the forwarder nor Beam knows, suggesting the closest flag.

    Beam itself only warns about an unknown flag and runs on, so a misspelt
    --use_compresion=true would silently write uncompressed files. For runners
    with a Java job server, a flag Python does not know goes on to the job server,
    unless it looks like a misspelt forwarder option.
    """
    runners.declare_options(runners.canonical(_runner_in(beam_args)))

    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    for options_class in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        options_class._add_argparse_args(parser)  # as PipelineOptions.get_all_options does
    known, unknown = parser.parse_known_args(list(beam_args))
    passes_on = runners.canonical(getattr(known, "runner", None)) in runners.JAVA_JOB_SERVER
    ours = [f"--{option.name}" for option in OPTIONS]
    beams = [string for string in parser._option_string_actions if string.startswith("--")]
    for argument in unknown:
        flag = argument.split("=", 1)[0]
        if not flag.startswith("-"):
            if passes_on:
                continue  # the value of a job-server option given as "--flag value"
            # Not quoted: it may be a secret given after a misspelt flag.
            raise ConfigError(
                "An argument is not a --flag (it is not shown, in case it is a secret): "
                "every option is a --flag=VALUE."
            )
        close_to_ours = difflib.get_close_matches(flag, ours, n=1, cutoff=0.75)
        if passes_on and not close_to_ours:
            continue
        close = close_to_ours or difflib.get_close_matches(flag, ours + beams, n=1, cutoff=0.6)
        if flag.startswith("--dask_") and not close_to_ours:
            hint = "; the Dask runner's options are taken with --runner=dask."
        elif close:
            hint = f"; did you mean {close[0]}?"
        else:
            hint = "; python -m pipeline --help lists them."
        raise ConfigError(f"Unknown option {flag}{hint}")


def _runner_in(beam_args: Sequence[str]) -> str | None:
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    parser.add_argument("--runner")
    return parser.parse_known_args(list(beam_args))[0].runner


def load_config(argv: Sequence[str]) -> tuple[ForwarderConfig, list[str]]:
    """Validated config and the arguments left for Beam's PipelineOptions."""
    values, beam_args, _ = merged_values(argv)
    return validated(values, beam_args), beam_args


def validated(
    values: dict[str, Any], beam_args: Sequence[str], now: datetime.datetime | None = None
) -> ForwarderConfig:
    """The config of merged values (`merged_values`), checked, then the arguments left
    for Beam: what `main` runs with. `now`: see `config_from_values`."""
    config = config_from_values(values, now)
    check_beam_args(beam_args)
    return config


def _upload_day(value: str | None, streaming: bool, now: datetime.datetime) -> str | None:
    """The day a bounded run's files dated by upload time go under: fixed once, at
    start, so that no retry or rerun puts the same batches under another day."""
    if streaming:
        if value:
            raise ConfigError(
                "--upload_day is for bounded runs: a live file's upload day is the day its "
                "window closes."
            )
        return None
    if not value:
        return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        with contextlib.suppress(ValueError):
            return datetime.date.fromisoformat(value).isoformat()
    raise ConfigError(
        f"--upload_day must be a day as YYYY-MM-DD, such as 2024-06-01, not {value!r}."
    )


def config_from_values(
    values: dict[str, Any], now: datetime.datetime | None = None
) -> ForwarderConfig:
    """`now`: when the run starts (the clock's time if None), for its upload day."""
    bucket = validate_bucket_name(values["s3_bucket_name"])
    _check(values)
    streaming = bool(values["input_subscription"] or values["input_topic"])
    upload_day = _upload_day(
        values["upload_day"], streaming, now or datetime.datetime.now(datetime.timezone.utc)
    )
    folder = values["folder_name"].strip("/") if values["folder_name"] else None
    if values["wait_for_complete_batch"]:
        mode = BatchingMode.SESSIONS  # overrides Send as Batch, as in mParticle
    elif values["send_as_batch"]:
        mode = BatchingMode.FIXED
    else:
        mode = BatchingMode.PER_EVENT
    settings_fields = {f.name for f in dataclasses.fields(ForwardingSettings)}
    settings = {k: v for k, v in values.items() if k in settings_fields}
    settings["metadata_field_exclusion"] = _metadata_field_exclusion(
        values["metadata_field_exclusion"]
    )
    return ForwarderConfig(
        bucket=bucket,
        connection=S3Connection(
            region=values["aws_region_endpoint"],
            endpoint_url=values["s3_endpoint_url"],
            access_key_id=values["access_key_id"],
            secret_access_key=values["secret_access_key"],
            role_arn=values["aws_role_arn"],
            sse_method=values["server_side_encryption_method"],
            kms_key_id=values["kms_key_id"],
            connect_timeout_s=values["s3_connect_timeout_s"],
            read_timeout_s=values["s3_read_timeout_s"],
            retry_deadline_s=values["s3_write_deadline_s"],
        ),
        settings=ForwardingSettings(**settings),
        inputs=tuple(values["input"]),
        input_subscription=values["input_subscription"],
        input_topic=values["input_topic"],
        topic_subscription=(values["topic_subscription"] or topic_subscription_name(
            values["input_topic"], bucket, folder)) if values["input_topic"] else None,
        dead_letter_location=values["dead_letter_location"]
        or f"s3://{bucket}/{naming.join_key(folder, '_dead_letters')}",
        app_name=naming.safe_app_name(values["app_name"]) if values["app_name"] else None,
        batching=Batching(mode, values["window_size_s"], values["session_gap_s"],
                          values["allowed_lateness_s"]),
        layout=FileLayout(
            folder=folder,
            compress=values["use_compression"],
            date_folders=date_folders_of(values["store_data_in_folders_by_date"] or "none"),
            output_format=output_format_of(values["output_format"]),
            shards=values["file_shards"],
            max_batches=values["max_batches_per_file"],
            max_bytes=values["max_file_bytes"],
        ),
        send_batches_without_events=values["send_batches_without_events"],
        max_batch_bytes=values["max_batch_bytes"],
        skip_bucket_check=values["skip_bucket_check"],
        file_flush_s=values["file_flush_s"],
        dead_letter_flush_s=values["dead_letter_flush_s"],
        progress_every_s=values["progress_every_s"],
        pubsub_readers=values["pubsub_readers"],
        session_harnesses=values["session_harnesses"],
        arrival_slice_s=values["arrival_slice_s"],
        spill_dir=values["spill_dir"],
        pubsub_unavailable_s=values["pubsub_unavailable_s"],
        drain_timeout_s=values["drain_timeout_s"],
        metrics_port=values["metrics_port"],
        upload_day=upload_day,
    )
