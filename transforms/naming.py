"""Pure rules for the names and keys of forwarded files, as mParticle makes them.

    <Folder Name>/<YYYY-MM-DD>/<App Name>_<UTC timestamp>_<5 digits>.txt[.gz]

for example `mPTravel_20171017170911644493_34523.txt`. The timestamp is
`%Y%m%d%H%M%S` plus microseconds. Here both the timestamp and the digits come
from the file's data, never from the clock or a random number, so a retried or
re-run write produces the same key for the same content.
"""

from __future__ import annotations

import datetime
import re

FILE_DIGITS = 100_000  # five digits
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_APP_NAME_CHARS = 100
UNKNOWN_APP_NAME = "unknown_app"


def safe_app_name(name: object) -> str:
    """An app name that is safe in an S3 key and in Athena/Glue paths.

    >>> safe_app_name("SDK Canary / iOS")
    'SDK_Canary_iOS'
    """
    if not isinstance(name, str):
        return UNKNOWN_APP_NAME
    safe = _UNSAFE_KEY_CHARS.sub("_", name.strip()).strip("._")
    return safe[:MAX_APP_NAME_CHARS] or UNKNOWN_APP_NAME


def utc_datetime(unix_ms: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        milliseconds=unix_ms
    )


def date_folder(unix_ms: int) -> str:
    """The `YYYY-MM-DD` folder (UTC) of a time in milliseconds since the epoch."""
    return utc_datetime(unix_ms).strftime("%Y-%m-%d")


def file_timestamp(unix_ms: int) -> str:
    """20 digits: `%Y%m%d%H%M%S` and microseconds, in UTC."""
    return utc_datetime(unix_ms).strftime("%Y%m%d%H%M%S%f")


def file_digits(content_sha256: str, attempt: int = 0) -> int:
    """Five digits taken from the content's hash; `attempt` moves past a taken key."""
    return (int(content_sha256[:12], 16) + attempt) % FILE_DIGITS


def file_name(app_name: str, unix_ms: int, digits: int, compressed: bool) -> str:
    """`<App Name>_<UTC timestamp>_<5 digits>.txt`, `.txt.gz` when gzipped."""
    suffix = ".txt.gz" if compressed else ".txt"
    return f"{app_name}_{file_timestamp(unix_ms)}_{digits:05d}{suffix}"


def join_key(*parts: str | None) -> str:
    """An S3 key from its non-empty parts, without doubled or edge slashes."""
    return "/".join(part.strip("/") for part in parts if part and part.strip("/"))


def verification_key(folder: str | None, now: datetime.datetime) -> str:
    """Where the start-up write check puts its `{}` object, as mParticle names it."""
    return join_key(folder, f"mParticle_Bucket_Verification_{now:%Y%m%d-%H%M%S}.txt")
