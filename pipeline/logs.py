"""What the launcher prints: its log lines and its one-sentence errors, never a secret.

`Console` is set up once by the entry point (`pipeline.run.main`): the log level
(`--log_level`), the format (`--log_format`: text, or one JSON object per line),
Beam's and the AWS libraries' loggers quieted below DEBUG, and a formatter through
which every log line passes, as `error` does for the sentences on stderr and `say`
for the status lines and the summary. The worker processes a run starts take the
same format (`worker_logging`, from their environment). Once the secret access key
is known (`hide`), the key and every piece of it of MIN_PIECE_CHARS or more are
replaced by REDACTED wherever they would show: in a
library's debug line, an exception's text, a traceback. The messages the forwarder
writes itself never quote a secret in the first place; this is the net beneath them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
from typing import IO, Iterable

# A piece of a secret this long is as good as the secret to someone who can guess
# the rest (an AWS secret key is 40 characters); shorter pieces are not hidden.
MIN_PIECE_CHARS = 16
REDACTED = "[secret]"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# Names the log format in the environment the worker processes inherit.
LOG_FORMAT_ENV = "MPARTICLE_S3_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Libraries whose INFO lines would swamp the forwarder's own; they still log at DEBUG.
_CHATTY = ("botocore", "boto3", "urllib3", "smart_open", "s3transfer")


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with each secret, and each piece of one of MIN_PIECE_CHARS, replaced."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
        for start in range(len(secret) - MIN_PIECE_CHARS + 1):
            piece = secret[start:start + MIN_PIECE_CHARS]
            if piece in text:
                text = text.replace(piece, REDACTED)
    return text


def json_line(level: str, logger: str, message: str, created: float | None = None,
              **fields) -> str:
    """One log record as a JSON object on one line: time (UTC, ISO 8601), level,
    logger, message, and any further fields."""
    moment = datetime.datetime.fromtimestamp(
        created if created is not None else datetime.datetime.now().timestamp(),
        datetime.timezone.utc)
    return json.dumps({"time": moment.isoformat(timespec="milliseconds"), "level": level,
                       "logger": logger, "message": message, **fields}, ensure_ascii=False)


class _Formatter(logging.Formatter):
    """A record as a text line (TEXT_FORMAT) or a JSON object, with `redact` applied
    to every part of it."""

    def __init__(self, log_format: str = "text", redact=lambda text: text):
        super().__init__(TEXT_FORMAT)
        self.log_format = log_format
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        if self.log_format != "json":
            return self._redact(super().format(record))
        fields = {}
        if record.exc_info:
            fields["exception"] = self._redact(self.formatException(record.exc_info))
        return json_line(record.levelname, record.name, self._redact(record.getMessage()),
                         record.created, **fields)


class Console:
    """The launcher's stderr and log, with the secrets it has been told of hidden."""

    def __init__(self) -> None:
        self._secrets: list[str] = []
        self._formatter = _Formatter(redact=self.redact)
        handler = logging.StreamHandler()
        handler.setFormatter(self._formatter)
        # force: importing Beam may already have given the root logger a handler.
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
        prism = logging.getLogger("PrismJobServer")
        if not any(isinstance(f, _PrismNotices) for f in prism.filters):  # once a process
            prism.addFilter(_PrismNotices())
        _log_uncaught_errors()
        self.set_level("INFO")
        self.set_format("text")

    def set_format(self, log_format: str) -> None:
        """text or json, for every line the launcher prints from now on, and for the
        workers it starts (LOG_FORMAT_ENV)."""
        global _FORMAT, _REDACT
        self._formatter.log_format = _FORMAT = log_format
        _REDACT = self.redact
        os.environ[LOG_FORMAT_ENV] = log_format

    def set_level(self, level: str) -> None:
        """The root logger's level; below DEBUG, libraries say only what goes wrong."""
        logging.getLogger().setLevel(level)
        debug = level == "DEBUG"
        for chatty in _CHATTY:
            logging.getLogger(chatty).setLevel(logging.DEBUG if debug else logging.WARNING)
        # A failed run is reported once, by the entry point (one sentence, or the
        # traceback of an unforeseen error), not again by the runner's own logs.
        logging.getLogger("apache_beam").setLevel(logging.DEBUG if debug else logging.CRITICAL)

    def hide(self, secret: str | None) -> None:
        if secret and secret not in self._secrets:
            self._secrets.append(secret)

    def hide_in_argv(self, argv: Iterable[str], flag: str) -> None:
        """Hides the value of `--flag=VALUE` or `--flag VALUE` before anything parses it."""
        argv = list(argv)
        for index, argument in enumerate(argv):
            if argument.startswith(f"{flag}="):
                self.hide(argument.split("=", 1)[1])
            elif argument == flag and index + 1 < len(argv):
                self.hide(argv[index + 1])

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def error(self, sentence: str) -> None:
        """`error: <sentence>` on stderr (in JSON: a record of level ERROR)."""
        say(f"error: {sentence}", sys.stderr, level="ERROR")


_FORMAT = "text"
_REDACT = str  # the console's redactor, once there is a console


def say(text: str, out: IO[str] | None = None, level: str = "INFO",
        logger: str = "pipeline", **fields) -> None:
    """A line for the operator (a status line, the summary, an error's sentence) on
    `out` (default stdout): as it is, or as one JSON object with `fields`, in the
    run's log format; secrets hidden either way."""
    out = out or sys.stdout
    if _FORMAT == "json":
        text = json_line(level, logger, _REDACT(text), **fields)
    else:
        text = _REDACT(text)
    print(text, file=out, flush=True)


def json_logs() -> bool:
    """Whether lines go out as JSON objects (--log_format=json)."""
    return _FORMAT == "json"


class _PrismNotices(logging.Filter):
    """Drops Prism's notice of a transform with nothing in it, which Beam's
    `Create` of a single element leaves in every unbounded read (its
    `MaybeReshuffle`): it would open every live run's output with a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "empty transform, with payload and identical input and output" not in str(
            record.msg)


def _log_uncaught_errors() -> None:
    """An error no code caught, in any thread, goes out as a log record (one JSON
    object with --log_format=json) rather than a bare traceback."""
    def thread_error(args) -> None:
        if args.exc_type is not SystemExit:
            logging.getLogger("pipeline").error(
                "uncaught error in thread %s", getattr(args.thread, "name", "?"),
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    threading.excepthook = thread_error


def worker_logging() -> None:
    """A worker process's log lines in the launcher's format (LOG_FORMAT_ENV), at its
    start, before Beam sets up logging there (Beam's own setup then keeps this one)."""
    log_format = os.environ.get(LOG_FORMAT_ENV)
    if log_format not in LOG_FORMATS:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(log_format))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    global _FORMAT
    _FORMAT = log_format
    _log_uncaught_errors()


class _MissingGcpClientsNotice(logging.Filter):
    """Drops the two warnings Beam logs when it is imported without its gcp extra
    (the forwarder needs neither GCS nor BigQuery): they would open every run's output."""

    NOTICES = ("Failed to import GCSFileSystem", "apitools not found")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


def quiet_beam_notices() -> None:
    """Drops Beam's notices about its missing gcp extra, in this process; called by
    the entry point and a worker's start before Beam is imported."""
    for name in ("", "apache_beam.io.filesystems"):  # root: bigquery's notice uses it
        logger = logging.getLogger(name)
        if not any(isinstance(f, _MissingGcpClientsNotice) for f in logger.filters):
            logger.addFilter(_MissingGcpClientsNotice())
