"""The X connector through the real tweepy `Client`, with HTTP answered by `responses` from the
real recorded payloads in tests/fixtures/real/twitter."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import responses

from connectors.base import OutgoingMessage, RateLimited, Rejected
from connectors.pacing import FakeClock
from connectors.post import Post
from connectors.twitter import XConnector

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real" / "twitter"
API = "https://api.twitter.com/2"
BOT = "783214"
MENTIONS = f"{API}/users/{BOT}/mentions"


def fixture(name: str) -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return recorded


def connector(clock: FakeClock | None = None, **kw: Any) -> XConnector:
    c = XConnector(
        account_key="demo:x",
        bearer_token="bearer",  # responses answers; no real token is involved
        user_id=BOT,
        clock=clock or FakeClock(datetime(2022, 10, 7, 22, 43, tzinfo=UTC)),
        **kw,
    )
    c.initialize()
    return c


def rate_limited(url: str, *, reset: int) -> None:
    """X's answer to a request over its budget: a 429 whose headers say when it comes back."""
    responses.get(
        url,
        status=429,
        json={"errors": [{"code": 88, "message": "Rate limit exceeded"}]},
        headers={
            "x-rate-limit-limit": "450",
            "x-rate-limit-remaining": "0",
            "x-rate-limit-reset": str(reset),
        },
    )


def query(call: Any) -> dict[str, list[str]]:
    return parse_qs(urlparse(call.request.url).query)


@responses.activate
def test_poll_walks_every_page_and_the_cursor_is_the_newest_id() -> None:
    first = fixture("v2_users_mentions_page_tweepy.json")
    second = fixture("v2_users_mentions_page_async_tweepy.json")
    second["body"]["meta"].pop("next_token")  # the last page has none
    responses.get(MENTIONS, json=first["body"], headers=first["headers"])
    responses.get(MENTIONS, json=second["body"], headers=second["headers"])

    posts, cursor = connector().poll("1578000000000000000")

    assert len(posts) == 12
    # The newest mention seen (two recordings stitched together, so page 2 is not older here).
    newest = max(first["body"]["meta"]["newest_id"], second["body"]["meta"]["newest_id"], key=int)
    assert cursor == newest
    assert all(isinstance(p, Post) and isinstance(p.post_id, str) for p in posts)
    assert [p.post_id for p in posts] == sorted((p.post_id for p in posts), key=int)  # oldest first
    one, two = (query(c) for c in responses.calls)
    assert one["since_id"] == ["1578000000000000000"] and "pagination_token" not in one
    assert two["pagination_token"] == [first["body"]["meta"]["next_token"]]
    assert one["expansions"] == ["author_id"]
    fields = set(one["tweet.fields"][0].split(","))
    assert {"created_at", "entities", "lang", "author_id", "conversation_id"} <= fields
    assert "referenced_tweets" in fields


@responses.activate
def test_rate_limit_headers_pace_polling_with_an_epoch_reset() -> None:
    page = fixture("v2_users_mentions_page_tweepy.json")
    page["body"]["meta"].pop("next_token")
    headers = dict(page["headers"], **{"x-rate-limit-remaining": "0"})
    responses.get(MENTIONS, json=page["body"], headers=headers)
    clock = FakeClock(datetime(2022, 10, 7, 22, 43, 18, tzinfo=UTC))
    c = connector(clock)
    c.poll(None)
    window = c.poll_pacer.window
    assert window is not None and window.limit == 450
    assert window.reset_at == datetime.fromtimestamp(1665183228, UTC)
    # The budget is spent: the next poll does not even ask, it says when to come back.
    with pytest.raises(RateLimited) as raised:
        c.poll(None)
    assert raised.value.reset_at == window.reset_at
    assert len(responses.calls) == 1


@responses.activate
def test_a_429_becomes_rate_limited_with_the_reset_from_the_headers() -> None:
    rate_limited(MENTIONS, reset=1665183228)
    with pytest.raises(RateLimited) as raised:
        connector().poll("1")
    assert raised.value.reset_at == datetime.fromtimestamp(1665183228, UTC)


