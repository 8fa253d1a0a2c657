"""The X connector (tweepy 4.17 `Client`, API v2): mentions by polling, an optional filtered stream.

- `poll(cursor)` walks `get_users_mentions(since_id=cursor)` through every `next_token` page and
  returns the mentions oldest first. The new cursor is the first page's `meta.newest_id`: since
  `since_id` is exclusive, the next poll starts right after it, and nothing older than the cursor
  is asked for again. A failure on any page raises before anything is returned, so a cursor is
  never advanced past mentions that were not delivered; when it is the rate limit, the pages
  already fetched are kept and the walk goes on from its page after the reset, so a backlog
  longer than one rate window still gets through.
- `stream(sink)` polls on the injected clock, handing each mention to the sink with its own id
  as the cursor, so a crash mid-batch resumes right after the last applied mention. With
  `filtered_stream`, a `StreamingClient` on the campaign hashtag runs alongside (the account's
  API tier must allow it); stream posts carry no cursor. So that hashtag posts that do not
  mention the account survive a gap too, each poll then also walks
  `search_recent_tweets("#tag", since_id=cursor)` through every `next_token` page, the same
  way: each post goes to the sink with its id as the cursor of feed `#tag`
  (`connectors.base.hashtag_feed`), saved under its own key beside the mentions' cursor.
  Without a saved hashtag cursor the search starts (`start_time`) at `hashtag_since`, the
  campaign's opening, or else at the first poll. Recent search reaches seven days back: a
  cursor or an opening older than that is brought inside the window, and posts beyond it are
  out of reach. Each feed keeps its own backoff and rate-limit wait (its own pacer).
- Tweet ids delivered in a process are remembered, so a mention that carries the hashtag, on
  both polls and on the stream, is delivered once; after a restart the engine's unique
  (platform, post id) drops anything offered again.
- Requests go out with `wait_on_rate_limit=False`: the connector paces itself from the
  `x-rate-limit-*` headers (reset in epoch seconds), one window each for reading mentions,
  searching and posting, and raises `RateLimited` instead of sleeping inside tweepy.
- Partial errors (a 200 with `errors[]`, e.g. a suspended mentioned user) are logged and the
  page's tweets are still delivered. Tweet ids stay strings throughout.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests
import tweepy

from config.brand import XAccount
from connectors.base import (
    MENTIONS,
    AuthFailed,
    Connector,
    ConnectorError,
    OutgoingMessage,
    RateLimited,
    Sink,
    classify,
    hand_over,
    hashtag_feed,
    id_order,
)
from connectors.pacing import Clock, Pacer, SystemClock, x_window
from connectors.post import Post, Signal
from connectors.x_payload import PayloadError, post_from_tweet, snowflake_time, tweets_of

log = logging.getLogger(__name__)

TWEET_FIELDS = [
    "created_at",
    "entities",
    "lang",
    "author_id",
    "conversation_id",
    "referenced_tweets",
    "in_reply_to_user_id",
    "edit_history_tweet_ids",
]
EXPANSIONS = ["author_id"]
USER_FIELDS = ["username"]
PAGE_SIZE = 100  # the most get_users_mentions and search_recent_tweets return per page
# Recent search reaches seven days back; a minute of margin keeps a start_time computed just
# before the request inside that window when it arrives.
SEARCH_REACH = timedelta(days=7) - timedelta(minutes=1)
# X refuses a recent search whose start_time is less than 10 s ago.
SEARCH_LAG = timedelta(seconds=10)
SEEN_MEMORY = 50_000

Fetched = tuple[list[tuple[str, Post]], str | None]


@dataclass
class _Walk:
    """One walk through a feed's pages, newest first, kept when a rate limit cuts it short so
    that the next try goes on from the page it stopped at: a backlog longer than one rate
    window still gets through. `bounds` are the query's since_id and start_time, fixed for
    the walk (X's page tokens belong to their query)."""

    cursor: str | None
    bounds: tuple[str | None, datetime | None] = (None, None)
    found: list[tuple[str, Post]] = field(default_factory=list)
    newest: str | None = None
    token: str | None = None
    pages: int = 0


def _resumed(walk: _Walk | None, cursor: str | None) -> _Walk:
    """`walk` if it is a walk from `cursor` to go on with, else a new walk from `cursor`."""
    return walk if walk is not None and walk.cursor == cursor else _Walk(cursor)


@dataclass
class _Feed:
    """One feed the poll walks: the mentions, or the hashtag's recent search."""

    name: str
    cursor: str | None
    fetch: Callable[[str | None, _Walk | None], Fetched]
    pacer: Pacer  # the feed's own rate-limit window: one feed's limit never holds up the other
    failures: int = 0
    resume_at: datetime | None = None
    walk: _Walk | None = None  # a walk a rate limit cut short

    def wait(self, now: datetime) -> float:
        """Seconds before this feed may be polled: its pace, or its backoff or reset."""
        wait = self.pacer.delay()
        if self.resume_at is not None:
            wait = max(wait, (self.resume_at - now).total_seconds())
        return wait


class XConnector(Connector):
    """One brand account on X."""

    platform = "x"

    def __init__(
        self,
        *,
        account_key: str,
        bearer_token: str,
        user_id: str | None = None,
        username: str | None = None,
        consumer_key: str | None = None,
        consumer_secret: str | None = None,
        access_token: str | None = None,
        access_token_secret: str | None = None,
        hashtag: str | None = None,
        filtered_stream: bool = False,
        poll_interval: float = 15.0,
        clock: Clock | None = None,
        initial_cursor: str | None = None,
        initial_hashtag_cursor: str | None = None,
        hashtag_since: datetime | None = None,
    ) -> None:
        if user_id is None and username is None:
            raise ValueError("an X connector needs the account's user_id or username")
        self.account_key = account_key
        self._bearer = bearer_token
        self._user_auth = dict(
            consumer_key=consumer_key,
            consumer_secret=consumer_secret,
            access_token=access_token,
            access_token_secret=access_token_secret,
        )
        self.user_id = user_id
        self.username = username
        self._hashtag = hashtag.removeprefix("#") if hashtag else None
        self._filtered = filtered_stream
        self._interval = poll_interval
        self._clock: Clock = clock or SystemClock()
        self.pacer = Pacer(self._clock)  # POST /2/tweets and DMs
        self.poll_pacer = Pacer(self._clock)  # GET /2/users/:id/mentions
        self.search_pacer = Pacer(self._clock)  # GET /2/tweets/search/recent
        self._hashtag_since = hashtag_since
        self._mentions = _Feed(MENTIONS, initial_cursor, self.fetch, self.poll_pacer)
        self._tagged: _Feed | None = None
        if self._hashtag and self._filtered:
            self._tagged = _Feed(
                hashtag_feed(self._hashtag),
                initial_hashtag_cursor,
                self.fetch_hashtag,
                self.search_pacer,
            )
        self._client: tweepy.Client | None = None
        self._stream: tweepy.StreamingClient | None = None
        self._stopping = threading.Event()
        self._sink_lock = threading.Lock()
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()

    # -- lifecycle ---------------------------------------------------------------------------

    def initialize(self) -> None:
        self._client = tweepy.Client(
            bearer_token=self._bearer,
            return_type=requests.Response,
            wait_on_rate_limit=False,
            **self._user_auth,
        )
        if self.user_id is None:
            found = self._request(self.poll_pacer, lambda c: c.get_user(username=self.username))
            self.user_id = str(found["data"]["id"])
        self._stopping.clear()

    def shutdown(self) -> None:
        self._stopping.set()
        if self._stream is not None:
            self._stream.disconnect()

    @property
    def client(self) -> tweepy.Client:
        if self._client is None:
            raise RuntimeError("XConnector.initialize() was not called")
        return self._client

    @property
    def cursor(self) -> str | None:
        """The newest mention id polled so far."""
        return self._mentions.cursor

    @property
    def hashtag_feed(self) -> str | None:
        """The feed name hashtag cursors are handed to the sink under (None: no hashtag poll)."""
        return self._tagged.name if self._tagged is not None else None

    @property
    def hashtag_cursor(self) -> str | None:
        """The newest hashtag post id polled so far."""
        return self._tagged.cursor if self._tagged is not None else None

    @property
    def _has_user_auth(self) -> bool:
        return all(self._user_auth.values())

    # -- requests ----------------------------------------------------------------------------

    def _request(self, pacer: Pacer, call: Callable[[tweepy.Client], Any]) -> Any:
        """One tweepy call; the JSON body. Errors become `ConnectorError`s, headers feed `pacer`."""
        try:
            response: requests.Response = call(self.client)
        except (tweepy.TweepyException, requests.RequestException) as exc:
            raw = getattr(exc, "response", None)
            headers = dict(raw.headers) if raw is not None else {}
            if raw is not None:
                pacer.record(x_window(headers))
            error = classify(exc, now=self._clock.now(), headers=headers)
            if isinstance(error, RateLimited):
                pacer.block_until(error.reset_at)
            raise error from exc
        pacer.record(x_window(response.headers))
        body = response.json() if response.content else {}
        if isinstance(body, dict) and body.get("errors"):
            for problem in body["errors"]:
                log.info(
                    "X partial error: %s (%s)", problem.get("title"), problem.get("resource_id")
                )
        return body

    # -- polling -----------------------------------------------------------------------------

    def _mentions_page(self, since_id: str | None, token: str | None) -> dict[str, Any]:
        user_id = self.user_id

        def call(client: tweepy.Client) -> Any:
            return client.get_users_mentions(
                user_id,
                since_id=since_id,
                pagination_token=token,
                max_results=PAGE_SIZE,
                expansions=EXPANSIONS,
                tweet_fields=TWEET_FIELDS,
                user_fields=USER_FIELDS,
            )

        page: dict[str, Any] = self._request(self.poll_pacer, call)
        return page

    def _search_page(
        self, since_id: str | None, start_time: datetime | None, token: str | None
    ) -> dict[str, Any]:
        query = f"#{self._hashtag}"

        def call(client: tweepy.Client) -> Any:
            return client.search_recent_tweets(
                query,
                since_id=since_id,
                start_time=start_time,
                next_token=token,
                max_results=PAGE_SIZE,
                expansions=EXPANSIONS,
                tweet_fields=TWEET_FIELDS,
                user_fields=USER_FIELDS,
            )

        page: dict[str, Any] = self._request(self.search_pacer, call)
        return page

    def _search_bounds(self, cursor: str | None) -> tuple[str | None, datetime | None]:
        """`since_id` from the cursor; without one, `start_time` at the campaign's opening (or
        now). Recent search only reaches seven days back, so either is brought inside that."""
        reach = self._clock.now() - SEARCH_REACH
        if cursor is not None:
            try:
                if snowflake_time(cursor) >= reach:
                    return cursor, None
            except PayloadError:
                log.warning("ignoring a hashtag cursor that is not a tweet id: %r", cursor)
            log.warning("hashtag cursor older than recent search reaches; searching 7 days back")
            return None, reach
        if self._hashtag_since is None:  # from now on, fixed so no poll skips the gap before it
            self._hashtag_since = self._clock.now()
        return None, max(self._hashtag_since, reach)

    def fetch(self, cursor: str | None, walk: _Walk | None = None) -> Fetched:
        """(tweet id, Post) for every mention after `cursor`, oldest first, and the new cursor.
        `walk` carries a walk a rate limit cut short, to go on with (same cursor only)."""
        walk = _resumed(walk, cursor)
        return self._walk(
            self.poll_pacer, lambda token: self._mentions_page(cursor, token), walk, "mentions"
        )

    def fetch_hashtag(self, cursor: str | None, walk: _Walk | None = None) -> Fetched:
        """(tweet id, Post) for every recent post with the hashtag after `cursor` (a tweet id),
        oldest first, and the new cursor; with no cursor, from the campaign's opening."""
        if self._hashtag is None:
            raise RuntimeError("this connector has no hashtag")
        walk = _resumed(walk, cursor)
        if walk.pages == 0:  # a new walk: its bounds are fixed now, for all its pages
            walk.bounds = self._search_bounds(cursor)
        since_id, start_time = walk.bounds
        if start_time is not None and start_time > self._clock.now() - SEARCH_LAG:
            return [], cursor  # the campaign has not opened (or just did): nothing to ask yet
        return self._walk(
            self.search_pacer,
            lambda token: self._search_page(since_id, start_time, token),
            walk,
            "search",
        )

    def _walk(
        self,
        pacer: Pacer,
        get_page: Callable[[str | None], dict[str, Any]],
        walk: _Walk,
        what: str,
    ) -> Fetched:
        window = pacer.window
        now = self._clock.now()
        if window is not None and window.remaining <= 0 and window.reset_at > now:
            raise RateLimited(f"{what} budget spent", reset_at=window.reset_at, status=None)
        if walk.pages == 0:
            walk.newest = walk.cursor
        while True:
            page = get_page(walk.token)  # a failure here leaves `walk` at this page
            meta = page.get("meta") or {}
            if walk.pages == 0 and isinstance(meta.get("newest_id"), str):
                walk.newest = meta["newest_id"]
            walk.pages += 1
            walk.found.extend(_posts(page))
            token = meta.get("next_token")
            if not token or not page.get("data"):
                break
            walk.token = token
        found = sorted(walk.found, key=lambda pair: id_order(pair[0]))
        newest = walk.newest
        if found and (newest is None or id_order(found[-1][0]) > id_order(newest)):
            newest = found[-1][0]
        return found, newest

    def poll(self, cursor: str | None) -> tuple[list[Signal], str | None]:
        found, newest = self.fetch(cursor)
        return [post for _, post in found], newest

    # -- streaming ---------------------------------------------------------------------------

    def stream(self, sink: Sink) -> None:
        """Poll mentions (and, with the filtered stream, the hashtag's recent search) until
        `shutdown()`, beside the filtered stream if enabled. Blocks."""
        if self._tagged is not None:
            self._start_filtered_stream(sink)
        feeds = [self._mentions] + ([self._tagged] if self._tagged is not None else [])
        while not self._stopping.is_set():
            for feed in feeds:
                if self._stopping.is_set():
                    return
                self._poll_feed(feed, sink)
            self._clock.sleep(self._next_poll_in(feeds))

    def _poll_feed(self, feed: _Feed, sink: Sink) -> None:
        """One poll of one feed: deliver what is new, or note when to try again."""
        if feed.wait(self._clock.now()) > 0:
            return
        feed.walk = _resumed(feed.walk, feed.cursor)
        try:
            found, newest = feed.fetch(feed.cursor, feed.walk)
        except RateLimited as exc:
            feed.resume_at = exc.reset_at  # the walk goes on from its page after the reset
            return
        except AuthFailed:
            raise
        except ConnectorError as exc:
            feed.walk = None  # start again from the cursor: a page token may be what failed
            feed.failures += 1
            wait = min(2.0**feed.failures, 300.0)
            log.warning(
                "X %s poll failed (%s); retrying in %.0fs", feed.name or "mentions", exc, wait
            )
            feed.resume_at = self._clock.now() + timedelta(seconds=wait)
            return
        feed.failures = 0
        feed.resume_at = None
        feed.walk = None
        for tweet_id, post in found:
            self._deliver(sink, post, tweet_id, feed.name)
        if newest is not None:
            feed.cursor = newest

    def _next_poll_in(self, feeds: list[_Feed]) -> float:
        """Seconds until the next poll: the interval, or longer while every feed must wait.
        A feed that must wait (its rate limit spent, its backoff) holds up only itself."""
        now = self._clock.now()
        return max(self._interval, min(feed.wait(now) for feed in feeds))

    def _deliver(self, sink: Sink, post: Post, cursor: str | None, feed: str) -> None:
        """Hand `post` to the sink, unless this process already did (a mention that carries
        the hashtag is on both polls and the filtered stream): the engine would drop it as a
        duplicate anyway, but it would cost a place in a batch."""
        key = post.post_id if post.edited_at is None else None
        with self._sink_lock:
            if key is not None and key in self._seen:
                return
            hand_over(sink, post, cursor, feed)
            if key is not None:
                self._seen.add(key)
                self._seen_order.append(key)
                if len(self._seen_order) > SEEN_MEMORY:
                    self._seen.discard(self._seen_order.popleft())

    def _start_filtered_stream(self, sink: Sink) -> None:
        connector = self

        class _Stream(tweepy.StreamingClient):  # type: ignore[misc]
            def on_data(self, raw_data: bytes) -> None:
                try:
                    payload = json.loads(raw_data)
                except ValueError:
                    log.warning("X stream sent a line that is not JSON")
                    return
                for _, post in _posts(payload):
                    connector._deliver(sink, post, None, MENTIONS)

            def on_errors(self, errors: Any) -> None:
                log.info("X stream partial errors: %s", errors)

        stream = _Stream(self._bearer, wait_on_rate_limit=False)
        rule = f"#{self._hashtag}"
        rules = stream.get_rules()
        existing = {r.value for r in (rules.data or [])}
        if rule not in existing:
            stream.add_rules(tweepy.StreamRule(rule))
        self._stream = stream
        stream.filter(
            expansions=EXPANSIONS,
            tweet_fields=TWEET_FIELDS,
            user_fields=USER_FIELDS,
            threaded=True,
        )

    # -- sending -----------------------------------------------------------------------------

    def send(self, message: OutgoingMessage) -> str:
        """A reply tweet, or a direct message (for anything private, e.g. payment links)."""
        if message.is_direct:
            if not message.recipient_id:
                raise ConnectorError("a direct message needs the recipient's X user id")
            recipient = message.recipient_id

            def dm(client: tweepy.Client) -> Any:
                return client.create_direct_message(
                    participant_id=recipient, text=message.text, user_auth=self._has_user_auth
                )

            body = self._request(self.pacer, dm)
            data = body.get("data") or {}
            return str(data.get("dm_event_id") or data.get("id"))

        def tweet(client: tweepy.Client) -> Any:
            return client.create_tweet(
                text=message.text,
                in_reply_to_tweet_id=message.in_reply_to,
                user_auth=self._has_user_auth,
            )

        body = self._request(self.pacer, tweet)
        return str(body["data"]["id"])


def _posts(page: Any) -> list[tuple[str, Post]]:
    """(tweet id, Post) for each tweet of a page; a malformed tweet is logged and skipped."""
    try:
        tweets, users = tweets_of(page)
    except PayloadError as exc:
        log.warning("skipping a malformed X page: %s", exc)
        return []
    posts: list[tuple[str, Post]] = []
    for tweet in tweets:
        try:
            posts.append((str(tweet.get("id")), post_from_tweet(tweet, users)))
        except PayloadError as exc:
            log.warning("skipping a malformed tweet: %s", exc)
    return posts


def connector_for_account(
    account: XAccount,
    *,
    account_key: str,
    clock: Clock | None = None,
    initial_cursor: str | None = None,
    hashtag: str | None = None,
    initial_hashtag_cursor: str | None = None,
    hashtag_since: datetime | None = None,
    environ: Mapping[str, str] | None = None,
) -> XConnector:
    """An `XConnector` for a brand file's `[accounts.x]`, its tokens read from the environment
    variables the file names (no I/O until `initialize()`)."""
    env = os.environ if environ is None else environ

    def secret(name: str | None) -> str | None:
        return env.get(name) or None if name else None

    bearer = secret(account.bearer_token_env)
    if bearer is None:
        raise AuthFailed(f"environment variable {account.bearer_token_env} is not set")
    return XConnector(
        account_key=account_key,
        bearer_token=bearer,
        user_id=account.user_id,
        username=account.username,
        consumer_key=secret(account.consumer_key_env),
        consumer_secret=secret(account.consumer_secret_env),
        access_token=secret(account.access_token_env),
        access_token_secret=secret(account.access_token_secret_env),
        hashtag=hashtag,
        filtered_stream=account.filtered_stream,
        clock=clock,
        initial_cursor=initial_cursor,
        initial_hashtag_cursor=initial_hashtag_cursor,
        hashtag_since=hashtag_since,
    )
