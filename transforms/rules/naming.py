"""Pure rules for the names and keys of forwarded files, as mParticle makes them.

    <Folder Name>/<YYYY-MM-DD>/<App Name>_<UTC timestamp>_<5 digits>.txt[.gz]

for example `mPTravel_20171017170911644493_34523.txt`. The timestamp is
`%Y%m%d%H%M%S` plus microseconds. Here both the timestamp and the digits come
from the file's data, never from the clock or a random number, so a retried or
re-run write produces the same key for the same content.
"""

from __future__ import annotations

import datetime
import enum
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


class DateFolders(enum.Enum):
    """Store Data In Folders By Date: which day names a file's `YYYY-MM-DD/` folder."""

    NONE = "none"
    EVENT_TIME = "event_time"  # the first event's; none for a batch without event times
    UPLOAD_TIME = "upload_time"  # the day (UTC) the file is written
    EVENT_TIME_OR_UPLOAD_TIME = "event_time_or_upload_time"


# The folder of a file whose day is the day it is written: known only then.
UPLOAD_DAY = "{upload day}"


def batch_date_folder(first_event_ms: int | None, mode: DateFolders) -> str:
    """The date folder a batch's file goes to: "YYYY-MM-DD", "" (none) or UPLOAD_DAY.

    `first_event_ms` is the batch's first event time, None if it has none.
    """
    if mode is DateFolders.NONE:
        return ""
    if mode is DateFolders.UPLOAD_TIME:
        return UPLOAD_DAY
    if first_event_ms is not None:
        return date_folder(first_event_ms)
    return UPLOAD_DAY if mode is DateFolders.EVENT_TIME_OR_UPLOAD_TIME else ""


def resolve_upload_day(folder: str, upload_day: str | None) -> str:
    """UPLOAD_DAY as `upload_day`; any other folder as it is.

    The upload day is never read from the clock as a file is written: a retry
    across midnight, or a rerun on another day, would then write the same batches
    under a second key. A bounded run fixes it at start (`--upload_day`); a live
    file takes the day its window closes (`window_close_day`).
    """
    if folder != UPLOAD_DAY:
        return folder
    if not upload_day:
        raise ValueError("a file's date folder is its upload day, and no upload day was given")
    return upload_day


def window_close_day(window_end_ms: int) -> str:
    """A live file's upload day: the day (UTC) of the instant its window closes, seconds
    before it is written; [23:50, 00:00) closes on the next day."""
    return date_folder(window_end_ms)


def file_timestamp(unix_ms: int) -> str:
    """20 digits: `%Y%m%d%H%M%S` and microseconds, in UTC."""
    return utc_datetime(unix_ms).strftime("%Y%m%d%H%M%S%f")


def file_digits(content_sha256: str, attempt: int = 0) -> int:
    """Five digits taken from the content's hash; `attempt` moves past a taken key."""
    return (int(content_sha256[:12], 16) + attempt) % FILE_DIGITS


def file_stem(app_name: str, unix_ms: int, digits: int) -> str:
    """`<App Name>_<UTC timestamp>_<5 digits>`, which the file format's extension ends
    (`.txt`, `.txt.gz`, `.parquet`: `transforms.machinery.files`)."""
    return f"{app_name}_{file_timestamp(unix_ms)}_{digits:05d}"


def join_key(*parts: str | None) -> str:
    """An S3 key from its non-empty parts, without doubled or edge slashes."""
    return "/".join(part.strip("/") for part in parts if part and part.strip("/"))


def verification_key(folder: str | None, now: datetime.datetime, hidden: bool = False) -> str:
    """Where the start-up write check puts its `{}` object, as mParticle names it
    (`hidden`: with a leading "_", which table readers skip)."""
    name = f"mParticle_Bucket_Verification_{now:%Y%m%d-%H%M%S}.txt"
    return join_key(folder, f"_{name}" if hidden else name)