@responses.activate
def test_html_escaped_text_entities_and_the_reply_target() -> None:
    page = fixture("v2_tweet_reply_hashtags_html_escaped_excerpt_twarc.json")["body"]
    responses.get(MENTIONS, json=page)
    (post,), _ = connector().poll("1")
    assert "Remainers & pro EU" in post.text and "&amp;" not in post.text
    assert post.hashtags == ("brexit", "eu")
    assert post.mentions == ("thattimwalker", "borisjohnson")
    assert post.author_id == page["data"][0]["author_id"]
    assert post.author_handle  # joined from includes.users
    assert post.reply_to is not None


@responses.activate
def test_korean_hashtags_are_read_from_the_entities() -> None:
    page = fixture("v2_tweet_korean_hashtags_excerpt_twarc.json")["body"]
    responses.get(MENTIONS, json=page)
    posts, _ = connector().poll("1")
    tags = {t for p in posts for t in (p.hashtags or ())}
    assert "원호" in tags


@responses.activate
def test_an_edited_tweet_is_an_edit_of_the_original_not_a_new_order() -> None:
    page = fixture("v2_edited_tweet_twarc.json")["body"]
    history = page["data"][0]["edit_history_tweet_ids"]
    responses.get(MENTIONS, json=page)
    posts, cursor = connector().poll("1")
    edit = next(p for p in posts if p.edited_at is not None)
    assert edit.post_id == history[0]
    assert cursor == max(history, key=int)  # the cursor moves past the latest version


@responses.activate
def test_partial_errors_do_not_lose_the_pages_tweets() -> None:
    errors = fixture("v2_partial_errors_excerpt_twarc.json")["body"]["errors"]
    page = fixture("v2_search_all_hashtag_mention_includes_twarc.json")["body"]
    page = dict(page, errors=errors)
    responses.get(MENTIONS, json=page)
    posts, cursor = connector().poll("1")
    assert len(posts) == len(page["data"])
    assert cursor == page["meta"]["newest_id"]


@responses.activate
def test_an_empty_poll_keeps_the_cursor() -> None:
    responses.get(MENTIONS, json={"meta": {"result_count": 0}})
    assert connector().poll("1578516295611748353") == ([], "1578516295611748353")


@responses.activate
def test_stream_hands_each_mention_to_the_sink_with_its_own_id_as_cursor() -> None:
    page = fixture("v2_users_mentions_page_tweepy.json")
    page["body"]["meta"].pop("next_token")
    responses.get(MENTIONS, json=page["body"], headers=page["headers"])
    clock = FakeClock(datetime(2022, 10, 7, 22, 43, tzinfo=UTC))
    c = connector(clock, poll_interval=30.0)
    got: list[tuple[str, str | None]] = []

    def sink(signal: Any, cursor: str | None, feed: str = "") -> None:
        got.append((signal.post_id, cursor))
        if len(got) == 10:
            c.shutdown()

    c.stream(sink)
    assert [cursor for _, cursor in got] == sorted((cursor for _, cursor in got), key=int)
    assert c.cursor == page["body"]["meta"]["newest_id"]
    assert clock.sleeps and clock.sleeps[-1] >= 30.0  # the poll interval, on the fake clock


@responses.activate
def test_replies_and_direct_messages_return_string_ids() -> None:
    created = fixture("v2_create_tweet_tweepy.json")
    responses.post(f"{API}/tweets", json=created["body"], status=201, headers=created["headers"])
    responses.post(
        f"{API}/dm_conversations/with/60606206/messages",
        json={
            "data": {"dm_conversation_id": "60606206-783214", "dm_event_id": "1582838535050125316"}
        },
        status=201,
    )
    c = connector(
        consumer_key="ck", consumer_secret="cs", access_token="at", access_token_secret="ats"
    )
    reply = OutgoingMessage(
        text="Confirmed: 1 × Demo phone.",
        visibility="unlisted",
        idempotency_key="k1",
        in_reply_to="1578516295611748353",
    )
    assert c.send(reply) == created["body"]["data"]["id"]
    sent = json.loads(responses.calls[0].request.body)
    assert sent["reply"]["in_reply_to_tweet_id"] == "1578516295611748353"
    dm = OutgoingMessage(
        text="Pay here: https://shop.example/topup/t",
        visibility="direct",
        idempotency_key="k2",
        recipient_id="60606206",
    )
    assert c.send(dm) == "1582838535050125316"
    assert c.pacer.window is None or c.pacer.window.limit == 200


