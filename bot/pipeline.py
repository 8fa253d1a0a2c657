"""Signals from every connector, through one queue, into the engine: one commit per batch.

Every connector (stream or poll, Mastodon or X) hands its `Post` and `Deletion` values to
`Pipeline.submit`, tagged with the `Source` account and the cursor position after that signal.
The pipeline collects them into a batch that is flushed at `max_posts` signals or `max_wait`
after the first signal of the batch, whichever comes first, and then, in ONE transaction:

1. turns each signal into an `orders.commands.Command` (the parser decides each post against
   the grammars of its brand's campaigns; an edit carries `event="edit"` and its edit time, a
   deletion `event="delete"`);
2. `orders.engine.apply` decides the whole batch;
3. `bot.outbox.queue` queues the replies the outcomes call for;
4. `bot.cursors.save` advances each source's cursor to the last signal of the batch;
5. commits.

So a crash at any point either keeps the whole batch or none of it, and a restart resumes from
the saved cursors: the connectors backfill what the lost batch held. Step 1 is pure (`decide`),
so it may run elsewhere: `Pipeline.commit` does steps 2-5 for commands already decided (the
replay parses in a process of its own and commits here). Nothing here sleeps or
starts a thread by itself; `run()` is the loop a worker thread calls, and tests drive `submit`
and `flush` directly on an injected clock.
"""

from __future__ import annotations

import logging
import operator
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bot import cursors, outbox
from config.brand import Brand, Campaign
from connectors.base import Sink
from connectors.pacing import Clock, SystemClock
from connectors.post import Deletion, Post, Signal
from orders import engine
from orders.commands import Command, Decision
from orders.outcomes import Outcome
from orders.parser import Grammar, compile_grammar, parse
from orders.tables import posts as post_rows
from orders.tables import reservations as reservation_rows

log = logging.getLogger(__name__)
_campaign_of = operator.attrgetter("campaign_id")

T = TypeVar("T")

# A batch grows to this size only when signals wait (a storm's opening, a backfill after a
# gap); a quiet stream's batches flush by time, at any size. A larger one pays its fixed costs
# over more posts: about fifteen statements and a commit, and on PostgreSQL 15 each COPY's
# bookkeeping for the up to 1,000 rows it buffers, whatever its size. With 4,000 the storm
# took 10% (SQLite) and 17% (PostgreSQL) less time than with 1,000 (`docs/benchmarks.md`,
# the batch round).
DEFAULT_MAX_POSTS = 4000
DEFAULT_MAX_WAIT_MS = 50
DEFAULT_MAX_QUEUED = 50_000  # signals waiting for a batch: bounded memory


@dataclass(frozen=True, slots=True)
class Source:
    """One brand account on one platform: where signals come from and whose cursor moves."""

    brand_id: str
    platform: str
    feed: str = ""  # connectors.base.MENTIONS, or a hashtag feed such as "#demophone"

    @property
    def cursor_key(self) -> str:
        """The key `bot.cursors` stores this feed's position under (`demo:mastodon` for the
        account's mentions, `demo:mastodon#demophone` for its hashtag feed)."""
        return f"{self.brand_id}:{self.platform}{self.feed}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A signal as it waits in the queue: where it came from and the cursor after it."""

    signal: Signal
    source: Source
    cursor: str | None = None


