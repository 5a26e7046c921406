"""The launcher's log formats (`pipeline.logs`): text and one JSON object per line,
each with the secret hidden, for log records, error sentences and operator lines."""

from __future__ import annotations

import contextlib
import io
import json
import logging

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
