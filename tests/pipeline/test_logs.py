"""The launcher's log formats (`pipeline.logs`): text and one JSON object per line,
each with the secret hidden, for log records, error sentences and operator lines."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import os
import sys
import threading

import pytest

from pipeline import logs

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def console():
    made = logs.Console()
    made.hide(SECRET)
    yield made
    made.set_format("text")


def captured(console: logs.Console, log_format: str) -> list[str]:
    """What one log record, one error sentence and one operator line print."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        console.set_format(log_format)
        logging.getLogger().handlers[0].setStream(err)
        logging.getLogger("pipeline").warning("signing with %s failed", SECRET)
        console.error(f"denied for key {SECRET}")
        logs.say(f"live: status with {SECRET[4:20]}", logger="pipeline.status")
    return err.getvalue().splitlines() + out.getvalue().splitlines()


def test_json_lines_are_objects_with_the_secret_hidden(console):
    lines = captured(console, "json")
    records = [json.loads(line) for line in lines]
    assert [(r["level"], r["logger"]) for r in records] == [
        ("WARNING", "pipeline"), ("ERROR", "pipeline"), ("INFO", "pipeline.status")]
    assert records[0]["message"] == f"signing with {logs.REDACTED} failed"
    assert records[1]["message"] == f"error: denied for key {logs.REDACTED}"
    assert records[2]["message"] == f"live: status with {logs.REDACTED}"
    assert all(SECRET[:16] not in line for line in lines)


def test_text_lines_keep_their_form_with_the_secret_hidden(console):
    lines = captured(console, "text")
    assert lines[0].endswith(f"WARNING signing with {logs.REDACTED} failed")
    assert lines[1:] == [f"error: denied for key {logs.REDACTED}",
                         f"live: status with {logs.REDACTED}"]


def test_workers_take_the_launchers_format(console, monkeypatch):
    console.set_format("json")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    logs.worker_logging()  # as a worker's sitecustomize does, from the environment
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    logging.getLogger("transforms.write").error("a worker's error")
    record = json.loads(stream.getvalue())
    assert (record["level"], record["message"]) == ("ERROR", "a worker's error")


def test_a_json_line_is_the_time_in_utc_to_the_millisecond_then_level_logger_message():
    line = logs.json_line("INFO", "pipeline", "café ☕", created=1_700_000_000.1234, run="r1")
    assert line == ('{"time": "2023-11-14T22:13:20.123+00:00", "level": "INFO", '
                    '"logger": "pipeline", "message": "café ☕", "run": "r1"}')
    now = json.loads(logs.json_line("INFO", "x", "y"))["time"]
    assert now.endswith("+00:00")
    assert now[:4] == datetime.datetime.now(datetime.timezone.utc).strftime("%Y")


def test_an_operator_line_in_json_carries_its_fields_and_the_secret_hidden(console):
    out = io.StringIO()
    console.set_format("json")
    assert logs.json_logs()
    logs.say(f"ends with {SECRET[-16:]}", out, level="WARNING", logger="pipeline.x", files=3)
    record = json.loads(out.getvalue())
    assert (record["level"], record["logger"], record["files"]) == ("WARNING", "pipeline.x", 3)
    assert record["message"] == f"ends with {logs.REDACTED}"
    console.set_format("text")
    assert not logs.json_logs()


def test_a_failure_logged_in_json_carries_its_traceback_with_the_secret_hidden(console):
    err = io.StringIO()
    console.set_format("json")
    logging.getLogger().handlers[0].setStream(err)
    try:
        raise RuntimeError(f"signed with {SECRET}")
    except RuntimeError:
        logging.getLogger("pipeline.x").exception("write failed")
    record = json.loads(err.getvalue())
    assert record["message"] == "write failed" and record["logger"] == "pipeline.x"
    assert "RuntimeError: signed with [secret]" in record["exception"]
    assert SECRET not in err.getvalue()


def test_an_error_in_any_thread_is_a_log_record_but_a_thread_that_exits_is_not(console):
    err = io.StringIO()
    logging.getLogger().handlers[0].setStream(err)

    def fail():
        raise ValueError("in a thread")

    for target in (fail, lambda: sys.exit(3)):
        thread = threading.Thread(target=target, name="uploader-1")
        thread.start()
        thread.join()
    lines = err.getvalue().splitlines()
    assert lines[0].endswith("ERROR uncaught error in thread uploader-1")
    assert "ValueError: in a thread" in err.getvalue() and "SystemExit" not in err.getvalue()