@responses.activate
def test_a_duplicate_reply_is_rejected_not_retried() -> None:
    responses.post(
        f"{API}/tweets",
        status=403,
        json={
            "detail": "You are not allowed to create a Tweet with duplicate content.",
            "type": "about:blank",
            "title": "Forbidden",
            "status": 403,
        },
    )
    c = connector(
        consumer_key="ck", consumer_secret="cs", access_token="at", access_token_secret="ats"
    )
    with pytest.raises(Rejected):
        c.send(OutgoingMessage(text="same", visibility="public", idempotency_key="k"))


def test_a_brand_files_x_account_becomes_a_connector_without_network() -> None:
    from config.brand import XAccount
    from connectors.base import AuthFailed
    from connectors.twitter import connector_for_account

    account = XAccount(username="shop", user_id=BOT, bearer_token_env="SHOP_X_BEARER")
    c = connector_for_account(
        account, account_key="demo:x", environ={"SHOP_X_BEARER": "b"}, initial_cursor="5"
    )
    assert c.user_id == BOT and c.cursor == "5" and c.account_key == "demo:x"
    with pytest.raises(AuthFailed):
        connector_for_account(account, account_key="demo:x", environ={})


@responses.activate
def test_the_filtered_stream_delivers_hashtag_posts_beside_the_mentions_poll() -> None:
    korean = fixture("v2_tweet_korean_hashtags_excerpt_twarc.json")["body"]
    tweet = korean["data"][0]
    line = json.dumps(
        {
            "data": tweet,
            "includes": korean.get("includes", {}),
            "matching_rules": [{"id": "1", "tag": ""}],
        }
    )
    rules = f"{API}/tweets/search/stream/rules"
    responses.get(rules, json={"meta": {"sent": "2022-10-07T22:43:18.000Z", "result_count": 0}})
    responses.post(
        rules,
        json={
            "data": [{"value": "#원호", "id": "1"}],
            "meta": {"sent": "2022-10-07T22:43:18.000Z"},
        },
    )
    responses.get(f"{API}/tweets/search/stream", body=line + "\r\n\r\n")
    responses.get(MENTIONS, json={"meta": {"result_count": 0}})
    c = connector(hashtag="원호", filtered_stream=True)
    got: list[tuple[Any, str | None]] = []

    def sink(signal: Any, cursor: str | None, feed: str = "") -> None:
        got.append((signal, cursor))
        c.shutdown()

    c.stream(sink)
    (post, cursor), *_ = got
    assert post.post_id == tweet["id"] and cursor is None  # stream posts move no cursor
    assert "원호" in (post.hashtags or ())
    added = next(call for call in responses.calls if call.request.method == "POST")
    assert json.loads(added.request.body)["add"] == [{"value": "#원호"}]


# -- the hashtag feed: posts with the campaign hashtag that do not mention the bot -------------

SEARCH = f"{API}/tweets/search/recent"
NOW = datetime(2022, 10, 7, 22, 43, tzinfo=UTC)  # when the search page was recorded


def hashtag_connector(**kw: Any) -> XConnector:
    return connector(FakeClock(NOW), hashtag="Tweepy", filtered_stream=True, **kw)


@responses.activate
def test_the_hashtag_search_walks_every_page_after_the_saved_cursor() -> None:
    first = fixture("v2_search_recent_tweepy.json")
    second = fixture("v2_search_all_hashtag_mention_includes_twarc.json")
    second["body"]["meta"].pop("next_token", None)  # the last page has none
    responses.get(SEARCH, json=first["body"], headers=first["headers"])
    responses.get(SEARCH, json=second["body"])
    c = hashtag_connector()
    cursor = "1578511000000000000"  # a tweet id from 2022-10-07, inside recent search's reach

    found, newest = c.fetch_hashtag(cursor)

    assert newest == first["body"]["meta"]["newest_id"]  # the first page's newest_id
    ids = [tweet_id for tweet_id, _ in found]
    assert ids == sorted(ids, key=int) and len(ids) == 10 + len(second["body"]["data"])
    one, two = (query(call) for call in responses.calls)
    assert one["query"] == ["#Tweepy"] and one["since_id"] == [cursor]
    assert "start_time" not in one and "next_token" not in one
    assert two["next_token"] == [first["body"]["meta"]["next_token"]]
    assert two["since_id"] == [cursor]
    assert {"entities", "author_id", "created_at"} <= set(one["tweet.fields"][0].split(","))
    assert c.search_pacer.window is not None and c.search_pacer.window.limit == 450
    assert c.poll_pacer.window is None  # searching spends the search budget, not the mentions'


