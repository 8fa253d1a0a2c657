"""The Mastodon connector (Mastodon.py 2.3): mentions from the user stream, backfilled by polling.

How nothing is lost and nothing is replayed:

- The user notification stream (SSE) is the live path. Once the server confirms the stream is
  open (its first heartbeat comment, or the first event), the connector backfills with
  `notifications(types=["mention"], min_id=cursor)`, page by page, before handling any streamed
  event. Anything older than the subscription is in the REST pages; anything newer arrives on the
  stream. This runs at start and after every reconnect.
- Every mention is handed to the sink with the notification id as its cursor. The caller saves
  the cursor in the transaction that applies the post, so after a restart the backfill starts
  exactly after the last applied mention.
- With a campaign hashtag (`hashtag_stream = true`), the hashtag stream runs beside it the same
  way: once it opens, `timeline_hashtag(tag, min_id=cursor)` is walked page by page, oldest
  first, before any streamed status. The hashtag is a feed of its own: each status goes to the
  sink with its status id as the cursor of feed `#tag` (`connectors.base.hashtag_feed`), which
  the caller saves under its own key, so the mention and hashtag cursors never overwrite each
  other. Live hashtag statuses move that cursor too (status ids only grow, compared with
  `id_order`). Without a saved hashtag cursor (a first start), the walk starts right after the
  newest status made before `hashtag_since`, the campaign's opening: posts made after the sale
  opened while nothing listened are delivered, older ones are not. Without `hashtag_since`, it
  starts at the time of that first backfill.
- Ids seen since start are remembered (status ids and notification ids), so a mention that is
  both in a backfill page and on the stream, or on the hashtag feed too, is delivered once in a
  process. A status the other feed already delivered moves its feed's cursor only here, so after
  a restart it may be offered again; the engine's unique (platform, post id) drops it.
- Limits: a status a server fetched after the fact (not pushed to it in real time) gets an id
  from its publication time, which can fall below the hashtag cursor, so the backfill misses it
  (live, the stream still delivers it). Deletions and edits made while nothing listened are not
  backfilled on either feed: the API has no feed of them.

Edits (`status.update`) become `Post`s with `edited_at`, deletes become `Deletion`s with the id
kept as a string, and notifications whose status is null (deleted since) are skipped. Requests
use `ratelimit_method="throw"`; the connector paces itself from `X-RateLimit-*` headers.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
import requests
from mastodon import Mastodon
from mastodon.streaming import StreamListener

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
from connectors.mastodon_payload import (
    PayloadError,
    parse_time,
    post_from_notification,
    post_from_status,
)
from connectors.pacing import Clock, Pacer, SystemClock, mastodon_window
from connectors.post import Deletion, Post, Signal
from connectors.sse import iter_events

log = logging.getLogger(__name__)

PAGE_LIMIT = 40  # Mastodon's maximum for notifications and timelines
SEEN_MEMORY = 50_000
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
EDIT_EVENTS = ("status.update", "status_update")  # Mastodon's name; mastodon-mock's name


def newer(a: str | None, b: str | None) -> str | None:
    """The later of two ids (None is older than everything)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if id_order(a) >= id_order(b) else b


@dataclass
class _Feed:
    """One feed of the account and how far it was handed to the sink.

    `name` is the feed the sink saves the cursor under; `mark` prefixes the positions remembered
    as seen: notification ids (`n:`) for mentions, status ids (`s:`) for a hashtag, so a status
    met on both feeds is delivered once.
    """

    name: str
    cursor: str | None
    mark: str


