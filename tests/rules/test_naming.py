"""Names and keys (`transforms.rules.naming`): mParticle's file names, safe app names,
date folders, the upload day."""

from __future__ import annotations

import datetime
import re

import pytest

from transforms.rules import naming

T = 1_595_542_763_908  # 2020-07-23T22:19:23.908Z


def test_file_name_matches_mparticles_example():
    # mPTravel_20171017170911644493_34523.txt: %Y%m%d%H%M%S + microseconds, 5 digits;
    # the file format's extension ends it (`transforms.machinery.files`).
    from transforms.machinery.files import Ndjson, Parquet

    unix_ms = 1508260151644
    stem = naming.file_stem("mPTravel", unix_ms, 34523)
    assert stem + Ndjson().extension == "mPTravel_20171017170911644000_34523.txt"
    assert naming.file_stem("mPTravel", unix_ms, 7) + Ndjson(compress=True).extension == (
        "mPTravel_20171017170911644000_00007.txt.gz")
    assert Parquet(compress=True).extension == ".parquet"
    assert re.fullmatch(r"\w+_\d{20}_\d{5}", naming.file_stem("a", 0, 0))


@pytest.mark.parametrize(
    "name, safe",
    [
        ("mPTravel", "mPTravel"),
        ("SDK Canary", "SDK_Canary"),
        ("../etc/passwd", "etc_passwd"),
        ("Café ☕ App", "Caf_App"),
        ("", naming.UNKNOWN_APP_NAME),
        (None, naming.UNKNOWN_APP_NAME),
        ("x" * 300, "x" * naming.MAX_APP_NAME_CHARS),
        ("._Xbox X._", "Xbox_X"),  # dots and underscores trimmed at the ends only
    ],
)
def test_safe_app_name(name, safe):
    assert naming.safe_app_name(name) == safe


@pytest.mark.parametrize(
    "unix_ms, folder",
    [(0, "1970-01-01"), (1558342827953, "2019-05-20"), (1700006399999, "2023-11-14"),
     (1700006400000, "2023-11-15")],
)
def test_date_folder_is_utc(unix_ms, folder):
    assert naming.date_folder(unix_ms) == folder


@pytest.mark.parametrize(
    "parts, key",
    [
        (("folder", "2020-01-01", "a.txt"), "folder/2020-01-01/a.txt"),
        (("/folder/sub/", None, "a.txt"), "folder/sub/a.txt"),
        ((None, "", "a.txt"), "a.txt"),
        (("/X/", "//", "Xb"), "X/Xb"),
    ],
)
def test_join_key(parts, key):
    assert naming.join_key(*parts) == key


def test_file_digits_are_five_digits_and_move_on_attempts():
    sha = "f" * 64
    assert 0 <= naming.file_digits(sha) < 100_000
    assert naming.file_digits(sha, 1) == (naming.file_digits(sha) + 1) % 100_000
    # The same content gets the same name in every release: a rerun finds its files.
    assert naming.file_digits("0123456789abcdef" * 4) == 96_491
    assert naming.file_digits("0123456789abcdef" * 4, 3) == 96_494


def test_the_verification_object_is_named_as_mparticle_names_it():
    at = datetime.datetime(2026, 1, 2, 3, 4, 5)
    assert naming.verification_key("out", at) == \
        "out/mParticle_Bucket_Verification_20260102-030405.txt"
    assert naming.verification_key(None, at, hidden=True) == \
        "_mParticle_Bucket_Verification_20260102-030405.txt"


@pytest.mark.parametrize("first_event_ms, mode, expected", [
    (T, naming.DateFolders.NONE, ""),
    (T, naming.DateFolders.EVENT_TIME, "2020-07-23"),
    (None, naming.DateFolders.EVENT_TIME, ""),
    (T, naming.DateFolders.UPLOAD_TIME, naming.UPLOAD_DAY),
    (T, naming.DateFolders.EVENT_TIME_OR_UPLOAD_TIME, "2020-07-23"),
    (None, naming.DateFolders.EVENT_TIME_OR_UPLOAD_TIME, naming.UPLOAD_DAY),
])
def test_batch_date_folder(first_event_ms, mode, expected):
    assert naming.batch_date_folder(first_event_ms, mode) == expected


def test_upload_day_is_the_day_given_never_the_clock():
    assert naming.resolve_upload_day(naming.UPLOAD_DAY, "2026-01-02") == "2026-01-02"
    assert naming.resolve_upload_day("2020-07-23", "2026-01-02") == "2020-07-23"
    assert naming.resolve_upload_day("", "2026-01-02") == ""
    with pytest.raises(ValueError, match="^a file's date folder is its upload day, and no "
                                         "upload day was given$"):
        naming.resolve_upload_day(naming.UPLOAD_DAY, None)


@pytest.mark.parametrize("window_end, day", [
    ("2026-01-02T23:50:00", "2026-01-02"),
    ("2026-01-03T00:00:00", "2026-01-03"),  # [23:50, 00:00) closes on the next day
    ("2026-01-03T00:00:00.001", "2026-01-03"),
])
def test_a_live_files_upload_day_is_the_day_its_window_closes(window_end, day):
    end = datetime.datetime.fromisoformat(window_end).replace(tzinfo=datetime.timezone.utc)
    assert naming.window_close_day(int(end.timestamp() * 1000)) == day