@responses.activate
def test_a_first_hashtag_search_starts_at_the_opening_within_seven_days() -> None:
    responses.get(SEARCH, json={"meta": {"result_count": 0}})
    opened = datetime(2022, 10, 7, 22, 0, tzinfo=UTC)
    assert hashtag_connector(hashtag_since=opened).fetch_hashtag(None) == ([], None)
    long_ago = datetime(2022, 9, 1, tzinfo=UTC)
    hashtag_connector(hashtag_since=long_ago).fetch_hashtag(None)
    hashtag_connector().fetch_hashtag("1166000000000000000")  # a 2019 cursor: out of reach
    at_opening, reach, stale = (query(call) for call in responses.calls)
    assert at_opening["start_time"] == ["2022-10-07T22:00:00Z"] and "since_id" not in at_opening
    assert reach["start_time"] == ["2022-09-30T22:44:00Z"]  # seven days less a minute
    assert stale["start_time"] == ["2022-09-30T22:44:00Z"] and "since_id" not in stale


@responses.activate
def test_the_poll_delivers_hashtag_posts_once_with_their_own_cursor_feed() -> None:
    page = fixture("v2_search_recent_tweepy.json")
    page["body"]["meta"].pop("next_token")
    tweets = page["body"]["data"]
    rules = f"{API}/tweets/search/stream/rules"
    responses.get(rules, json={"meta": {"sent": "2022-10-07T22:43:18.000Z", "result_count": 0}})
    responses.post(rules, json={"data": [{"value": "#Tweepy", "id": "1"}], "meta": {}})
    # The newest post also arrives on the filtered stream: it must still be delivered once.
    line = json.dumps({"data": tweets[0], "matching_rules": [{"id": "1", "tag": ""}]})
    responses.get(f"{API}/tweets/search/stream", body=line + "\r\n\r\n")
    responses.get(MENTIONS, json={"meta": {"result_count": 0}})
    responses.get(SEARCH, json=page["body"], headers=page["headers"])
    c = hashtag_connector(
        hashtag_since=datetime(2022, 10, 7, 22, 0, tzinfo=UTC), poll_interval=30.0
    )
    got: list[tuple[str, str | None, str]] = []

    def sink(signal: Any, cursor: str | None, feed: str = "") -> None:
        got.append((signal.post_id, cursor, feed))
        if len({post_id for post_id, _, _ in got}) == len(tweets):
            c.shutdown()

    thread = threading.Thread(target=c.stream, args=(sink,), daemon=True)
    thread.start()
    thread.join(timeout=10)
    arrived = not thread.is_alive()
    c.shutdown()
    thread.join(timeout=10)  # while `responses` still answers
    assert arrived, f"only {len(got)} posts arrived"
    ids = [post_id for post_id, _, _ in got]
    assert sorted(ids) == sorted(t["id"] for t in tweets) and len(ids) == len(set(ids))
    polled = [(post_id, cursor) for post_id, cursor, feed in got if feed == "#tweepy"]
    assert all(post_id == cursor for post_id, cursor in polled)  # each its own cursor
    assert [c for _, c in polled] == sorted((c for _, c in polled), key=lambda i: int(i or 0))
    assert c.hashtag_cursor == page["body"]["meta"]["newest_id"]
    assert c.cursor is None  # the mentions' cursor is its own
    searches = [query(call) for call in responses.calls if call.request.url.startswith(SEARCH)]
    assert searches[0]["start_time"] == ["2022-10-07T22:00:00Z"]
    assert all(s["since_id"] == [page["body"]["meta"]["newest_id"]] for s in searches[1:])