class Batcher(Generic[T]):
    """Collects items into batches of at most `max_items`, due `max_wait` after the first item.

    Pure bookkeeping on times the caller passes in, so a test can step it with a fake clock.
    """

    def __init__(self, max_items: int, max_wait: timedelta) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.max_wait = max_wait
        self._items: list[T] = []
        self._started: datetime | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, now: datetime) -> None:
        if not self._items:
            self._started = now
        self._items.append(item)

    def full(self) -> bool:
        return len(self._items) >= self.max_items

    def due(self, now: datetime) -> bool:
        """Whether the batch should be flushed now: full, or its first item waited long enough."""
        if not self._items:
            return False
        if self.full():
            return True
        assert self._started is not None
        return now - self._started >= self.max_wait

    def seconds_left(self, now: datetime) -> float | None:
        """Seconds until the batch is due by time; None when empty (nothing to wait for)."""
        if not self._items or self._started is None:
            return None
        return max(0.0, (self._started + self.max_wait - now).total_seconds())

    def take(self) -> list[T]:
        items, self._items, self._started = self._items, [], None
        return items


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one committed batch did (for logs, the live view and tests)."""

    signals: int
    outcomes: tuple[Outcome, ...]
    cursors: dict[str, str]
    committed_at: datetime
    seconds: float


class CampaignDirectory:
    """The brands the worker serves, with one compiled grammar per campaign."""

    def __init__(self, brands: Iterable[Brand]) -> None:
        self.brands: dict[str, Brand] = {}
        self.grammars: dict[str, list[tuple[Campaign, Grammar]]] = {}
        self.brand_of_campaign: dict[str, Brand] = {}
        for brand in brands:
            self.brands[brand.brand.id] = brand
            self.grammars[brand.brand.id] = [
                (c, compile_grammar(brand, c)) for c in brand.campaigns
            ]
            for campaign in brand.campaigns:
                self.brand_of_campaign[campaign.id] = brand

    def decide(self, post: Post, brand_id: str) -> tuple[Campaign, Decision]:
        """The campaign a post is addressed to and the parser's decision about it.

        A post addressed to none of the brand's campaigns is judged against the first one (it
        is then an `ignore`, recorded so the post is decided exactly once).
        """
        grammars = self.grammars[brand_id]
        first: tuple[Campaign, Decision] | None = None
        for campaign, grammar in grammars:
            decision = parse(post, grammar)
            if not (decision.decision == "ignore" and decision.reason == "not_addressed"):
                return campaign, decision
            if first is None:
                first = (campaign, decision)
        assert first is not None
        return first


def to_command(envelope: Envelope, directory: CampaignDirectory, *, now: datetime) -> Command:
    """One queued signal as the engine's input."""
    signal = envelope.signal
    brand_id = envelope.source.brand_id
    if isinstance(signal, Deletion):
        campaign = directory.brands[brand_id].campaigns[0]
        return Command(
            platform=signal.platform,
            post_id=signal.post_id,
            buyer="",
            handle="",
            posted_at=signal.deleted_at or now,
            decision=Decision(decision="ignore", reason="deleted"),
            campaign_id=campaign.id,
            event="delete",
        )
    campaign, decision = directory.decide(signal, brand_id)
    return Command(
        platform=signal.platform,
        post_id=signal.post_id,
        buyer=signal.buyer,
        handle=signal.author_handle,
        posted_at=signal.effective_at,
        decision=decision,
        campaign_id=campaign.id,
        event="edit" if signal.edited_at is not None else "post",
        visibility=signal.visibility,
    )


# The longest values the engine's tables take (`orders.tables`).
def _length(column: ColumnElement[Any]) -> int:
    length = getattr(column.type, "length", None)
    assert isinstance(length, int), column
    return length


_POST_ID_MAX = _length(post_rows.c.post_id)
_BUYER_MAX = _length(reservation_rows.c.buyer)
_HANDLE_MAX = _length(reservation_rows.c.handle)
_LANG_MAX = _length(reservation_rows.c.lang)


def refusal(signal: Signal) -> str | None:
    """Why the engine could not store `signal`, or None. No platform sends such values; a
    hostile or broken server might, and the database would refuse the whole batch with it,
    again after every restart (PostgreSQL; SQLite would store them whole)."""
    if len(signal.post_id) > _POST_ID_MAX:
        return f"post id longer than {_POST_ID_MAX} characters"
    if isinstance(signal, Post):
        if len(signal.buyer) > _BUYER_MAX:
            return f"account id longer than {_BUYER_MAX - len(signal.platform) - 1} characters"
        if len(signal.author_handle) > _HANDLE_MAX:
            return f"account handle longer than {_HANDLE_MAX} characters"
        if isinstance(signal.lang, str) and len(signal.lang) > _LANG_MAX:
            return f"language tag longer than {_LANG_MAX} characters"
    return None


