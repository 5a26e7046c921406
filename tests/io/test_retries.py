"""The retry policy of every S3 call (`transforms.io.retries`): which answers are
retried, how long it waits (full jitter, throttling waits longer, capped), the deadline
after which a call fails, and what is counted. The S3 tests (test_stores, test_s3_faults)
show it against a real server behind the fault proxy; here each rule on its own."""

from __future__ import annotations

import logging
import socket
import types

import apache_beam as beam
import botocore.exceptions
import pytest

from pipeline.run import metrics_of
from tests.pipelines import batch_pipeline
from transforms import metrics
from transforms.io import retries
from transforms.io.retries import RetryHandler, RetryPolicy


class _Bounds:
    """A random source that gives the top (or bottom) of every range asked of it."""

    def __init__(self, top: bool = True):
        self.top = top

    def uniform(self, low: float, high: float) -> float:
        return high if self.top else low


@pytest.mark.parametrize("retry, throttled, longest", [
    (1, False, 0.05), (2, False, 0.1), (3, False, 0.2), (9, False, 12.8), (10, False, 20.0),
    (1, True, 0.5), (2, True, 1.0), (6, True, 16.0), (7, True, 20.0), (500, False, 20.0),
])
def test_a_retry_waits_up_to_a_doubling_bound_capped_at_20_s(retry, throttled, longest):
    policy = RetryPolicy()
    assert policy.delay_s(retry, throttled, _Bounds()) == pytest.approx(longest)
    assert policy.delay_s(retry, throttled, _Bounds(top=False)) == 0


def _answer(status: int, code: str = "") -> tuple:
    return types.SimpleNamespace(status_code=status), {"Error": {"Code": code}} if code else {}


@pytest.mark.parametrize("status, code, kind", [
    (500, "InternalError", "transient"), (502, "", "transient"), (503, "", "transient"),
    (504, "", "transient"), (503, "SlowDown", "throttled"), (429, "", "throttled"),
    (400, "RequestTimeout", "transient"), (409, "ConditionalRequestConflict", "transient"),
    (409, "OperationAborted", "transient"), (400, "ThrottlingException", "throttled"),
    (200, "", None), (404, "NoSuchKey", None), (412, "PreconditionFailed", None),
    (403, "AccessDenied", None), (400, "InvalidArgument", None),
])
def test_which_answers_are_retried(status, code, kind):
    assert retries.transient_kind(_answer(status, code), None) == kind
    error = botocore.exceptions.ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    assert retries.is_transient(error) == (kind is not None)


@pytest.mark.parametrize("error, kind", [
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), "transient"),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), "transient"),
    (botocore.exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2), "transient"),
    (ValueError("not a network error"), None),
])
def test_which_failures_to_connect_are_retried(error, kind):
    assert retries.transient_kind(None, error) == kind
    assert retries.is_transient(error) == (kind is not None)
    assert retries.transient_kind(None, None) is None


def _ask(handler: RetryHandler, response, error=None, started_s_ago: float = 0.0,
         attempts: int = 1):
    context = {}
    handler.mark_start(context)
    context[retries._STARTED] -= started_s_ago  # noqa: SLF001
    operation = types.SimpleNamespace(name="PutObject")
    return handler.needs_retry(attempts, response, error, {"context": context}, operation)


def test_a_call_is_retried_until_its_deadline_and_then_says_so(caplog):
    handler = RetryHandler(RetryPolicy(deadline_s=60))
    handler._rng = _Bounds()  # noqa: SLF001
    retries.OUTCOMES.take()
    assert _ask(handler, _answer(500)) == pytest.approx(0.05)
    assert _ask(handler, _answer(503, "SlowDown"), attempts=3) == pytest.approx(2.0)
    assert _ask(handler, _answer(500), started_s_ago=59.96) is None  # past it after the wait
    assert "S3 PutObject: giving up after 1 attempts in 60 s" in caplog.text
    assert _ask(handler, _answer(500), started_s_ago=59.0) == pytest.approx(0.05)
    assert _ask(handler, _answer(403, "AccessDenied")) is None
    assert _ask(handler, _answer(200)) is None
    assert retries.OUTCOMES.take() == (4, True)  # four retried answers, the last one taken
    assert _ask(handler, _answer(404, "NoSuchKey")) is None
    assert retries.OUTCOMES.take() == (0, True)  # a key not written yet is an answer
    assert _ask(handler, None, botocore.exceptions.EndpointConnectionError(endpoint_url="x")) \
        == pytest.approx(0.05)
    assert retries.OUTCOMES.take() == (1, False)
    assert retries.OUTCOMES.take() == (0, False)  # counts start again; the last call stays


def _retried_in_a_bundle(_):
    retries.OUTCOMES.note(retried=True, answered=False)
    retries.OUTCOMES.note(retried=True, answered=True)
    retries.report_outcomes()


def test_retries_and_the_last_calls_outcome_are_reported_in_a_bundle():
    retries.OUTCOMES.take()
    p = batch_pipeline()
    _ = p | beam.Create([1]) | beam.Map(_retried_in_a_bundle)
    result = p.run()
    result.wait_until_finish()
    counters, gauges = metrics_of(result)
    assert counters[metrics.S3_RETRIES] == 2 and gauges[metrics.S3_LAST_CALL_OK] == 1


