"""`flashtag worker`: connectors streaming into the pipeline, and outbox senders beside them.

One worker serves every platform account named in the brand files:

- each account gets a connector that streams (backfilling from its saved cursors first: its
  mentions, and its campaign hashtag's feed when the brand file streams the hashtag) into the
  one `bot.pipeline.Pipeline`, whose single consumer thread commits batch after batch;
- each account gets an outbox sender that delivers the replies those batches queued.

Stopping (SIGTERM, SIGINT or `stop()`) is graceful: the connectors stop first, so nothing new
arrives; the pipeline commits what it holds, cursors included; then the senders finish the
message in hand. A worker killed without warning loses nothing either: uncommitted signals were
never acknowledged by a cursor, so the next start backfills them.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import FrameType

from sqlalchemy.orm import Session, sessionmaker

from bot import cursors
from bot.outbox import Composer, Sender
from bot.pipeline import DEFAULT_MAX_POSTS, BatchReport, Pipeline, Source
from config.brand import Brand, normalize_hashtag
from connectors.base import AuthFailed, Connector, hashtag_feed
from connectors.mastodon import MastodonConnector
from connectors.pacing import Clock, SystemClock
from connectors.twitter import connector_for_account
from orders.campaigns import load_campaigns

log = logging.getLogger(__name__)


class MissingTokenError(RuntimeError):
    """A brand account names a token variable that is not set."""


def _token(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise MissingTokenError(f"environment variable {name} (a platform token) is not set")
    return value


def hashtag_opening(brand: Brand, hashtag: str) -> datetime:
    """When the first of the brand's campaigns on `hashtag` opens: where a hashtag feed with no
    saved cursor starts, so posts made after the sale opened are never lost, and posts made
    before it are not answered."""
    tag = normalize_hashtag(hashtag)
    return min(c.opens_at for c in brand.campaigns if c.tag == tag)


def connectors_for(
    brand: Brand, *, clock: Clock, initial: dict[str, str | None]
) -> list[Connector]:
    """The connectors for every account of `brand` (no I/O: `initialize()` opens them).

    `initial` holds the saved cursors by key (`bot.cursors.load_all`); the campaign hashtag is
    the first campaign's.
    """
    found: list[Connector] = []
    hashtag = brand.campaigns[0].hashtag
    since = hashtag_opening(brand, hashtag)
    mastodon = brand.accounts.mastodon
    if mastodon is not None and mastodon.stream:
        source = Source(brand.brand.id, "mastodon")
        tagged = replace(source, feed=hashtag_feed(hashtag)) if mastodon.hashtag_stream else None
        found.append(
            MastodonConnector(
                account_key=source.cursor_key,
                base_url=mastodon.base_url,
                access_token=_token(mastodon.token_env),
                hashtag=hashtag if tagged is not None else None,
                clock=clock,
                initial_cursor=initial.get(source.cursor_key),
                initial_hashtag_cursor=initial.get(tagged.cursor_key) if tagged else None,
                hashtag_since=since,
            )
        )
    x = brand.accounts.x
    if x is not None:
        source = Source(brand.brand.id, "x")
        tagged = replace(source, feed=hashtag_feed(hashtag)) if x.filtered_stream else None
        found.append(
            connector_for_account(
                x,
                account_key=source.cursor_key,
                clock=clock,
                initial_cursor=initial.get(source.cursor_key),
                hashtag=hashtag if tagged is not None else None,
                initial_hashtag_cursor=initial.get(tagged.cursor_key) if tagged else None,
                hashtag_since=since,
            )
        )
    return found


@dataclass
class _Running:
    connector: Connector
    source: Source
    thread: threading.Thread | None = None
    sender: Sender | None = None
    sender_thread: threading.Thread | None = None


@dataclass
class WorkerHealth:
    """What went wrong in a background thread (the process exits non-zero when set)."""

    errors: list[str] = field(default_factory=list)


ConnectorFactory = Callable[[Brand, Clock, dict[str, str | None]], list[Connector]]


class Worker:
    """The worker process's parts, startable and stoppable from a test or from `flashtag run`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        brands: Sequence[Brand],
        *,
        clock: Clock | None = None,
        max_posts: int = DEFAULT_MAX_POSTS,
        max_wait_ms: float = 50,
        send: bool = True,
        sender_idle_seconds: float = 1.0,
        connector_factory: ConnectorFactory | None = None,
        on_commit: Callable[[BatchReport], None] | None = None,
        public_url: str | None = None,
    ) -> None:
        self._sessions = sessions
        self.brands = list(brands)
        self._clock: Clock = clock or SystemClock()
        self._send = send
        self._idle = sender_idle_seconds
        # One composer for every sender: it writes each reply as it goes out.
        self._composer = Composer(self.brands, public_url=public_url)
        self._senders_stop = threading.Event()
        self._factory = connector_factory or (
            lambda brand, clock, initial: connectors_for(brand, clock=clock, initial=initial)
        )
        self.pipeline = Pipeline(
            sessions,
            self.brands,
            max_posts=max_posts,
            max_wait_ms=max_wait_ms,
            clock=self._clock,
            on_commit=self._committed(on_commit),
        )
        self._running: list[_Running] = []
        self._pipeline_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.health = WorkerHealth()

    def _committed(
        self, observer: Callable[[BatchReport], None] | None
    ) -> Callable[[BatchReport], None]:
        def on_commit(report: BatchReport) -> None:
            if observer is not None:
                observer(report)

        return on_commit

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load campaigns, open every account, and start streaming, committing and sending."""
        with self._sessions() as session, session.begin():
            load_campaigns(session, self.brands, now=self._clock.now())
        with self._sessions() as session:
            initial: dict[str, str | None] = dict(cursors.load_all(session))
        for brand in self.brands:
            for connector in self._factory(brand, self._clock, initial):
                source = Source(brand.brand.id, connector.platform)
                self._running.append(_Running(connector, source))

        self._pipeline_thread = threading.Thread(
            target=self._guard("pipeline", self.pipeline.run), name="pipeline", daemon=True
        )
        self._pipeline_thread.start()
        for running in self._running:
            running.connector.initialize()
            sink = self.pipeline.sink(running.source)
            running.thread = threading.Thread(
                target=self._guard(
                    f"stream {running.source.cursor_key}",
                    functools.partial(running.connector.stream, sink),
                ),
                name=f"stream-{running.source.cursor_key}",
                daemon=True,
            )
            running.thread.start()
            if self._send:
                running.sender = Sender(
                    self._sessions, running.connector, composer=self._composer, clock=self._clock
                )
                sender = running.sender
                running.sender_thread = threading.Thread(
                    target=self._guard(
                        f"sender {running.source.cursor_key}",
                        functools.partial(sender.run, self._senders_stop, idle_seconds=self._idle),
                    ),
                    name=f"sender-{running.source.cursor_key}",
                    daemon=True,
                )
                running.sender_thread.start()
        log.info(
            "worker started: %d account(s): %s",
            len(self._running),
            ", ".join(r.source.cursor_key for r in self._running),
        )

    def _guard(self, what: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except AuthFailed as exc:
                self.health.errors.append(f"{what}: {exc}")
                log.error("%s: the platform refused our token (%s); stopping", what, exc)
                self._stopping.set()
            except Exception as exc:
                self.health.errors.append(f"{what}: {exc!r}")
                log.exception("%s failed; stopping the worker", what)
                self._stopping.set()

        return run

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: stop listening, commit the open batch (cursors too), stop the senders."""
        for running in self._running:
            running.connector.shutdown()
        for running in self._running:
            if running.thread is not None:
                running.thread.join(timeout)
        self.pipeline.stop()
        if self._pipeline_thread is not None:
            self._pipeline_thread.join(timeout)
        self._senders_stop.set()
        for running in self._running:
            if running.sender_thread is not None:
                running.sender_thread.join(timeout)
        self._stopping.set()
        log.info(
            "worker stopped: %d signal(s) in %d batch(es)",
            self.pipeline.stats.signals,
            self.pipeline.stats.batches,
        )

    def request_stop(self) -> None:
        """Ask `wait()` to return (signal handlers call this; `stop()` does the work)."""
        self._stopping.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker stops (or a background part fails); True if it did."""
        return self._stopping.wait(timeout)

    @property
    def connectors(self) -> list[Connector]:
        return [r.connector for r in self._running]

    @property
    def senders(self) -> list[Sender]:
        return [r.sender for r in self._running if r.sender is not None]


def install_stop_signals(request_stop: Callable[[], None]) -> None:
    """SIGTERM (what Procfile hosts send) and SIGINT call `request_stop` (which must not block:
    the main thread then does the graceful stop)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping gracefully", signum)
        request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
