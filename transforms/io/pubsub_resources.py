"""The Pub/Sub resources a live run reads, asked about by the launcher: whether a
subscription or topic can be read, in one sentence when it cannot, and the durable
subscription a topic is read through.

Set PUBSUB_EMULATOR_HOST to reach a local server, as the readers do.
"""

from __future__ import annotations

import hashlib
import os
import re

__all__ = [
    "CHECK_TIMEOUT_S",
    "ensure_subscription",
    "retrying",
    "subscription_problem",
    "topic_problem",
    "topic_subscription_name",
]

# How long one check may take, retries included: a start-up check of an unreachable
# service ends well within half a minute.
CHECK_TIMEOUT_S = 10.0
# The ack deadline of the subscription made for a topic (the readers extend it).
TOPIC_SUBSCRIPTION_ACK_DEADLINE_S = 60


def _where() -> str:
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    return f"the Pub/Sub server at {emulator}" if emulator else "Pub/Sub"


def retrying(timeout_s: float, initial_s: float = 0.1, maximum_s: float = 1.0):
    """Retries of a Pub/Sub call's transient errors (unreachable, internal, aborted,
    throttled), with backoff from `initial_s` up to `maximum_s`, for `timeout_s`."""
    from google.api_core import exceptions
    from google.api_core import retry as retries

    return retries.Retry(
        predicate=retries.if_exception_type(
            exceptions.ServiceUnavailable, exceptions.InternalServerError,
            exceptions.Aborted, exceptions.Unknown, exceptions.TooManyRequests),
        initial=initial_s, maximum=maximum_s, multiplier=2.0, timeout=timeout_s,
    )


def _retry(timeout_s: float):
    """The launcher's checks: a few tries over `timeout_s`."""
    return retrying(timeout_s, initial_s=0.2, maximum_s=2.0)


def _problem(kind: str, path: str, err: Exception, timeout_s: float) -> str:
    """One sentence: what `err`, raised when `kind` `path` was asked for, means."""
    from google.api_core import exceptions

    cause = err.cause if isinstance(err, exceptions.RetryError) and err.cause else err
    message = getattr(cause, "message", None) or str(cause)
    where = _where()
    if isinstance(cause, exceptions.NotFound):
        return f"{where} has no {kind} {path}."
    if isinstance(cause, exceptions.PermissionDenied):
        return f"{where} denied access to {kind} {path}: {message}"
    if isinstance(cause, exceptions.Unauthenticated):
        return f"{where} did not accept the credentials for {kind} {path}: {message}"
    if isinstance(cause, exceptions.InvalidArgument):
        return f"{where} refused the name of {kind} {path}: {message}"
    if isinstance(err, exceptions.RetryError) or isinstance(
            cause, (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded)):
        return (f"{where} could not be reached to read {kind} {path} within "
                f"{timeout_s:g} s: {message}")
    return f"{where} could not read {kind} {path}: {type(cause).__name__}: {message}"


def _ask(kind: str, path: str, call, timeout_s: float):
    """(the answer, None), or (None, one sentence saying what went wrong)."""
    from google.api_core import exceptions

    try:
        return call(retry=_retry(timeout_s), timeout=timeout_s), None
    except exceptions.GoogleAPIError as err:  # a call's error, or retries that ran out
        return None, _problem(kind, path, err, timeout_s)


def _client(kind: str):
    """A Pub/Sub client (`kind`: "subscriber" or "publisher"), or one sentence of why none
    can be made (no Google credentials)."""
    import google.auth.exceptions
    from google.cloud import pubsub_v1

    try:
        if kind == "subscriber":
            return pubsub_v1.SubscriberClient(), None
        return pubsub_v1.PublisherClient(), None
    except google.auth.exceptions.GoogleAuthError as err:
        return None, (f"no Google credentials for {_where()}: {err} (set "
                      "GOOGLE_APPLICATION_CREDENTIALS, or run where the default "
                      "credentials are found).")


def subscription_problem(path: str, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """None when `path` is a subscription that can be read; else one sentence why not
    (missing, denied, a name refused, no credentials, the service unreachable)."""
    client, problem = _client("subscriber")
    if problem:
        return problem
    try:
        _, problem = _ask("subscription", path, lambda **call: client.get_subscription(
            request={"subscription": path}, **call), timeout_s)
    finally:
        client.close()
    return problem


def topic_problem(path: str, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
    """None when `path` is a topic that exists; else one sentence why not."""
    client, problem = _client("publisher")
    if problem:
        return problem
    _, problem = _ask("topic", path, lambda **call: client.get_topic(
        request={"topic": path}, **call), timeout_s)
    return problem


def topic_subscription_name(topic: str, bucket: str, folder: str | None) -> str:
    """The subscription a topic is read through when none is named: the same for every
    run that forwards that topic to that bucket and folder (so a restarted run reads on
    where the last stopped), another for another destination: for topic
    `projects/acme-prod/topics/events`, `projects/acme-prod/subscriptions/
    events-s3-forwarder-<8 hex digits of the bucket and folder>`.
    """
    project, name = re.fullmatch(r"projects/([^/]+)/topics/([^/]+)", topic).groups()
    destination = hashlib.sha256(f"{bucket}/{folder or ''}".encode()).hexdigest()[:8]
    # A subscription's name is at most 255 characters.
    return f"projects/{project}/subscriptions/{name[:200]}-s3-forwarder-{destination}"


def ensure_subscription(topic: str, subscription: str,
                        timeout_s: float = CHECK_TIMEOUT_S) -> tuple[bool, str | None]:
    """Makes `subscription` to `topic` unless it exists; (whether it was made now, or
    one sentence of why it cannot be used). An existing one of another topic is refused.
    It never expires: what arrives while no run reads it waits there."""
    from google.api_core import exceptions

    client, problem = _client("subscriber")
    if problem:
        return False, problem
    try:
        try:
            client.create_subscription(request={
                "name": subscription, "topic": topic,
                "ack_deadline_seconds": TOPIC_SUBSCRIPTION_ACK_DEADLINE_S,
                "expiration_policy": {},  # no ttl: never expires
            }, retry=_retry(timeout_s), timeout=timeout_s)
            return True, None
        except exceptions.AlreadyExists:
            pass
        except exceptions.GoogleAPIError as err:
            return False, _problem("subscription", subscription, err, timeout_s)
        found, problem = _ask("subscription", subscription, lambda **call: client.get_subscription(
            request={"subscription": subscription}, **call), timeout_s)
        if problem:
            return False, problem
        if found.topic != topic:
            return False, (f"subscription {subscription} exists for topic {found.topic}, not "
                           f"{topic}: name another with --topic_subscription.")
        return False, None
    finally:
        client.close()
