"""The pipeline: signals in, one committed batch at a time, flushed by size or by time."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot import cursors
from bot.pipeline import Batcher, BatchReport, Envelope, Pipeline, Source, to_command
from bot.tables import outbox_messages
from config.brand import Brand
from config.database import session_factory
from config.loader import load_brand, parse_brand
from connectors.pacing import FakeClock
from connectors.post import Deletion, Post
from orders.audit import audit
from orders.campaigns import load_campaigns
from orders.tables import ALLOCATED_STATES, posts, reservations

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SOURCE = Source("demo", "mastodon")


@pytest.fixture
def brand() -> Brand:
    return load_brand(ROOT / "config" / "brands" / "demo.toml")


@pytest.fixture
def sessions(engine: Engine, brand: Brand) -> sessionmaker[Session]:
    factory = session_factory(engine)
    with factory.begin() as session:
        load_campaigns(session, [brand], now=START)
    return factory


def order(n: int, text: str = "@demophones #DemoPhone 64gb black", *, at: datetime = START) -> Post:
    return Post(
        platform="mastodon",
        post_id=str(1000 + n),
        author_id=str(500 + n),
        author_handle=f"fan{n}",
        created_at=at,
        text=text,
        hashtags=("demophone",),
        mentions=("demophones",),
        lang="en",
    )


def test_batcher_is_due_when_full_or_when_its_first_item_waited_long_enough() -> None:
    batcher: Batcher[int] = Batcher(3, timedelta(milliseconds=50))
    assert not batcher.due(START)
    assert batcher.seconds_left(START) is None
    batcher.add(1, START)
    batcher.add(2, START + timedelta(milliseconds=30))
    assert not batcher.due(START + timedelta(milliseconds=49))
    assert batcher.seconds_left(START + timedelta(milliseconds=30)) == pytest.approx(0.02)
    assert batcher.due(START + timedelta(milliseconds=50))
    batcher.add(3, START + timedelta(milliseconds=31))
    assert batcher.due(START + timedelta(milliseconds=31))  # full
    assert batcher.take() == [1, 2, 3]
    assert len(batcher) == 0 and not batcher.due(START + timedelta(seconds=9))


def test_a_batch_waits_for_its_time_then_commits_orders_replies_and_cursor_together(
    sessions: sessionmaker[Session], brand: Brand
) -> None:
    clock = FakeClock(START)
    pipeline = Pipeline(sessions, [brand], max_posts=100, max_wait_ms=50, clock=clock)
    pipeline.submit(order(1), SOURCE, cursor="n1")
    pipeline.submit(order(2, "@demophones #DemoPhone 128gb black"), SOURCE, cursor="n2")
    pipeline.submit(order(3, "@demophones #DemoPhone purple please"), SOURCE, cursor="n3")

    assert pipeline.pump(timeout=0) is True
    with sessions() as session:  # not due yet: nothing decided, nothing saved
        assert session.scalar(select(func.count()).select_from(posts)) == 0
        assert cursors.load(session, SOURCE.cursor_key) is None
    assert pipeline.depth() == 3

    clock.advance(0.05)
    pipeline.pump(timeout=0)
    assert pipeline.stats.batches == 1 and pipeline.stats.signals == 3
    with sessions() as session:
        states = dict(session.execute(select(reservations.c.post_id, reservations.c.state)).all())
        assert states == {"1001": "awaiting_payment", "1002": "awaiting_payment"}
        decisions = dict(session.execute(select(posts.c.post_id, posts.c.decision)).all())
        assert decisions["1003"] == "reject"
        assert cursors.load(session, SOURCE.cursor_key) == "n3"
        kinds = sorted(session.scalars(select(outbox_messages.c.kind)))
        assert kinds == ["payment_needed", "payment_needed", "rejected"]


def test_a_full_batch_flushes_at_once_and_each_batch_is_one_commit(
    sessions: sessionmaker[Session], brand: Brand, engine: Engine
) -> None:
    commits: list[int] = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    clock = FakeClock(START)
    pipeline = Pipeline(sessions, [brand], max_posts=4, max_wait_ms=10_000, clock=clock)
    for n in range(10):
        pipeline.submit(order(n), SOURCE, cursor=f"n{n}")
    reports = pipeline.drain()
    assert [r.signals for r in reports] == [4, 4, 2]
    assert len(commits) == 3
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(posts)) == 10
        assert cursors.load(session, SOURCE.cursor_key) == "n9"


def test_a_failed_batch_leaves_nothing_behind_not_even_its_cursor(
    sessions: sessionmaker[Session], brand: Brand, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = Pipeline(sessions, [brand], clock=FakeClock(START))

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("outbox down")

    monkeypatch.setattr("bot.outbox.queue", broken)
    pipeline.submit(order(1), SOURCE, cursor="n1")
    with pytest.raises(RuntimeError, match="outbox down"):
        pipeline.drain()
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(posts)) == 0
        assert session.scalar(select(func.count()).select_from(reservations)) == 0
        assert cursors.load(session, SOURCE.cursor_key) is None


def test_a_batch_that_lost_a_unique_key_race_is_retried_and_commits(
    sessions: sessionmaker[Session], brand: Brand, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL two workers can insert the same post at once: the loser's batch rolls back
    # with an IntegrityError and must be tried again, not stop the worker.
    from orders import engine as orders_engine

    real_apply = orders_engine.apply
    calls: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO order_posts", {}, Exception("duplicate key"))
        return real_apply(*args, **kwargs)

    sleeps: list[float] = []
    monkeypatch.setattr("bot.pipeline.engine.apply", racing)
    monkeypatch.setattr("bot.pipeline.time.sleep", sleeps.append)
    pipeline = Pipeline(sessions, [brand], clock=FakeClock(START))
    pipeline.submit(order(1), SOURCE, cursor="n1")
    [report] = pipeline.drain()

    assert len(calls) == 2 and len(sleeps) == 1
    assert [o.kind for o in report.outcomes] == ["payment_needed"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(reservations)) == 1
        assert cursors.load(session, SOURCE.cursor_key) == "n1"


def test_a_unique_key_error_that_persists_stops_after_the_bounded_retries(
    sessions: sessionmaker[Session], brand: Brand, monkeypatch: pytest.MonkeyPatch
) -> None:
    def always(*args: Any, **kwargs: Any) -> Any:
        raise IntegrityError("INSERT INTO order_posts", {}, Exception("duplicate key"))

    sleeps: list[float] = []
    monkeypatch.setattr("bot.pipeline.engine.apply", always)
    monkeypatch.setattr("bot.pipeline.time.sleep", sleeps.append)
    pipeline = Pipeline(sessions, [brand], clock=FakeClock(START), retries=2)
    pipeline.submit(order(1), SOURCE, cursor="n1")
    with pytest.raises(IntegrityError):
        pipeline.drain()
    assert len(sleeps) == 2
    with sessions() as session:
        assert cursors.load(session, SOURCE.cursor_key) is None


def status_of(n: int) -> Post:
    """Fan n asks where their order stands."""
    return replace(order(n, "@demophones #DemoPhone status"), post_id=str(900_000 + n))


def test_a_backlog_is_committed_in_batches_of_4000(
    sessions: sessionmaker[Session], brand: Brand
) -> None:
    # A storm's opening: 4,500 signals wait. The pipeline's defaults (the worker's) take 4,000
    # at once, redeliveries included; the rest (deletions, status asks, late orders) waits for
    # its time and is answered after the deletions' units went to the waitlist.
    clock = FakeClock(START)
    reports: list[BatchReport] = []
    pipeline = Pipeline(sessions, [brand], clock=clock, on_commit=reports.append)
    for n in range(3800):
        pipeline.submit(order(n), SOURCE, cursor=f"n{n}")
    for n in range(200):
        pipeline.submit(order(n), SOURCE, cursor=f"again{n}")
    for n in range(100):
        pipeline.submit(Deletion(platform="mastodon", post_id=str(1000 + n)), SOURCE)
    for n in range(300, 600):
        pipeline.submit(status_of(n), SOURCE)
    for n in range(3800, 3900):
        pipeline.submit(order(n), SOURCE, cursor="last")

    pipeline.pump(timeout=0)
    assert [r.signals for r in reports] == [4000] and pipeline.depth() == 500
    clock.advance(0.05)
    pipeline.pump(timeout=0)
    assert [r.signals for r in reports] == [4000, 500] and pipeline.depth() == 0

    stock = next(p.stock for p in brand.campaigns[0].products if p.sku == "DEMO-64-BLACK")
    assert stock == 150
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(posts)) == 3900 + 300
        states = dict(session.execute(select(reservations.c.post_id, reservations.c.state)).all())
        assert all(states[str(1000 + n)] == "cancelled" for n in range(100))
        allocated = [p for p, state in states.items() if state in ALLOCATED_STATES]
        # The deleted posts' units went to the first of the waitlist, in post order.
        assert sorted(allocated, key=int) == [str(1000 + n) for n in range(100, 250)]
        assert cursors.load(session, SOURCE.cursor_key) == "last"
        assert audit(session) == []
    duplicates = [o for o in reports[0].outcomes if o.kind == "duplicate"]
    assert len(duplicates) == 200
    places = {o.buyer: o.queue_position for o in reports[1].outcomes if o.kind == "status"}
    # Fan 250 is first in line once 100..249 were promoted; one unit each ahead.
    assert places == {f"mastodon:{500 + n}": n - 249 for n in range(300, 600)}


def test_edits_are_stamped_with_their_edit_time_and_deletes_cancel(
    sessions: sessionmaker[Session], brand: Brand
) -> None:
    clock = FakeClock(START)
    pipeline = Pipeline(sessions, [brand], clock=clock)
    bad = order(1, "@demophones #DemoPhone purple")
    edited_at = START + timedelta(seconds=30)
    fixed = Post(
        platform="mastodon",
        post_id=bad.post_id,
        author_id=bad.author_id,
        author_handle=bad.author_handle,
        created_at=START,
        edited_at=edited_at,
        text="@demophones #DemoPhone 64gb white",
        hashtags=("demophone",),
        mentions=("demophones",),
        lang="en",
    )
    command = to_command(Envelope(fixed, SOURCE), pipeline.directory, now=START)
    assert command.event == "edit" and command.posted_at == edited_at
    assert command.decision.decision == "order" and command.decision.sku == "DEMO-64-WHITE"

    pipeline.submit(bad, SOURCE)
    pipeline.submit(order(2), SOURCE)
    pipeline.drain()
    clock.advance(30)
    pipeline.submit(fixed, SOURCE)
    pipeline.submit(Deletion(platform="mastodon", post_id="1002", deleted_at=clock.now()), SOURCE)
    pipeline.drain()
    with sessions() as session:
        rows = session.execute(
            select(
                reservations.c.post_id,
                reservations.c.sku,
                reservations.c.state,
                reservations.c.posted_at,
            )
        ).all()
    by_post = {r.post_id: r for r in rows}
    assert by_post["1001"].sku == "DEMO-64-WHITE"
    assert by_post["1001"].posted_at == edited_at  # no queue jumping by editing
    assert by_post["1002"].state == "cancelled"


TWO_DROPS = """
[brand]
id = "twin"
name = "Twin"