def decide(
    batch: Sequence[Envelope], directory: CampaignDirectory, *, now: datetime
) -> tuple[list[Command], dict[str, str]]:
    """The parse step of a batch: one command per signal, and each source's cursor after it.

    A signal the engine could not store (`refusal`) is left out with a warning that says why;
    its cursor still moves past it. Pure (no database), so it can run in another process than
    the commit.
    """
    commands: list[Command] = []
    for env in batch:
        problem = refusal(env.signal)
        if problem is None:
            commands.append(to_command(env, directory, now=now))
        else:
            log.warning(
                "%s post %.80r refused: %s", env.signal.platform, env.signal.post_id, problem
            )
    positions: dict[str, str] = {}
    for env in batch:
        if env.cursor is not None:
            positions[env.source.cursor_key] = env.cursor
    return commands, positions


_STOP = object()


@dataclass
class PipelineStats:
    """Running totals, read by the live view and the worker's log lines."""

    signals: int = 0
    batches: int = 0
    outcomes: int = 0
    last_batch_seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Signals in, decided batches committed. Thread-safe `submit`; one consumer runs `run()`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        brands: Sequence[Brand],
        *,
        max_posts: int = DEFAULT_MAX_POSTS,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        clock: Clock | None = None,
        on_commit: Callable[[BatchReport], None] | None = None,
        retries: int = 5,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self._sessions = sessions
        self.directory = CampaignDirectory(brands)
        self._clock: Clock = clock or SystemClock()
        # Bounded, so a connector reading faster than batches commit waits (backpressure on its
        # socket) instead of holding a whole storm in memory.
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued)
        self._batcher: Batcher[Envelope] = Batcher(max_posts, timedelta(milliseconds=max_wait_ms))
        self._on_commit = on_commit
        self._retries = retries
        self._lock = threading.Lock()
        self.stats = PipelineStats()

    # -- input -------------------------------------------------------------------------------

    def submit(self, signal: Signal, source: Source, cursor: str | None = None) -> None:
        """Queue one signal (any thread). `cursor` is the source's position after it. Blocks
        while `max_queued` signals wait, until the consumer catches up."""
        self._queue.put(Envelope(signal, source, cursor))

    def sink(self, source: Source) -> Sink:
        """A callable a connector can push `(signal, cursor, feed)` into for `source`."""
        feeds = {source.feed: source}

        def _sink(signal: Signal, cursor: str | None = None, feed: str = source.feed, /) -> None:
            fed = feeds.get(feed)
            if fed is None:
                fed = feeds.setdefault(feed, replace(source, feed=feed))
            self.submit(signal, fed, cursor)

        return _sink

    def stop(self) -> None:
        """Ask `run()` to flush what it holds and return (any thread)."""
        self._queue.put(_STOP)

    def depth(self) -> int:
        """Signals waiting: queued plus in the open batch."""
        return self._queue.qsize() + len(self._batcher)

    # -- the loop ----------------------------------------------------------------------------

    def pump(self, *, timeout: float | None = 0.0) -> bool:
        """Move queued signals into the batch, flushing whenever it is due.

        Waits at most `timeout` seconds (None: until a signal or the batch is due) for the
        first signal. Returns False once `stop()` was seen (after flushing), True otherwise.
        """
        wait = timeout
        while True:
            now = self._clock.now()
            left = self._batcher.seconds_left(now)
            if left is not None:
                wait = left if wait is None else min(wait, left)
            try:
                item = self._queue.get(block=wait is None or wait > 0, timeout=wait)
            except queue.Empty:
                item = None
            now = self._clock.now()
            if item is _STOP:
                self.flush()
                return False
            if isinstance(item, Envelope):
                self._batcher.add(item, now)
            if self._batcher.due(now):
                self.flush()
            if item is None:
                return True
            wait = 0.0

    def run(self, *, idle_timeout: float = 0.5) -> None:
        """Consume until `stop()`; the last batch is committed before this returns."""
        while self.pump(timeout=idle_timeout):
            pass

    def drain(self) -> list[BatchReport]:
        """Take everything queued now and commit it in batches (tests, the replay path)."""
        reports: list[BatchReport] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Envelope):
                self._batcher.add(item, self._clock.now())
                if self._batcher.full():
                    reports.extend(self._flush_reports())
        reports.extend(self._flush_reports())
        return reports

    def flush(self) -> BatchReport | None:
        """Commit the open batch now, if there is one."""
        reports = self._flush_reports()
        return reports[0] if reports else None

    def _flush_reports(self) -> list[BatchReport]:
        with self._lock:
            batch = self._batcher.take()
            if not batch:
                return []
            report = self._commit_with_retry(batch)
        log.debug(
            "batch: %d signal(s), %d outcome(s) in %.1f ms",
            report.signals,
            len(report.outcomes),
            report.seconds * 1000,
        )
        self.stats.signals += report.signals
        self.stats.batches += 1
        self.stats.outcomes += len(report.outcomes)
        self.stats.last_batch_seconds = report.seconds
        for outcome in report.outcomes:
            self.stats.by_kind[outcome.kind] = self.stats.by_kind.get(outcome.kind, 0) + 1
        if self._on_commit is not None:
            try:
                self._on_commit(report)
            except Exception:
                log.exception("batch observer failed; the batch itself is committed")
        return [report]

    def _commit_with_retry(self, batch: Sequence[Envelope]) -> BatchReport:
        return self._retrying(lambda: self.process(batch), len(batch))

    def _retrying(self, attempt_batch: Callable[[], BatchReport], size: int) -> BatchReport:
        # A lock timeout, a serialization failure, or a unique key another worker claimed first
        # (two workers inserting the same post on PostgreSQL) leaves nothing behind: the
        # transaction rolled back, so the same batch is simply tried again, and the retry sees
        # the other worker's rows. Anything else is a bug: it propagates, the worker dies, and
        # a restart backfills from the last saved cursors.
        delay = 0.05
        for attempt in range(self._retries + 1):
            try:
                return attempt_batch()
            except (OperationalError, IntegrityError):
                if attempt == self._retries:
                    raise
                log.warning("batch of %d failed transiently; retrying", size, exc_info=True)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def process(self, batch: Sequence[Envelope]) -> BatchReport:
        """Decide and commit one batch in ONE transaction."""
        started = time.perf_counter()
        now = self._clock.now()
        commands, positions = decide(batch, self.directory, now=now)
        return self._commit_once(commands, positions, now=now, started=started)

    def commit(
        self,
        commands: Sequence[Command],
        positions: Mapping[str, str] | None = None,
        *,
        now: datetime,
    ) -> BatchReport:
        """Commit commands decided elsewhere (see `decide`) in ONE transaction, judged at `now`.

        Steps 2-5 of a batch, retried like a batch from `run()` when the database fails
        transiently. `positions` are the cursors to save (source key -> position).
        """
        saved = dict(positions or {})
        return self._retrying(
            lambda: self._commit_once(commands, saved, now=now, started=time.perf_counter()),
            len(commands),
        )

    def _commit_once(
        self,
        commands: Sequence[Command],
        positions: dict[str, str],
        *,
        now: datetime,
        started: float,
    ) -> BatchReport:
        with self._sessions() as session, session.begin():
            outcomes = engine.apply(session, commands, now=now)
            for brand, brand_outcomes in self._by_brand(outcomes):
                outbox.queue(session, brand_outcomes, brand=brand, now=now)
            for key, position in positions.items():
                cursors.save(session, key, position, at=now)
        return BatchReport(
            signals=len(commands),
            outcomes=tuple(outcomes),
            cursors=positions,
            committed_at=now,
            seconds=time.perf_counter() - started,
        )

    def _by_brand(self, outcomes: Sequence[Outcome]) -> list[tuple[Brand, list[Outcome]]]:
        campaigns = set(map(_campaign_of, outcomes))
        if len(campaigns) == 1:
            # A storm's batch is all one campaign: one lookup, not one per outcome.
            brand = self.directory.brand_of_campaign.get(next(iter(campaigns)))
            if brand is not None:
                return [(brand, list(outcomes))]
        grouped: dict[str, tuple[Brand, list[Outcome]]] = {}
        for outcome in outcomes:
            brand = self.directory.brand_of_campaign.get(outcome.campaign_id)
            if brand is None:
                log.error("outcome for unknown campaign %r dropped", outcome.campaign_id)
                continue
            grouped.setdefault(brand.brand.id, (brand, []))[1].append(outcome)
        return list(grouped.values())