def test_a_client_made_here_retries_alone(caplog):
    """botocore's own retries are off (one attempt each), smart_open's loop is emptied,
    and the policy's handler retries until the connection's deadline."""
    from smart_open import s3 as smart_open_s3

    from transforms.io import s3

    client = s3.make_client(s3.S3Connection(endpoint_url="http://127.0.0.1:9",
                                            retry_deadline_s=1))
    assert client.meta.config.retries["total_max_attempts"] == 1
    assert smart_open_s3.RETRY.exceptions == [] and smart_open_s3.RETRY.client_error_codes == []
    with caplog.at_level(logging.WARNING):
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            client.head_bucket(Bucket="nothing-listens-here")
    assert "S3 HeadBucket: giving up after" in caplog.text


def _client_error(status: int, code: str | None) -> botocore.exceptions.ClientError:
    response = {"ResponseMetadata": {"HTTPStatusCode": status}}
    if code is not None:
        response["Error"] = {"Code": code, "Message": "m"}
    return botocore.exceptions.ClientError(response, "PutObject")


def test_a_write_that_gave_up_says_which_key_how_long_and_the_last_error():
    from transforms.io import s3

    connection = s3.S3Connection(retry_deadline_s=900)
    assert str(s3.gave_up("b", "k/f.txt", connection, 901.4, _client_error(503, "SlowDown"))) \
        == ("Gave up writing s3://b/k/f.txt after 901 s of S3 errors (--s3_write_deadline_s=900):"
            " SlowDown An error occurred (SlowDown) when calling the PutObject operation: m")
    assert str(s3.gave_up("b", "k", connection, 2, ConnectionResetError("reset"))).endswith(
        "(--s3_write_deadline_s=900): ConnectionResetError: reset")
    assert s3.error_code(_client_error(500, None)) == ""


def test_the_client_error_behind_a_wrapped_one_is_found():
    from transforms.io import s3

    error = _client_error(412, "PreconditionFailed")
    try:
        try:
            raise error
        except botocore.exceptions.ClientError:
            raise ValueError("smart_open says the upload failed")  # noqa: B904 - its context
    except ValueError as wrapped:
        assert s3.client_error_in(wrapped) is error
    caused = OSError("outer")
    caused.__cause__ = error
    assert s3.client_error_in(caused) is error
    assert s3.client_error_in(OSError("nothing behind")) is None


def test_the_start_up_checks_give_up_after_three_read_timeouts():
    from transforms.io import s3

    connection = s3.S3Connection(read_timeout_s=20, connect_timeout_s=10, retry_deadline_s=900)
    assert connection.for_checks().retry_deadline_s == 60
    assert s3.S3Connection(read_timeout_s=20, retry_deadline_s=30).for_checks() \
        .retry_deadline_s == 30


def test_an_error_without_its_status_or_code_is_judged_by_what_it_has():
    def error(response: dict) -> botocore.exceptions.ClientError:
        return botocore.exceptions.ClientError(response, "PutObject")

    assert retries.is_transient(error({"Error": {"Code": "SlowDown"}}))
    assert retries.is_transient(error({"ResponseMetadata": {"HTTPStatusCode": 503}}))
    assert not retries.is_transient(error({"Error": {"Code": "AccessDenied"}}))
    assert not retries.is_transient(error({}))


def test_a_process_tally_starts_empty_and_is_taken_whole():
    tally = retries._Outcomes()  # noqa: SLF001 - a fresh one, as each process has
    assert tally.take() == (0, None)
    tally.note(retried=True, answered=False)
    tally.note(retried=False, answered=True)
    assert tally.take() == (1, True) and tally.take() == (0, True)


def test_what_counts_as_answered_and_a_call_seen_only_at_its_failure():
    handler = RetryHandler(RetryPolicy(deadline_s=60))
    retries.OUTCOMES.take()
    for status, code, answered in ((400, "InvalidArgument", False), (413, "TooLarge", False),
                                   (412, "PreconditionFailed", True), (399, "", True)):
        _ask(handler, _answer(status, code))
        assert retries.OUTCOMES.take()[1] is answered, status
    _ask(handler, _answer(200), botocore.exceptions.ReadTimeoutError(endpoint_url="x"))
    assert retries.OUTCOMES.take()[1] is False  # an answer cut short is no answer
    operation = types.SimpleNamespace(name="PutObject")
    # No start was marked (no context at all, or an empty one): timed from now.
    assert handler.needs_retry(1, _answer(500), None, {}, operation) is not None
    assert handler.needs_retry(1, _answer(500), None, {"context": {}}, operation) is not None


def test_each_retry_and_the_last_failure_are_logged_as_they_are(caplog):
    handler = RetryHandler(RetryPolicy(deadline_s=60))
    handler._rng = _Bounds()  # noqa: SLF001
    with caplog.at_level(logging.DEBUG, logger="transforms.io.retries"):
        _ask(handler, _answer(503, "SlowDown"), attempts=2)
        _ask(handler, _answer(500), started_s_ago=59.96, attempts=4)
    assert [record.getMessage() for record in caplog.records] == [
        "S3 PutObject: throttled error on attempt 2; retrying in 1.00 s",
        "S3 PutObject: giving up after 4 attempts in 60 s"]


def test_a_calls_deadline_counts_from_its_start_not_its_first_failure(caplog):
    """A first attempt that takes the whole deadline (a server that never answers) is
    not followed by a second."""
    from transforms.io import s3

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = s3.make_client(s3.S3Connection(
            endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
            read_timeout_s=1, retry_deadline_s=0.9))
        with caplog.at_level(logging.WARNING, logger="transforms.io.retries"):
            with pytest.raises(botocore.exceptions.ReadTimeoutError):
                client.head_bucket(Bucket="silence")
    assert [record.getMessage() for record in caplog.records] == [
        "S3 HeadBucket: giving up after 1 attempts in 1 s"]