[accounts.mastodon]
base_url = "http://127.0.0.1:9"
username = "twinshop"
token_env = "TWIN_TOKEN"

[[campaigns]]
id = "spring"
name = "Spring drop"
hashtag = "Spring"
currency = "USD"
opens_at = 2026-01-01T00:00:00Z
closes_at = 2027-01-01T00:00:00Z

[[campaigns.products]]
sku = "S"
name = "Spring phone"
price = 100
stock = 5

[[campaigns]]
id = "autumn"
name = "Autumn drop"
hashtag = "Autumn"
currency = "USD"
opens_at = 2026-01-01T00:00:00Z
closes_at = 2027-01-01T00:00:00Z

[[campaigns.products]]
sku = "A"
name = "Autumn phone"
price = 100
stock = 5
"""


def test_each_post_is_decided_by_the_grammar_of_the_campaign_it_names(engine: Engine) -> None:
    twin = parse_brand(TWO_DROPS)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        load_campaigns(session, [twin], now=START)
    pipeline = Pipeline(sessions, [twin], clock=FakeClock(START))
    source = Source("twin", "mastodon")

    def post(n: int, text: str, tag: str) -> Post:
        return Post(
            platform="mastodon",
            post_id=str(n),
            author_id=str(n),
            author_handle=f"f{n}",
            created_at=START,
            text=text,
            hashtags=(tag,),
            mentions=("twinshop",),
        )

    pipeline.submit(post(1, "@twinshop #Autumn", "autumn"), source)
    pipeline.submit(post(2, "@twinshop #Spring", "spring"), source)
    pipeline.submit(post(3, "@twinshop #Winter", "winter"), source)
    pipeline.drain()
    with sessions() as session:
        rows = dict(session.execute(select(posts.c.post_id, posts.c.campaign_id)).all())
        decisions = dict(session.execute(select(posts.c.post_id, posts.c.decision)).all())
        skus = dict(session.execute(select(reservations.c.post_id, reservations.c.sku)).all())
    assert rows == {"1": "autumn", "2": "spring", "3": "spring"}
    assert decisions["3"] == "ignore"  # addressed to no campaign: recorded once, ignored
    assert skus == {"1": "A", "2": "S"}


def test_a_connector_faster_than_the_database_waits_instead_of_filling_memory(
    sessions: sessionmaker[Session], brand: Brand
) -> None:
    pipeline = Pipeline(
        sessions, [brand], max_posts=2, max_wait_ms=10_000, clock=FakeClock(START), max_queued=3
    )
    submitted: list[int] = []
    third_in, all_in = threading.Event(), threading.Event()

    def connector() -> None:
        for n in range(6):
            pipeline.submit(order(n), SOURCE, cursor=f"n{n}")
            submitted.append(n)
            if n == 2:
                third_in.set()
        all_in.set()

    thread = threading.Thread(target=connector, daemon=True)
    thread.start()
    assert third_in.wait(5)
    assert not all_in.wait(0.2)  # the fourth signal waits for room
    assert pipeline.depth() == 3
    while not all_in.is_set() or pipeline.depth():
        pipeline.pump(timeout=0.05)
    thread.join(5)
    assert submitted == list(range(6))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(posts)) == 6


def test_a_post_whose_values_the_tables_cannot_hold_is_refused_and_the_batch_commits(
    sessions: sessionmaker[Session], brand: Brand, caplog: pytest.LogCaptureFixture
) -> None:
    """A hostile or broken server's over-long id, account, handle or language tag: on
    PostgreSQL it would fail its whole batch, and again after every restart."""
    pipeline = Pipeline(sessions, [brand], max_posts=100, clock=FakeClock(START))
    bad = {
        "post id longer than 64": replace(order(1), post_id="9" * 65),
        "account id longer than 191": replace(order(2), author_id="7" * 192),
        "account handle longer than 200": replace(order(3), author_handle="fan@" + "a" * 197),
        "language tag longer than 16": replace(order(4), lang="x" * 17),
        "post id longer than 64 characters": Deletion("mastodon", "8" * 65),
    }
    fine = [order(5), replace(order(6), post_id="6" * 64, author_handle="h" * 200, lang="l" * 16)]
    for n, signal in enumerate([*bad.values(), *fine]):
        pipeline.submit(signal, SOURCE, cursor=f"n{n}")
    with caplog.at_level("WARNING", logger="bot.pipeline"):
        reports = pipeline.drain()
    assert [r.signals for r in reports] == [2]
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == len(bad)
    for reason, message in zip(bad, refused, strict=True):
        assert reason in message
    with sessions() as session:
        stored = set(session.scalars(select(posts.c.post_id)))
        assert stored == {"1005", "6" * 64}
        assert cursors.load(session, SOURCE.cursor_key) == f"n{len(bad) + 1}"
