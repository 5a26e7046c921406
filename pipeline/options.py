"""The forwarder's options: the integration's settings under their snake_case names.

One table (`OPTIONS`) drives the command-line flags, the settings file keys and
the defaults, so the three can never disagree. Flags not in this table (the
runner's: --runner, --direct_num_workers, --flink_master, ...) go to Beam.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pipeline import logs
from transforms import parse, values
from transforms.io import retries, s3
from transforms.rules import naming, packing, settings

# The groups of --help and of the configuration reference, in their order.
INTEGRATION, INPUT, BATCHING, OUTPUT, LIVE, BOUNDED, OPERATIONS = (
    "integration settings", "input", "batching", "output", "live runs",
    "bounded runs", "operations")
GROUPS = (INTEGRATION, INPUT, BATCHING, OUTPUT, LIVE, BOUNDED, OPERATIONS)


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its flag (--name), its settings-file key (name), its type, default
    and, where it has them, its choices; the group it is listed under."""

    name: str
    kind: type  # bool, int, str, or list for repeatable values
    default: Any
    help: str
    group: str = INTEGRATION
    choices: tuple[str, ...] = ()


def _setting(name: str, default: bool, forwards: str) -> Option:
    return Option(name, bool, default, f"Forward {forwards}.")


OPTIONS: tuple[Option, ...] = (
    Option("s3_bucket_name", str, None, "Target bucket (required)."),
    Option("folder_name", str, None, "Key prefix inside the bucket."),
    Option("aws_region_endpoint", str, "us-east-1", "Region of the bucket."),
    Option("access_key_id", str, None, "User-based auth; blank: the default credential chain."),
    Option("secret_access_key", str, None, "Secret of --access_key_id; never logged."),
    Option("aws_role_arn", str, None, "Role to assume for role-based auth."),
    Option("server_side_encryption_method", str, "None",
           "Server-side encryption of every object written.", choices=s3.SSE_METHODS),
    Option("kms_key_id", str, None, "KMS key id or ARN for aws:kms."),
    Option("unique_id", str, None, "Added to every forwarded batch as unique_id."),
    Option(
        "metadata_field_exclusion", list, [],
        "Single metadata fields to drop, comma-separated (repeatable).",
        choices=tuple(settings.EXCLUDABLE_METADATA_FIELDS),
    ),
    _setting("send_lifecycle_events", True, "session_start/end, state transitions, first_run"),
    _setting("send_screen_views", True, "screen_view events"),
    _setting("send_crash_events", True, "crash_report events"),
    _setting("send_network_performance_events", True, "network_performance events"),
    _setting("send_custom_events", True, "custom_event events"),
    _setting("send_push_registrations_and_receipts", True, "push registrations and messages"),
    _setting("send_profile_change_events", True, "profile events"),
    _setting("send_commerce_events", True, "commerce_event events"),
    _setting("include_user_attribute_change_events", False, "user_attribute_change events"),
    _setting("include_user_identity_change_events", False, "user_identity_change events"),
    _setting("include_location_information", True, "each event's data.location"),
    _setting("include_event_batch_location", False, "the batch's context.location"),
    _setting("include_user_identities", True, "user_identities"),
    _setting("include_metadata", True, "application_info, device_info, source_info"),
    _setting("include_consent_state", True, "consent_state"),
    _setting("include_mp_deviceid", True, "mp_deviceid"),
    _setting("send_batches_without_events", False, "batches whose events were all filtered"),
    Option("send_as_batch", bool, True, "Batch per device and window; false: one per event."),
    Option("wait_for_complete_batch", bool, False, "One batch per device session."),
    Option(
        "store_data_in_folders_by_date", str, "none",
        "A YYYY-MM-DD folder per file: by its first event's time, by the upload's, or by "
        "the event's else the upload's (true: event_time, false: none).",
        choices=tuple(mode.value for mode in naming.DateFolders),
    ),
    Option("use_compression", bool, False,
           "gzip the files (.txt.gz); with --output_format=parquet: zstd, else snappy."),
    Option(
        "output_format", str, "json",
        "json: mParticle's NDJSON; parquet: one row per event in a fixed schema (.parquet; "
        "dead letters stay NDJSON).", group=OUTPUT, choices=values.OUTPUT_FORMATS,
    ),
    Option(
        "upload_day", str, None,
        "Bounded runs, date folders by upload time: the day (YYYY-MM-DD, UTC) they name; "
        "default: the day the run starts (logged, so a rerun can name it). Live files take "
        "the day their window closes.", group=OUTPUT,
    ),
    Option("input", list, [], "Input files: paths or globs, local, s3:// or gs:// (repeatable).",
           group=INPUT),
    Option(
        "input_subscription", str, None,
        "Pub/Sub subscription projects/<project>/subscriptions/<name> (live forwarding).",
        group=INPUT,
    ),
    Option(
        "input_topic", str, None,
        "Pub/Sub topic projects/<project>/topics/<name>, read through a durable subscription "
        "(--topic_subscription).", group=INPUT,
    ),
    Option(
        "topic_subscription", str, None,
        "With --input_topic: the subscription it is read through, made at the first start "
        "and read again by every later one; default: projects/<topic's project>/"
        "subscriptions/<topic>-s3-forwarder-<8 hex digits of the bucket and folder>.", group=INPUT,
    ),
    Option("s3_endpoint_url", str, None, "S3-compatible endpoint (local server, MinIO).",
           group=OUTPUT),
    Option("settings_file", str, None, "JSON or YAML file keyed by these option names.",
           group=INPUT),
    Option("app_name", str, None, "App name in file names; default: application_name.",
           group=OUTPUT),
    Option(
        "dead_letter_location", str, None,
        "s3://bucket/prefix or local directory; default: <folder>/_dead_letters/ in the bucket.",
        group=OUTPUT,
    ),
    Option("window_size_s", int, values.DEFAULT_WINDOW_SIZE_S, "Send as Batch window, seconds.",
           group=BATCHING),
    Option("session_gap_s", int, values.DEFAULT_SESSION_GAP_S, "Session gap, seconds.",
           group=BATCHING),
    Option(
        "allowed_lateness_s", int, values.DEFAULT_ALLOWED_LATENESS_S,
        "How late data may come and still go out in a further batch (streaming).", group=BATCHING,
    ),
    Option(
        "arrival_slice_s", int, 86400,
        "Bounded runs on this machine: group on local disk, a window at a time, and for "
        "sessions this many seconds of arrival time at a time (a multiple of "
        "window_size_s); 0: group the whole input in memory.", group=BOUNDED,
    ),
    Option(
        "spill_dir", str, None,
        "Bounded runs: local directory for the spill files (default: the system's "
        "temporary directory); removed at the end.", group=BOUNDED,
    ),
    Option("max_batches_per_file", int, packing.DEFAULT_MAX_BATCHES_PER_FILE, "Batches a file.",
           group=OUTPUT),
    Option("max_file_bytes", int, packing.DEFAULT_MAX_FILE_BYTES, "Uncompressed bytes a file.",
           group=OUTPUT),
    Option("file_shards", int, 1, "Files written in parallel per app, date and window.",
           group=OUTPUT),
    Option(
        "file_flush_s", int, 3,
        "Streaming, one-event and session batches: seconds a finished batch may wait "
        "for its file (fixed windows are written when they close); late batches: "
        "seconds the first of them waits for others to share its file (not on the "
        "DirectRunner).", group=LIVE,
    ),
    Option("dead_letter_flush_s", int, 30, "Streaming: seconds between dead-letter files.",
           group=LIVE),
    Option(
        "pubsub_readers", int, 0,
        "Live, on a portable runner: readers of the forwarder's Pub/Sub source, on Prism "
        "each a read in an SDK harness of its own as far as the first shuffle; 0: the "
        "runner's own number (two on Prism, Flink and Spark).", group=LIVE,
    ),
    Option(
        "session_harnesses", int, 0,
        "Live sessions on Prism: SDK harness processes that keep them, each with its "
        "part of the devices; 0: one. More use more cores where one is the limit. "
        "Live fixed windows are merged in one of their own.", group=LIVE,
    ),
    Option(
        "progress_every_s", int, 10,
        "Seconds between progress lines (bounded runs on this machine) or status lines "
        "(live runs); 0: none.", group=OPERATIONS,
    ),
    Option(
        "pubsub_unavailable_s", int, 300,
        "Live: seconds the subscription may be missing or Pub/Sub unreachable before the "
        "run writes what it holds and exits 6.", group=LIVE,
    ),
    Option(
        "drain_timeout_s", int, 120,
        "Live: seconds a stop may take to write the open windows before the run is "
        "cancelled (exit 5); a deployment's grace period must be longer.", group=LIVE,
    ),
    Option(
        "metrics_port", int, 0,
        "Serve Prometheus metrics (/metrics) and health checks (/healthz, /readyz) on this "
        "port, all interfaces; 0: none.", group=OPERATIONS,
    ),
    Option("max_batch_bytes", int, parse.DEFAULT_MAX_BATCH_BYTES, "Larger records: dead letters.",
           group=INPUT),
    Option(
        "skip_bucket_check", bool, False,
        "Do not write the verification objects (bucket, dead-letter location) at start.",
        group=OUTPUT,
    ),
    Option(
        "log_level", str, "INFO",
        "DEBUG adds Beam's and the AWS libraries' own lines (secrets are never shown).",
        group=OPERATIONS, choices=logs.LEVELS,
    ),
    Option(
        "log_format", str, "text",
        "text: one line per record as `time LEVEL message`; json: one JSON object per line "
        "(time, level, logger, message), for a log collector.",
        group=OPERATIONS, choices=logs.LOG_FORMATS,
    ),
    Option(
        "s3_connect_timeout_s", int, retries.DEFAULT_CONNECT_TIMEOUT_S,
        "Seconds to wait for a connection to S3.", group=OPERATIONS,
    ),
    Option(
        "s3_read_timeout_s", int, retries.DEFAULT_READ_TIMEOUT_S,
        "Seconds to wait for S3 to answer; start-up checks give up after three.", group=OPERATIONS,
    ),
    Option(
        "s3_write_deadline_s", int, retries.DEFAULT_DEADLINE_S,
        "Seconds one S3 call keeps retrying transient errors before the run fails.",
        group=OPERATIONS,
    ),
)

OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}
TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})


# The flags that go to Beam and choose or shape the engine, as --help ends with them.
RUNNER_FLAGS = (
    "Flags Beam knows go to Beam. --runner: DirectRunner (the default for --input), "
    "PrismRunner (the default for live input), dask, FlinkRunner, SparkRunner or "
    "DataflowRunner. --direct_num_workers, --direct_running_mode: a DirectRunner run's "
    "worker processes. --prism_location: the Prism binary (else the one beside this "
    "Python, which install-engine builds, else prism on PATH). --dask_client_address: "
    "a Dask scheduler to run on, else a local cluster of a worker per core, each with "
    "--dask_worker_memory (for example 2GiB; default auto, an equal share)."
)


def build_parser() -> argparse.ArgumentParser:
    """Flags for every option, in their groups, each with its default and choices; a
    flag not given is absent from the result."""
    parser = argparse.ArgumentParser(
        prog="mparticle-s3-forwarder",
        description="Forward mParticle event batches to S3 as the Amazon S3 integration does.",
        epilog=RUNNER_FLAGS,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,  # a misspelt flag is refused, never taken for another
    )
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for option in OPTIONS:
        group, flag, text = groups[option.group], f"--{option.name}", described(option)
        if option.kind is list:
            metavar = "PATH" if option.name == "input" else "NAMES"
            group.add_argument(flag, action="append", metavar=metavar, help=text)
        elif option.kind is bool:
            group.add_argument(flag, nargs="?", const="true", metavar="true|false", help=text)
        else:
            metavar = "|".join(option.choices) or option.kind.__name__.upper()
            group.add_argument(flag, metavar=metavar, help=text)
    groups[OPERATIONS].add_argument(
        "--print_iam_policy", choices=("role", "user"),
        help="Print the IAM policy for --s3_bucket_name and exit.",
    )
    groups[OPERATIONS].add_argument(
        "--print_athena_ddl", action="store_true",
        help="Print an Athena CREATE EXTERNAL TABLE for the bucket and folder, and exit.",
    )
    return parser


def shown_default(option: Option) -> str | None:
    """The default as it is written on the command line; None where there is none."""
    if option.default is None or option.default == []:
        return None
    if option.kind is bool:
        return str(option.default).lower()
    return str(option.default)


def described(option: Option) -> str:
    """The option's help, with its choices (of a list option) and its default."""
    text = option.help
    if option.kind is list and option.choices:
        text += f" One or more of: {', '.join(option.choices)}."
    default = shown_default(option)
    return f"{text} Default: {default}." if default is not None else text
