"""What the launcher prints: its log lines and its one-sentence errors, never a secret.

`Console` is set up once by the entry point (`pipeline.run.main`): the log level
(`--log_level`), Beam's and the AWS libraries' loggers quieted below DEBUG, and a
formatter through which every log line passes, as `error` does for the sentences on
stderr. Once the secret access key is known (`hide`), the key and every piece of it
of MIN_PIECE_CHARS or more are replaced by REDACTED wherever they would show: in a
library's debug line, an exception's text, a traceback. The messages the forwarder
writes itself never quote a secret in the first place; this is the net beneath them.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable

# A piece of a secret this long is as good as the secret to someone who can guess
# the rest (an AWS secret key is 40 characters); shorter pieces are not hidden.
MIN_PIECE_CHARS = 16
REDACTED = "[secret]"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
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


class _RedactingFormatter(logging.Formatter):
    def __init__(self, console: Console):
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self._console = console

    def format(self, record: logging.LogRecord) -> str:
        return self._console.redact(super().format(record))


class Console:
    """The launcher's stderr and log, with the secrets it has been told of hidden."""

    def __init__(self) -> None:
        self._secrets: list[str] = []
        handler = logging.StreamHandler()
        handler.setFormatter(_RedactingFormatter(self))
        # force: importing Beam may already have given the root logger a handler.
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
        self.set_level("INFO")

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
        """`error: <sentence>` on stderr."""
        print(self.redact(f"error: {sentence}"), file=sys.stderr)


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
