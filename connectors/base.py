"""The connector interface, the outgoing message value and the one error tree.

A connector turns one platform account into `Signal`s (posts, edits, deletions) and sends
`OutgoingMessage`s. Streaming and polling end in the same place: `stream(sink)` hands each
signal to `sink(signal, cursor)` and `poll(cursor)` returns `(signals, new_cursor)`; the caller
saves the cursor in the same transaction that applies the signals, so a crash never skips a post.

Every failure a connector reports is a `ConnectorError`, mapped from HTTP statuses and library
exceptions in exactly one place, `classify()`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from config.brand import normalize_hashtag
from connectors.pacing import Pacer, parse_reset
from connectors.post import PlatformName, Signal, Visibility

MENTIONS = ""
"""The feed name of an account's own feed: the posts that mention it (its main cursor)."""


def hashtag_feed(hashtag: str) -> str:
    """The feed name of a campaign hashtag's posts: `#` and the tag as Mastodon normalises it."""
    return "#" + normalize_hashtag(hashtag.removeprefix("#"))


class Sink(Protocol):
    """Receives one signal and the cursor to save once it is applied (None = cursor unchanged).

    `feed` says which of the account's cursors `cursor` is: `MENTIONS` (the account's own, the
    default) or a `hashtag_feed(...)`, each saved under its own key so that one never
    overwrites the other. Within a feed, signals arrive in cursor order; a caller may batch them
    and save each feed's last cursor of a batch.
    """

    def __call__(self, signal: Signal, cursor: str | None, feed: str = MENTIONS, /) -> None: ...


def hand_over(sink: Sink, signal: Signal, cursor: str | None, feed: str) -> None:
    """Call `sink`, naming the feed only when it is not `MENTIONS`, so a sink that takes just
    `(signal, cursor)` keeps working for an account that reads no hashtag feed."""
    if feed == MENTIONS:
        sink(signal, cursor)
    else:
        sink(signal, cursor, feed)


DEFAULT_RETRY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One reply or direct message, as the outbox hands it to `Connector.send`.

    - `in_reply_to`: the post this answers (None for a standalone DM).
    - `recipient_handle`: who must be addressed (`@user@host` is prefixed on Mastodon, where a
      direct message is a status that mentions its recipient).
    - `recipient_id`: the platform account id (an X direct message needs it).
    - `idempotency_key`: stable across retries; Mastodon's `Idempotency-Key` header.
    """

    text: str
    visibility: Visibility
    idempotency_key: str
    in_reply_to: str | None = None
    recipient_handle: str | None = None
    recipient_id: str | None = None
    lang: str | None = None

    @property
    def is_direct(self) -> bool:
        return self.visibility == "direct"


class ConnectorError(Exception):
    """Anything that went wrong talking to a platform. `status` is the HTTP status, if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(ConnectorError):  # noqa: N818 - the names the issue gives
    """The platform said 429 (or the budget is spent); nothing more until `reset_at`."""

    def __init__(self, message: str, *, reset_at: datetime, status: int | None = 429) -> None:
        super().__init__(message, status=status)
        self.reset_at = reset_at


class AuthFailed(ConnectorError):  # noqa: N818 - the names the issue gives
    """The token is missing, revoked or lacks a scope: retrying will not help."""


class Transient(ConnectorError):  # noqa: N818 - the names the issue gives
    """A network failure or a server error: retry with backoff."""


class Rejected(ConnectorError):  # noqa: N818 - the names the issue gives
    """The platform refused this particular request (validation, not found, duplicate)."""


ErrorKind = Literal["rate_limited", "auth", "transient", "rejected"]


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if isinstance(code, int):
        return code
    # Mastodon.py: MastodonAPIError('Mastodon API returned error', status, reason, message)
    for arg in getattr(exc, "args", ())[1:2]:
        if isinstance(arg, int):
            return arg
    return None


def _headers_of(exc: BaseException) -> Mapping[str, str]:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return headers if isinstance(headers, Mapping) else {}


def reset_from_headers(headers: Mapping[str, str], now: datetime) -> datetime:
    """When a rate limit lifts: the reset header, else Retry-After, else a minute from now."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in ("x-ratelimit-reset", "x-rate-limit-reset"):
        if name in lowered and (reset := parse_reset(lowered[name])) is not None:
            return max(reset, now)
    retry_after = lowered.get("retry-after", "")
    if retry_after.strip().isdigit():
        return now + timedelta(seconds=int(retry_after))
    return now + timedelta(seconds=DEFAULT_RETRY_SECONDS)


def classify(
    error: BaseException | int,
    *,
    now: datetime,
    headers: Mapping[str, str] | None = None,
    message: str | None = None,
) -> ConnectorError:
    """The one mapping from an HTTP status or a library exception to the `ConnectorError` tree.

    401 -> AuthFailed; 429 (or a library's rate-limit error) -> RateLimited with the reset from
    the headers; 408/409/425 and 5xx, network errors and timeouts -> Transient; any other 4xx
    -> Rejected. An exception that is already a `ConnectorError` is returned as it is.
    """
    if isinstance(error, ConnectorError):
        return error
    if isinstance(error, int):
        status: int | None = error
        exc: BaseException | None = None
        text = message or f"HTTP {error}"
    else:
        exc = error
        status = _status_of(error)
        text = message or f"{type(error).__name__}: {error}"
        headers = headers or _headers_of(error)
    headers = headers or {}
    name = type(exc).__name__ if exc is not None else ""

    if status == 429 or name in ("MastodonRatelimitError", "TooManyRequests"):
        return RateLimited(text, reset_at=reset_from_headers(headers, now), status=429)
    if status == 401 or name in ("MastodonUnauthorizedError", "Unauthorized"):
        return AuthFailed(text, status=status or 401)
    if status is None:
        # No response at all: a connection error, a timeout, a dropped stream.
        return Transient(text)
    if status in (408, 409, 425) or status >= 500:
        return Transient(text, status=status)
    if 400 <= status < 500:
        return Rejected(text, status=status)
    return Transient(text, status=status)


def error_kind(error: ConnectorError) -> ErrorKind:
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, AuthFailed):
        return "auth"
    if isinstance(error, Rejected):
        return "rejected"
    return "transient"


class Connector(abc.ABC):
    """One platform account. Constructing one does no I/O; `initialize()` does.

    `account_key` names the account for cursors and the outbox (e.g. `demo:mastodon`).
    """

    platform: PlatformName
    account_key: str
    pacer: Pacer

    @abc.abstractmethod
    def initialize(self) -> None:
        """Open clients, verify credentials and look up the account's own id."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop streams and release connections. Safe to call twice."""

    @abc.abstractmethod
    def poll(self, cursor: str | None) -> tuple[list[Signal], str | None]:
        """Everything after `cursor`, oldest first, and the cursor to save once it is applied."""

    @abc.abstractmethod
    def stream(self, sink: Sink) -> None:
        """Deliver signals to `sink` until `shutdown()`: backfill, then live, reconnecting."""

    @abc.abstractmethod
    def send(self, message: OutgoingMessage) -> str:
        """Post the message; return the platform's id for it. Raises `ConnectorError`."""

    def send_delay(self) -> float:
        """Seconds to wait before the next `send`, from the last rate-limit headers."""
        return self.pacer.delay()


def id_order(value: str) -> tuple[int, str]:
    """Sort key for platform ids (Mastodon, X): numeric strings of any length, compared as
    numbers without int conversion; a non-numeric id sorts first."""
    return (len(value), value) if value.isdigit() else (0, value)