@responses.activate
def test_a_spent_search_budget_does_not_hold_up_the_mentions() -> None:
    rules = f"{API}/tweets/search/stream/rules"
    responses.get(rules, json={"meta": {"sent": "2022-10-07T22:43:18.000Z", "result_count": 0}})
    responses.post(rules, json={"data": [{"value": "#Tweepy", "id": "1"}], "meta": {}})
    responses.get(f"{API}/tweets/search/stream", body="\r\n")
    reset = int(NOW.timestamp()) + 900  # the search budget comes back in 15 minutes
    rate_limited(SEARCH, reset=reset)
    clock = FakeClock(NOW)
    c = connector(
        clock,
        hashtag="Tweepy",
        filtered_stream=True,
        hashtag_since=datetime(2022, 10, 7, 22, 0, tzinfo=UTC),
        poll_interval=15.0,
    )
    asked: list[datetime] = []

    def mentions(request: Any) -> tuple[int, dict[str, str], str]:
        asked.append(clock.now())
        if len(asked) == 4:
            c.shutdown()
        return 200, {}, json.dumps({"meta": {"result_count": 0}})

    responses.add_callback(responses.GET, MENTIONS, callback=mentions)
    thread = threading.Thread(target=c.stream, args=(lambda *_: None,), daemon=True)
    thread.start()
    thread.join(timeout=10)
    c.shutdown()
    thread.join(timeout=10)
    assert len(asked) == 4
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(asked)]
    assert gaps == [15.0, 15.0, 15.0]  # the mentions keep their pace
    searches = [call for call in responses.calls if call.request.url.startswith(SEARCH)]
    assert len(searches) == 1  # and the search waits for its reset


@responses.activate
def test_no_search_is_asked_before_the_campaign_opens() -> None:
    responses.get(SEARCH, json={"meta": {"result_count": 0}})
    opens = NOW + timedelta(hours=1)
    c = hashtag_connector(hashtag_since=opens)
    assert c.fetch_hashtag(None) == ([], None)  # X would answer 400 to a future start_time
    # Searches only: an earlier test's filtered stream may still be reconnecting meanwhile.
    assert [call for call in responses.calls if call.request.url.startswith(SEARCH)] == []


@responses.activate
def test_a_walk_cut_short_by_the_rate_limit_goes_on_from_its_page_after_the_reset() -> None:
    first = fixture("v2_users_mentions_page_tweepy.json")
    second = fixture("v2_users_mentions_page_async_tweepy.json")
    second["body"]["meta"].pop("next_token")
    reset = int(NOW.timestamp()) + 900
    responses.get(MENTIONS, json=first["body"], headers=first["headers"])
    rate_limited(MENTIONS, reset=reset)
    responses.get(MENTIONS, json=second["body"], headers=second["headers"])
    clock = FakeClock(NOW)
    c = connector(clock, poll_interval=15.0)
    cursor = "1578000000000000000"
    c._mentions.cursor = cursor  # the saved cursor a restart hands over
    expected = len(first["body"]["data"]) + len(second["body"]["data"])
    got: list[str] = []

    def sink(signal: Any, position: str | None, feed: str = "") -> None:
        got.append(signal.post_id)
        if len(got) == expected:
            c.shutdown()

    thread = threading.Thread(target=c.stream, args=(sink,), daemon=True)
    thread.start()
    thread.join(timeout=10)
    c.shutdown()
    thread.join(timeout=10)
    assert len(got) == expected, "the first page was thrown away with the rate limit"
    # The mentions' calls only: the filtered stream may try to connect before the shutdown.
    walked = [call for call in responses.calls if call.request.url.startswith(MENTIONS)]
    one, cut, after = (query(call) for call in walked)
    assert "pagination_token" not in one and cut["pagination_token"] == after["pagination_token"]
    assert after["pagination_token"] == [first["body"]["meta"]["next_token"]]
    assert after["since_id"] == [cursor]
    assert c.cursor == max(first["body"]["meta"]["newest_id"], got[-1], key=int)
