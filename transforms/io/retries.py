"""The retry policy of every S3 call: backoff with full jitter until a deadline.

botocore's standard retry mode keeps one retry budget per client; under
sustained errors it runs dry and from then on errors fail at once, so a long
backfill at a few percent of errors fails after a few hundred objects. Here
every call a client makes (ours and smart_open's) retries transient errors
(HTTP 500/502/503/504, throttling, timeouts, dropped connections) with
exponential backoff and full jitter, no shared budget, until the call's
deadline passes; then its last error is raised. Throttling (503 SlowDown)
starts from a longer backoff: the store asked to be slowed down for, and
the call keeps waiting rather than failing.

Installed on a client by `install(client, policy)` (see `transforms.io.s3`).
smart_open's own retry loop around some calls (its documented `RETRY` knob) is
emptied then, in the process that makes the client: it would sleep 10 s between
tries of calls the client has already retried until their deadline, and hide
their errors behind its own.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from typing import Any

import botocore.exceptions
import smart_open.s3

_LOG = logging.getLogger(__name__)
DEFAULT_DEADLINE_S = 900  # rides out a regional S3 incident of several minutes
DEFAULT_CONNECT_TIMEOUT_S = 10
DEFAULT_READ_TIMEOUT_S = 20

_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
_THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestThrottledException", "EC2ThrottledException", "BandwidthLimitExceeded",
})
# 409 ConditionalRequestConflict: a conditional write raced another writer to
# the same key; retried, it gets a definite answer (written, or 412).
_TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "ConditionalRequestConflict", "OperationAborted",
})
_TRANSIENT_EXCEPTIONS = (
    botocore.exceptions.ConnectionError,  # connect, read timeouts, resets, closed
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
)
_STARTED = "mparticle_s3_first_attempt_at"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How long and how one S3 call is retried."""

    deadline_s: float = DEFAULT_DEADLINE_S
    base_delay_s: float = 0.05
    throttled_base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay_s(self, retry: int, throttled: bool, rng: random.Random) -> float:
        """Full jitter: uniform in [0, base * 2**(retry - 1)], capped."""
        base = self.throttled_base_delay_s if throttled else self.base_delay_s
        return rng.uniform(0, min(self.max_delay_s, base * 2 ** min(retry - 1, 30)))


def _kind(status: int, code: str) -> str | None:
    if code in _THROTTLING_CODES or status == 429:
        return "throttled"
    if code in _TRANSIENT_CODES or status in _RETRYABLE_STATUS:
        return "transient"
    return None


def transient_kind(response: Any, caught_exception: BaseException | None) -> str | None:
    """"throttled", "transient" or None (not worth retrying) for one attempt's outcome."""
    if caught_exception is not None:
        return "transient" if isinstance(caught_exception, _TRANSIENT_EXCEPTIONS) else None
    if response is None:
        return None
    http_response, parsed = response
    return _kind(http_response.status_code, str((parsed or {}).get("Error", {}).get("Code", "")))


def _accepted(response: Any, caught_exception: BaseException | None) -> bool:
    """Whether S3 did what was asked: a success, or the answers the forwarder expects
    (412: a conditional write's key is taken; 404: a key not yet written)."""
    if caught_exception is not None or response is None:
        return False
    status = response[0].status_code
    return status < 400 or status in (404, 412)


def is_transient(err: BaseException) -> bool:
    """Whether a raised error is one the policy retries (so it ran out of time)."""
    if isinstance(err, botocore.exceptions.ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _kind(status, str(err.response.get("Error", {}).get("Code", ""))) is not None
    return isinstance(err, _TRANSIENT_EXCEPTIONS)


class _Outcomes:
    """What this process's S3 calls came to since a bundle last counted them: retries,
    and whether the latest attempt was accepted (`_accepted`). Calls are made in upload threads,
    where Beam's counters cannot be reached; `report_outcomes`, in a bundle, counts them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retries = 0
        self._last_ok: bool | None = None

    def note(self, retried: bool, answered: bool) -> None:
        with self._lock:
            self._retries += retried
            self._last_ok = answered

    def take(self) -> tuple[int, bool | None]:
        with self._lock:
            taken = self._retries, self._last_ok
            self._retries = 0
            return taken


OUTCOMES = _Outcomes()


def report_outcomes() -> None:
    """Counts this process's S3 retries since the last report, and sets whether its
    latest S3 call was accepted (`metrics.S3_LAST_CALL_OK`); in a bundle's thread."""
    from transforms import metrics  # Beam's metrics: not imported by the S3 client alone

    retried, last_ok = OUTCOMES.take()
    if retried:
        metrics.counter(metrics.S3_RETRIES).inc(retried)
    if last_ok is not None:
        metrics.gauge(metrics.S3_LAST_CALL_OK).set(int(last_ok))


class RetryHandler:
    """botocore's needs-retry hook: a delay in seconds to retry after, or None."""

    def __init__(self, policy: RetryPolicy):
        self.policy = policy
        self._rng = random.Random()

    def mark_start(self, context: dict, **_: Any) -> None:
        context[_STARTED] = time.monotonic()

    def needs_retry(
        self, attempts: int, response: Any, caught_exception: BaseException | None,
        request_dict: dict, operation: Any, **_: Any,
    ) -> float | None:
        kind = transient_kind(response, caught_exception)
        OUTCOMES.note(retried=kind is not None, answered=_accepted(response, caught_exception))
        if kind is None:
            return None
        context = request_dict.get("context", {})
        elapsed = time.monotonic() - context.setdefault(_STARTED, time.monotonic())
        delay = self.policy.delay_s(attempts, kind == "throttled", self._rng)
        if elapsed + delay > self.policy.deadline_s:
            _LOG.warning("S3 %s: giving up after %d attempts in %.0f s", operation.name,
                         attempts, elapsed)
            return None
        _LOG.debug("S3 %s: %s error on attempt %d; retrying in %.2f s", operation.name, kind,
                   attempts, delay)
        return delay


def install(client: Any, policy: RetryPolicy) -> Any:
    """Replaces a boto3 S3 client's retry handling with `policy`; returns the client.

    smart_open, which the forwarder only ever gives clients made here, then leaves
    retrying to them (`_leave_retries_to_the_client`)."""
    _leave_retries_to_the_client()
    events = client.meta.events
    events.unregister("needs-retry.s3", unique_id="retry-config-s3")
    handler = RetryHandler(policy)
    events.register("before-call.s3", handler.mark_start, unique_id="mparticle-retry-start")
    events.register("needs-retry.s3", handler.needs_retry, unique_id="mparticle-retry")
    return client


def _leave_retries_to_the_client() -> None:
    """Empties smart_open's process-wide retry loop (its documented `RETRY` knob)."""
    smart_open.s3.RETRY.exceptions = []
    smart_open.s3.RETRY.client_error_codes = []