def test_the_secret_given_on_the_command_line_is_hidden_in_either_form():
    console = logs.Console()
    console.hide_in_argv(["--secret_access_key=abc=def", "--x", "--secret_access_key",
                          "ghi", "--secret_access_key"], "--secret_access_key")
    assert console.redact("abc=def ghi abc") == "[secret] [secret] abc"


def test_every_piece_of_the_secret_is_hidden_to_its_last_characters():
    assert logs.redact(f"tail {SECRET[-logs.MIN_PIECE_CHARS:]}", [SECRET]) == "tail [secret]"
    assert logs.redact(f"head {SECRET[:logs.MIN_PIECE_CHARS]}", [SECRET]) == "head [secret]"
    for short in (SECRET[:logs.MIN_PIECE_CHARS - 1], SECRET[1 - logs.MIN_PIECE_CHARS:]):
        assert logs.redact(short, [SECRET]) == short  # shorter pieces are not hidden


def test_the_level_quiets_the_libraries_unless_it_is_debug(console):
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("botocore").level == logging.WARNING
    assert logging.getLogger("apache_beam").level == logging.CRITICAL
    console.set_level("DEBUG")
    assert [logging.getLogger(name).level for name in ("", "botocore", "apache_beam")] == [
        logging.DEBUG] * 3
    console.set_level("INFO")


def test_notices_that_would_open_every_run_are_dropped_once_filtered(console):
    prism = logging.getLogger("PrismJobServer")
    logs.Console()  # a second console adds no second filter
    assert sum(isinstance(f, logs._PrismNotices) for f in prism.filters) == 1  # noqa: SLF001
    notice = logging.LogRecord("PrismJobServer", logging.WARNING, "", 0,
                               "empty transform, with payload and identical input and output: "
                               "x", (), None)
    assert not prism.filter(notice)
    logs.quiet_beam_notices()
    logs.quiet_beam_notices()
    for name in ("", "apache_beam.io.filesystems"):
        logger = logging.getLogger(name)
        assert sum(isinstance(f, logs._MissingGcpClientsNotice)  # noqa: SLF001
                   for f in logger.filters) == 1
        for message, kept in (("Failed to import GCSFileSystem; x", False),
                              ("apitools not found", False), ("a real warning", True)):
            record = logging.LogRecord(name, logging.WARNING, "", 0, message, (), None)
            assert bool(logger.filter(record)) == kept


def test_a_worker_logs_warnings_in_the_launchers_format(monkeypatch):
    monkeypatch.setenv(logs.LOG_FORMAT_ENV, "json")
    before = logging.getLogger().handlers[:]
    try:
        logs.worker_logging()
        root = logging.getLogger()
        assert root.level == logging.WARNING and len(root.handlers) == 1
        assert root.handlers[0] not in before and logs.json_logs()
    finally:
        logs.Console()  # back to the launcher's


def test_a_record_in_json_carries_its_own_time_and_logger(console):
    err = io.StringIO()
    console.set_format("json")
    logging.getLogger().handlers[0].setStream(err)
    record = logging.LogRecord("pipeline.x", logging.INFO, "", 0, "then", (), None)
    record.created = 1_700_000_000.5
    logging.getLogger("pipeline.x").handle(record)
    thread = threading.Thread(target=lambda: 1 / 0, name="uploader-2")
    thread.start()
    thread.join()
    then, failed = [json.loads(line) for line in err.getvalue().splitlines()]
    assert then["time"] == "2023-11-14T22:13:20.500+00:00" and then["logger"] == "pipeline.x"
    assert (failed["logger"], failed["message"]) == ("pipeline", "uncaught error in thread "
                                                                 "uploader-2")


def test_each_operator_line_is_flushed_as_it_is_written():
    class Pipe(io.StringIO):
        flushed = 0

        def flush(self):
            self.flushed += 1

    out = Pipe()
    logs.say("live: 1 message/s pulled", out)
    assert out.getvalue() == "live: 1 message/s pulled\n" and out.flushed == 1


def test_a_new_console_writes_text_and_its_workers_are_told_so(monkeypatch):
    monkeypatch.setenv(logs.LOG_FORMAT_ENV, "json")
    logs.Console()
    assert os.environ[logs.LOG_FORMAT_ENV] == "text" and not logs.json_logs()


def test_the_secret_as_the_last_two_arguments_is_hidden():
    console = logs.Console()
    console.hide_in_argv(["--x", "--secret_access_key", "shh-it-is-secret"],
                         "--secret_access_key")
    assert console.redact("key shh-it-is-secret") == "key [secret]"
