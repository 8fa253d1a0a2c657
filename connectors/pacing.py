"""Rate-limit pacing read from the platforms' response headers, on an injectable clock.

Mastodon sends `X-RateLimit-Limit/Remaining/Reset` with the reset as an ISO-8601 time; X sends
`x-rate-limit-limit/remaining/reset` with the reset in epoch seconds. Servers disagree often
enough (GoToSocial and mastodon-mock send epoch seconds on the Mastodon API) that both parsers
accept both forms. Nothing here sleeps by itself: callers ask `delay()` and sleep on their clock,
so tests advance a fake clock instead of waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What pacing, reconnects and senders need of time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a fake clock just moves forward)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock for tests and replays: `sleep` advances time at once and records the wait."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if seconds > 0:
                self._now += timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class RateWindow:
    """One rate-limit window as the server last reported it."""

    limit: int | None
    remaining: int
    reset_at: datetime


def parse_reset(value: str) -> datetime | None:
    """A reset header value: epoch seconds (X, GoToSocial) or an ISO-8601 time (Mastodon)."""
    value = value.strip()
    if not value:
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def window_from_headers(headers: Mapping[str, str], prefix: str) -> RateWindow | None:
    """The window in `<prefix>-limit/-remaining/-reset` headers, or None when absent or garbled."""
    remaining = _header(headers, f"{prefix}-remaining")
    reset = _header(headers, f"{prefix}-reset")
    if remaining is None or reset is None:
        return None
    reset_at = parse_reset(reset)
    try:
        left = int(remaining)
    except ValueError:
        return None
    if reset_at is None:
        return None
    limit_text = _header(headers, f"{prefix}-limit")
    try:
        limit = int(limit_text) if limit_text is not None else None
    except ValueError:
        limit = None
    return RateWindow(limit=limit, remaining=left, reset_at=reset_at)


def mastodon_window(headers: Mapping[str, str]) -> RateWindow | None:
    """`X-RateLimit-*` (reset as ISO time)."""
    return window_from_headers(headers, "x-ratelimit")


def x_window(headers: Mapping[str, str]) -> RateWindow | None:
    """`x-rate-limit-*` (reset in epoch seconds)."""
    return window_from_headers(headers, "x-rate-limit")


class Pacer:
    """Spreads the calls left in a window evenly over the time left in it.

    With `remaining` calls left and `t` seconds until the reset, the next call waits `t /
    remaining` after the previous one, so a burst never empties the budget early and the most
    urgent message is never stuck behind a spent window. At `remaining == 0` it waits for the
    reset. A window whose reset has passed imposes nothing until the server reports again.
    """

    def __init__(self, clock: Clock, *, floor_seconds: float = 0.0) -> None:
        self._clock = clock
        self._floor = floor_seconds
        self._lock = threading.Lock()
        self.window: RateWindow | None = None
        self._last_call: datetime | None = None

    def record(self, window: RateWindow | None) -> None:
        """Take a freshly reported window (None keeps the old one)."""
        with self._lock:
            self._last_call = self._clock.now()
            if window is not None:
                self.window = window

    def block_until(self, reset_at: datetime) -> None:
        """A 429: nothing more until `reset_at`."""
        with self._lock:
            self.window = RateWindow(
                limit=self.window.limit if self.window else None, remaining=0, reset_at=reset_at
            )

    def delay(self) -> float:
        """Seconds to wait before the next call."""
        with self._lock:
            now = self._clock.now()
            window = self.window
            if window is None or window.reset_at <= now:
                return self._floor
            left = (window.reset_at - now).total_seconds()
            if window.remaining <= 0:
                return left
            spacing = left / window.remaining
            since_last = (now - self._last_call).total_seconds() if self._last_call else spacing
            return max(self._floor, spacing - since_last)

    def rate_per_hour(self) -> float | None:
        """The sustained pace the last window allows, for ETAs (None = unknown)."""
        window = self.window
        if window is None or window.limit is None:
            return None
        now = self._clock.now()
        left = max((window.reset_at - now).total_seconds(), 1.0)
        return window.remaining / left * 3600.0