class _Stopped(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside the stream reader to leave it when the connector shuts down."""


class _SinkFailed(Exception):  # noqa: N818 - carries the sink's own exception out of the reader
    """The sink raised: that is the caller's failure, not the network's, so no reconnect."""


class _ResponseTap:
    """A requests hook that keeps each thread's last response: raw JSON and rate-limit headers.

    Mastodon.py turns payloads into its own types (datetimes, renamed fields); the payload
    converters want the wire JSON, and pacing wants the headers Mastodon.py does not expose.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._local.response = response

    def clear(self) -> None:
        self._local.response = None

    @property
    def last(self) -> requests.Response | None:
        response: requests.Response | None = getattr(self._local, "response", None)
        return response


class _Listener(StreamListener):
    """Reads one SSE connection with our own parser and hands each event to `on_event`."""

    def __init__(
        self,
        on_open: Callable[[], None],
        on_event: Callable[[str, str], None],
        stopping: threading.Event,
        responses: list[requests.Response],
    ) -> None:
        super().__init__()
        self._on_open = on_open
        self._on_event = on_event
        self._stopping = stopping
        self._responses = responses

    def handle_stream(self, response: requests.Response) -> None:
        self._responses.append(response)
        opened = False
        try:
            for event in iter_events(response.iter_content(chunk_size=None)):
                if self._stopping.is_set():
                    raise _Stopped
                if not opened:
                    opened = True
                    self._on_open()
                if event.name is not None:
                    self._on_event(event.name, event.data)
        finally:
            self._responses.remove(response)


class MastodonConnector(Connector):
    """One brand account on one Mastodon server."""

    platform = "mastodon"

    def __init__(
        self,
        *,
        account_key: str,
        base_url: str,
        access_token: str,
        hashtag: str | None = None,
        clock: Clock | None = None,
        stream_timeout: float = 60.0,
        request_timeout: float = 30.0,
        reconnect_backoff: tuple[float, ...] = RECONNECT_BACKOFF,
        initial_cursor: str | None = None,
        initial_hashtag_cursor: str | None = None,
        hashtag_since: datetime | None = None,
    ) -> None:
        self.account_key = account_key
        self._base_url = base_url.rstrip("/")
        self._token = access_token
        self._hashtag = hashtag.removeprefix("#") if hashtag else None
        self._hashtag_since = hashtag_since
        self._mentions = _Feed(MENTIONS, initial_cursor, "n:")
        self._tagged = (
            _Feed(hashtag_feed(self._hashtag), initial_hashtag_cursor, "s:")
            if self._hashtag
            else None
        )
        self._clock: Clock = clock or SystemClock()
        # Mastodon limits posting statuses apart from reading (300 per 3 h vs 300 per 5 min), and
        # each response's headers describe the limit that applied to it: one window each.
        self.pacer = Pacer(self._clock)  # posting (what the outbox paces by)
        self.read_pacer = Pacer(self._clock)  # notifications, credentials
        self._stream_timeout = stream_timeout
        self._request_timeout = request_timeout
        self._backoff = reconnect_backoff
        self._api: Mastodon | None = None
        self._tap = _ResponseTap()
        self._stopping = threading.Event()
        self._open_responses: list[requests.Response] = []
        self._sink_lock = threading.Lock()
        self._backfill_lock = threading.Lock()
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self.account_id: str | None = None
        self.acct: str | None = None
        self.reconnects = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def initialize(self) -> None:
        session = requests.Session()
        session.hooks["response"].append(self._tap)
        self._api = Mastodon(
            access_token=self._token,
            api_base_url=self._base_url,
            ratelimit_method="throw",
            request_timeout=self._request_timeout,
            session=session,
        )
        me = self._call(lambda api: api.account_verify_credentials(), self.read_pacer)
        self.account_id = str(me["id"])
        self.acct = str(me["acct"])
        self._stopping.clear()

    def shutdown(self) -> None:
        self._stopping.set()
        for response in list(self._open_responses):
            try:
                response.close()
            except Exception:  # closing a dead connection may fail; we are leaving anyway
                log.debug("closing a stream response failed", exc_info=True)

    @property
    def api(self) -> Mastodon:
        if self._api is None:
            raise RuntimeError("MastodonConnector.initialize() was not called")
        return self._api

    @property
    def cursor(self) -> str | None:
        """The newest notification id handed to the sink so far."""
        return self._mentions.cursor

    @property
    def hashtag_feed(self) -> str | None:
        """The feed name the hashtag's cursors are handed to the sink under (None: no hashtag)."""
        return self._tagged.name if self._tagged is not None else None

    @property
    def hashtag_cursor(self) -> str | None:
        """The newest hashtag status id handed to the sink (or skipped as seen) so far."""
        return self._tagged.cursor if self._tagged is not None else None

    # -- requests ----------------------------------------------------------------------------

    def _call(self, request: Callable[[Mastodon], Any], pacer: Pacer) -> Any:
        """Run one Mastodon.py call; return the wire JSON. Errors become `ConnectorError`s."""
        self._tap.clear()
        try:
            request(self.api)
        except Exception as exc:
            response = self._tap.last
            headers = dict(response.headers) if response is not None else {}
            if response is not None:
                pacer.record(mastodon_window(headers))
            error = classify(exc, now=self._clock.now(), headers=headers)
            if isinstance(error, RateLimited):
                pacer.block_until(error.reset_at)
            raise error from exc
        response = self._tap.last
        if response is None:
            raise ConnectorError("no response recorded for a Mastodon request")
        pacer.record(mastodon_window(response.headers))
        return response.json() if response.content else None

    # -- polling -----------------------------------------------------------------------------

    def pages(self, cursor: str | None) -> Iterator[list[dict[str, Any]]]:
        """Mention notifications after `cursor`, one page at a time, oldest page first.

        Each page is sorted oldest first. `min_id` pages forward from the cursor; with no cursor
        the walk starts from the account's oldest mention. A short page ends the walk.
        """
        return self._forward(_mentions_after, cursor or "0")

    def hashtag_pages(self, cursor: str | None) -> Iterator[list[dict[str, Any]]]:
        """Statuses on the hashtag's timeline after `cursor` (a status id), oldest page first.

        The same walk as `pages`. With no cursor it starts at `hashtag_start()`.
        """
        tag = self._hashtag
        if tag is None:
            raise RuntimeError("this connector has no hashtag")
        start = cursor if cursor is not None else self.hashtag_start()
        return self._forward(lambda position: _tagged_after(tag, position), start)

    def hashtag_start(self) -> str:
        """Where a hashtag backfill without a saved cursor starts: right after the newest status
        made before `hashtag_since` (the campaign's opening), found by walking the timeline
        back; "0" if every status on it is that recent. Without `hashtag_since`, now.

        Status ids only roughly follow creation times (and on servers other than Mastodon not
        at all), so the start is found from `created_at`, not computed from the time.
        """
        tag = self._hashtag
        if tag is None:
            raise RuntimeError("this connector has no hashtag")
        since = self._hashtag_since or self._clock.now()
        before: str | None = None
        while True:
            page = self._call(_tagged_before(tag, before), self.read_pacer)
            if not page:
                return "0"
            page = sorted(page, key=lambda s: id_order(str(s["id"])), reverse=True)
            for status in page:
                try:
                    made = parse_time(status.get("created_at"))
                except PayloadError:
                    continue
                if made < since:
                    return str(status["id"])
            if len(page) < PAGE_LIMIT:
                return "0"
            before = str(page[-1]["id"])

    def _forward(
        self, request_after: Callable[[str], Callable[[Mastodon], Any]], position: str
    ) -> Iterator[list[dict[str, Any]]]:
        while True:
            page = self._call(request_after(position), self.read_pacer)
            if not page:
                return
            page = sorted(page, key=lambda n: id_order(str(n["id"])))
            yield page
            if len(page) < PAGE_LIMIT:
                # Caught up. Stopping here, not at an empty page, also keeps a backfill from
                # chasing a live sale page by page: newer posts are already on the stream.
                return
            position = str(page[-1]["id"])

    def poll(self, cursor: str | None) -> tuple[list[Signal], str | None]:
        signals: list[Signal] = []
        newest = cursor
        for page in self.pages(cursor):
            for notification in page:
                post = _convert(post_from_notification, notification)
                if post is not None:
                    signals.append(post)
                newest = newer(newest, str(notification["id"]))
        return signals, newest

    # -- streaming ---------------------------------------------------------------------------

    def stream(self, sink: Sink) -> None:
        """Run the user stream (and the hashtag stream, if configured) until `shutdown()`.

        Blocks. Raises `AuthFailed` if the token stops working; every other failure is logged
        and followed by a reconnect with backoff (on the injected clock) and a fresh backfill.
        """
        threads: list[threading.Thread] = []
        errors: list[BaseException] = []
        if self._hashtag:
            tag = self._hashtag

            def run_tag() -> None:
                try:
                    self._run_stream(
                        "hashtag",
                        lambda api, listener: api.stream_hashtag(
                            tag, listener, timeout=self._stream_timeout
                        ),
                        on_open=lambda: self._backfill_hashtag(sink),
                        on_event=lambda name, data: self._on_hashtag_event(name, data, sink),
                    )
                except BaseException as exc:  # reported by the user stream's thread below
                    errors.append(exc)
                    self.shutdown()  # ends the user stream too, so the failure is not hidden

            thread = threading.Thread(target=run_tag, name=f"{self.account_key}-tag", daemon=True)
            thread.start()
            threads.append(thread)
        try:
            self._run_stream(
                "user",
                lambda api, listener: api.stream_user(listener, timeout=self._stream_timeout),
                on_open=lambda: self._backfill(sink),
                on_event=lambda name, data: self._on_user_event(name, data, sink),
            )
        finally:
            self.shutdown()
            for thread in threads:
                thread.join(timeout=self._stream_timeout)
        if errors:
            raise errors[0]

    def _run_stream(
        self,
        label: str,
        connect: Callable[[Mastodon, StreamListener], Any],
        *,
        on_open: Callable[[], None],
        on_event: Callable[[str, str], None],
    ) -> None:
        failures = 0
        while not self._stopping.is_set():
            opened = threading.Event()

            listener = _Listener(
                _flag_then(opened, on_open), on_event, self._stopping, self._open_responses
            )
            try:
                connect(self.api, listener)
                error: ConnectorError = classify(503, now=self._clock.now(), message="stream ended")
            except _Stopped:
                return
            except _SinkFailed as exc:
                raise exc.__cause__ or exc from None
            except ConnectorError as exc:  # raised by our own callbacks (backfill)
                error = exc
            except Exception as exc:  # any stream failure means: reconnect
                error = classify(exc, now=self._clock.now())
            if self._stopping.is_set():
                return
            if isinstance(error, AuthFailed):
                raise error
            failures = 0 if opened.is_set() else failures + 1
            self.reconnects += 1
            if isinstance(error, RateLimited):
                wait = max((error.reset_at - self._clock.now()).total_seconds(), 0.0)
            else:
                wait = self._backoff[min(failures, len(self._backoff) - 1)]
            log.warning(
                "%s stream of %s lost (%s); reconnecting in %.1fs",
                label,
                self.account_key,
                error,
                wait,
            )
            self._clock.sleep(wait)

    def _remember(self, key: str) -> bool:
        """Record `key`; False if it was already seen (so the signal is not delivered again)."""
        if key in self._seen:
            return False
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > SEEN_MEMORY:
            self._seen.discard(self._seen_order.popleft())
        return True

    def _deliver(
        self,
        sink: Sink,
        signal: Signal | None,
        feed: _Feed | None = None,
        position: str | None = None,
    ) -> None:
        """Hand `signal` to the sink once, with `feed`'s cursor moved to `position`; only then
        count it as seen and move the cursor (if the sink fails, the next backfill offers the
        same post again). A status already delivered from the other feed is not handed over
        again; its position is then only remembered here, and saved with the feed's next post.
        """
        with self._sink_lock:
            mark = f"{feed.mark}{position}" if feed is not None and position else None
            if feed is not None and mark is not None and mark in self._seen:
                feed.cursor = newer(feed.cursor, position)
                return
            cursor = newer(feed.cursor, position) if feed is not None and position else None
            new_post = isinstance(signal, Post) and signal.edited_at is None
            status = f"s:{signal.post_id}" if new_post and signal is not None else None
            if signal is not None and (status is None or status not in self._seen):
                try:
                    hand_over(sink, signal, cursor, feed.name if feed is not None else MENTIONS)
                except Exception as exc:
                    raise _SinkFailed from exc
                if status is not None:
                    self._remember(status)
            if mark is not None and feed is not None:
                self._remember(mark)
                feed.cursor = cursor

    def _backfill(self, sink: Sink) -> None:
        with self._backfill_lock:
            for page in self.pages(self._mentions.cursor):
                for notification in page:
                    post = _convert(post_from_notification, notification)
                    self._deliver(sink, post, self._mentions, str(notification["id"]))

    def _backfill_hashtag(self, sink: Sink) -> None:
        feed = self._tagged
        if feed is None:
            return
        if feed.cursor is None:
            # Found once per process: nothing before it is ever wanted, and it is saved with
            # the first hashtag post applied.
            feed.cursor = self.hashtag_start()
        for page in self.hashtag_pages(feed.cursor):
            for status in page:
                post = _convert(post_from_status, status)
                self._deliver(sink, post, feed, str(status["id"]))

    def _on_user_event(self, name: str, data: str, sink: Sink) -> None:
        if name == "notification":
            notification = orjson.loads(data)
            if notification.get("type") != "mention":
                return
            post = _convert(post_from_notification, notification)
            self._deliver(sink, post, self._mentions, str(notification["id"]))
        elif name in EDIT_EVENTS:
            status = orjson.loads(data)
            if self._mentions_me(status):
                self._deliver(sink, self._edit(status))
        elif name == "delete":
            self._deliver(sink, self._deletion(data))

    def _on_hashtag_event(self, name: str, data: str, sink: Sink) -> None:
        if name == "update":
            status = orjson.loads(data)
            position = str(status["id"]) if isinstance(status, dict) and "id" in status else None
            self._deliver(sink, _convert(post_from_status, status), self._tagged, position)
        elif name in EDIT_EVENTS:
            self._deliver(sink, self._edit(orjson.loads(data)))
        elif name == "delete":
            self._deliver(sink, self._deletion(data))

    def _mentions_me(self, status: dict[str, Any]) -> bool:
        mentions = status.get("mentions") or []
        return any(str(m.get("id")) == self.account_id for m in mentions)

    def _edit(self, status: dict[str, Any]) -> Post | None:
        post = _convert(post_from_status, status)
        if (
            post is not None and post.edited_at is None
        ):  # an edit event always means "edited", even if the field lags
            post = _with_edit_time(post, self._clock.now())
        return post

    def _deletion(self, data: str) -> Deletion:
        post_id = data.strip().strip('"')
        return Deletion(platform="mastodon", post_id=post_id, deleted_at=self._clock.now())

    # -- sending -----------------------------------------------------------------------------

    def send(self, message: OutgoingMessage) -> str:
        text = message.text
        handle = message.recipient_handle
        if handle:
            mention = "@" + handle.removeprefix("@")
            if mention not in text:
                text = f"{mention} {text}"
        status = self._call(
            lambda api: api.status_post(
                text,
                in_reply_to_id=message.in_reply_to,
                visibility=message.visibility,
                language=message.lang,
                idempotency_key=message.idempotency_key,
            ),
            self.pacer,
        )
        return str(status["id"])


def _convert(convert: Callable[[Any], Post | None], payload: Any) -> Post | None:
    """A payload as a Post; a malformed one is logged and skipped (the loop carries on)."""
    try:
        return convert(payload)
    except PayloadError as exc:
        log.warning("skipping a malformed Mastodon payload: %s", exc)
        return None


def _mentions_after(position: str) -> Callable[[Mastodon], Any]:
    def request(api: Mastodon) -> Any:
        return api.notifications(types=["mention"], min_id=position, limit=PAGE_LIMIT)

    return request


def _tagged_after(tag: str, position: str) -> Callable[[Mastodon], Any]:
    def request(api: Mastodon) -> Any:
        return api.timeline_hashtag(tag, min_id=position, limit=PAGE_LIMIT)

    return request


def _tagged_before(tag: str, position: str | None) -> Callable[[Mastodon], Any]:
    def request(api: Mastodon) -> Any:
        return api.timeline_hashtag(tag, max_id=position, limit=PAGE_LIMIT)

    return request


def _with_edit_time(post: Post, at: datetime) -> Post:
    return replace(post, edited_at=at)


def _flag_then(flag: threading.Event, then: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        flag.set()
        then()

    return run
