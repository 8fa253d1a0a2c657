"""Transport pieces without a socket: SSE parsing on the recorded stream, rate-limit headers,
pacing on a fake clock, and the one mapping from HTTP failures to the error tree."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import tweepy
from mastodon.errors import (
    MastodonAPIError,
    MastodonNetworkError,
    MastodonNotFoundError,
    MastodonRatelimitError,
    MastodonServiceUnavailableError,
    MastodonUnauthorizedError,
)

from connectors.base import AuthFailed, RateLimited, Rejected, Transient, classify
from connectors.pacing import FakeClock, Pacer, mastodon_window, parse_reset, x_window
from connectors.sse import HEARTBEAT, SSEParser

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real"
NOW = datetime(2026, 8, 1, 14, 55, tzinfo=UTC)


def recorded(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((FIXTURES / name).read_text())
    return data


def test_the_recorded_user_stream_parses_into_its_events_even_byte_by_byte() -> None:
    stream = recorded("mastodon/stream_user_events_local.json")
    raw = str(stream["body_raw_sse"]).encode()
    parser = SSEParser()
    events = [e for i in range(len(raw)) for e in parser.feed(raw[i : i + 1])]
    named = [e for e in events if e.name is not None]
    expected = stream["events"]
    assert isinstance(expected, list)
    assert [e.name for e in named] == [e["event"] for e in expected]
    assert HEARTBEAT in events  # the server's ":)" opener
    delete = named[-1]
    assert delete.name == "delete" and delete.data == "117024236332527350"  # a string, not an int
    notification = json.loads(next(e.data for e in named if e.name == "notification"))
    assert notification["type"] == "mention"


def test_chunks_of_any_size_give_the_same_events_and_a_paused_reader_loses_none() -> None:
    raw = str(recorded("mastodon/stream_user_events_local.json")["body_raw_sse"]).encode()
    whole = list(SSEParser().feed(raw))
    for size in (2, 7, 64, 1000):
        parser = SSEParser()
        assert [e for i in range(0, len(raw), size) for e in parser.feed(raw[i : i + size])] == (
            whole
        )
    # A reader that takes one event of a chunk and comes back later gets the rest, in order.
    parser = SSEParser()
    first = next(iter(parser.feed(raw)))
    assert [first, *parser.feed(b"")] == whole


def test_multi_line_data_is_joined_and_crlf_is_accepted() -> None:
    parser = SSEParser()
    events = list(parser.feed(b'event: update\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'))
    assert [(e.name, e.data) for e in events] == [("update", '{"a":\n1}')]


def test_mastodon_reset_is_an_iso_time_and_x_reset_is_epoch_seconds() -> None:
    mastodon = recorded("mastodon/notifications_mentions_local.json")["headers"]
    assert isinstance(mastodon, dict)
    window = mastodon_window(mastodon)
    assert window is not None and window.limit == 300
    assert window.reset_at == parse_reset(mastodon["x-ratelimit-reset"])
    assert window.reset_at.tzinfo is not None
    x = recorded("twitter/v2_users_mentions_page_tweepy.json")["headers"]
    assert isinstance(x, dict)
    x_win = x_window(x)
    assert x_win is not None and x_win.limit == 450
    assert x_win.reset_at == datetime.fromtimestamp(1665183228, UTC)
    assert x_window({"x-rate-limit-remaining": "1"}) is None  # no reset: no window


def test_the_pacer_spreads_the_budget_and_waits_for_the_reset_when_spent() -> None:
    clock = FakeClock(NOW)
    pacer = Pacer(clock)
    assert pacer.delay() == 0  # nothing known yet
    pacer.record(
        mastodon_window(
            {
                "X-RateLimit-Limit": "300",
                "X-RateLimit-Remaining": "10",
                "X-RateLimit-Reset": (NOW + timedelta(seconds=100)).isoformat(),
            }
        )
    )
    assert pacer.delay() == pytest.approx(10.0)  # 100 s left for 10 calls
    clock.advance(4)
    assert pacer.delay() == pytest.approx(96 / 10 - 4)
    pacer.block_until(NOW + timedelta(seconds=300))
    assert pacer.delay() == pytest.approx(296)
    clock.advance(300)
    assert pacer.delay() == 0  # the window has reset


def _response(status: int, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response._content = b"{}"
    return response


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (429, RateLimited),
        (401, AuthFailed),
        (403, Rejected),
        (404, Rejected),
        (422, Rejected),
        (408, Transient),
        (500, Transient),
        (503, Transient),
        (MastodonRatelimitError("Hit rate limit."), RateLimited),
        (
            MastodonUnauthorizedError("Mastodon API returned error", 401, "", "bad token"),
            AuthFailed,
        ),
        (
            MastodonNotFoundError("Mastodon API returned error", 404, "", "Record not found"),
            Rejected,
        ),
        (MastodonAPIError("Mastodon API returned error", 422, "", "Text can't be blank"), Rejected),
        (MastodonServiceUnavailableError("Mastodon API returned error", 503, "", ""), Transient),
        (MastodonNetworkError("Could not complete request"), Transient),
        (requests.ConnectionError("reset by peer"), Transient),
        (tweepy.TooManyRequests(_response(429)), RateLimited),
        (tweepy.Unauthorized(_response(401)), AuthFailed),
        (tweepy.Forbidden(_response(403)), Rejected),
        (tweepy.TwitterServerError(_response(503)), Transient),
    ],
)
def test_every_failure_maps_to_one_branch_of_the_error_tree(error: object, kind: type) -> None:
    assert isinstance(error, (int, BaseException))
    assert isinstance(classify(error, now=NOW), kind)


def test_a_rate_limit_carries_the_reset_from_whichever_header_the_platform_sent() -> None:
    mastodon = classify(429, now=NOW, headers={"X-RateLimit-Reset": "2026-08-01T15:00:00.869078Z"})
    assert isinstance(mastodon, RateLimited)
    assert mastodon.reset_at == datetime(2026, 8, 1, 15, 0, 0, 869078, tzinfo=UTC)
    x = classify(
        tweepy.TooManyRequests(_response(429, {"x-rate-limit-reset": "1785596400"})), now=NOW
    )
    assert isinstance(x, RateLimited) and x.reset_at == datetime.fromtimestamp(1785596400, UTC)
    unknown = classify(429, now=NOW)
    assert isinstance(unknown, RateLimited) and unknown.reset_at > NOW
