"""Reply bundles: a batch's many replies of one priority queued as one row, opened by the sender.

Bundling changes how replies wait, never what goes out or in which order: every test here
compares against the same replies queued one row each.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from fake_connectors import SendOnlyConnector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from bot.links import LinkSigner
from bot.outbox import (
    BUNDLE_MIN,
    PRIORITY,
    Composer,
    Sender,
    decode_facts,
    open_bundle,
    queue,
    queue_status,
)
from bot.schema import alembic_config, upgrade
from bot.tables import outbox_bundles, outbox_messages
from config.database import create_engine, session_factory
from config.loader import load_brand
from connectors.base import OutgoingMessage
from orders.outcomes import Outcome

ROOT = Path(__file__).resolve().parent.parent
BRAND = load_brand(ROOT / "config" / "brands" / "demo.toml")
SIGNER = LinkSigner(b"0123456789abcdef0123456789abcdef")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NEVER = 10**9  # a bundle_min no batch reaches: every reply is a row


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class Recording(SendOnlyConnector):
    platform = "mastodon"

    def __init__(self, clock: Clock) -> None:
        super().__init__("demo:mastodon", clock)
        self.sent: list[OutgoingMessage] = []

    def send(self, message: OutgoingMessage) -> str:
        self.sent.append(message)
        return str(len(self.sent))


def storm_batch(first: int, count: int) -> list[Outcome]:
    """A storm's batch: mostly waitlisted, some rejected, a few winners and questions."""
    kinds = ["waitlisted"] * 13 + ["rejected", "payment_needed", "confirmed"] * 2 + ["status"]
    outcomes = []
    for n in range(first, first + count):
        kind = kinds[n % len(kinds)]
        outcomes.append(
            Outcome(
                kind=kind,  # type: ignore[arg-type]
                platform="mastodon",
                post_id=str(100_000 + n),
                buyer=f"mastodon:{n % 37}",
                handle=f"fan{n % 37}@social.example",
                campaign_id="demo",
                reservation_id=None if kind == "status" else n + 1,
                sku="DEMO-64-BLACK",
                quantity=1,
                state="waitlisted" if kind == "waitlisted" else None,
                reason="sold_out" if kind == "rejected" else None,
                queue_position=n if kind == "waitlisted" else None,
                amount_due=29900 if kind == "payment_needed" else None,
                hold_expires_at=NOW + timedelta(minutes=15) if kind == "payment_needed" else None,
                lang=["en", "ja", "zh"][n % 3],
                visibility="public",
            )
        )
    return outcomes


def queue_at(engine: Engine, outcomes: list[Outcome], at: datetime, bundle_min: int) -> int:
    with session_factory(engine).begin() as session:
        return queue(session, outcomes, brand=BRAND, now=at, bundle_min=bundle_min)


def send_all(engine: Engine, clock: Clock) -> list[OutgoingMessage]:
    connector = Recording(clock)
    composer = Composer([BRAND], public_url="https://shop.example", signer=SIGNER)
    Sender(session_factory(engine), connector, composer=composer, clock=clock).drain()
    return connector.sent


def what_went_out(sent: list[OutgoingMessage]) -> list[tuple[object, ...]]:
    return [(m.idempotency_key, m.in_reply_to, m.visibility, m.lang, m.text) for m in sent]


def fresh(tmp_path: Path, name: str) -> Engine:
    url = f"sqlite:///{tmp_path / name}"
    upgrade(url)
    return create_engine(url)


def test_a_storms_replies_go_out_as_if_queued_one_row_each(engine: Engine, tmp_path: Path) -> None:
    bundled, plain = engine, fresh(tmp_path, "rows.db")
    batches = [(storm_batch(0, 400), NOW), (storm_batch(400, 400), NOW + timedelta(seconds=1))]
    for at_engine, bundle_min in ((bundled, BUNDLE_MIN), (plain, NEVER)):
        for outcomes, at in batches:
            assert queue_at(at_engine, outcomes, at, bundle_min) == 400
    with bundled.connect() as conn:
        sizes = dict(
            conn.execute(
                select(outbox_bundles.c.priority, func.sum(outbox_bundles.c.size)).group_by(
                    outbox_bundles.c.priority
                )
            ).all()
        )
        singles = conn.scalar(select(func.count()).select_from(outbox_messages))
    # Waitlisted (3), rejected (4), payment needed (0), confirmed (1) come in bundles; the 20
    # status answers of each batch are below BUNDLE_MIN and are rows straight away.
    assert sizes == {0: 80, 1: 80, 3: 520, 4: 80}
    assert singles == 40

    clock = Clock()
    clock.at = NOW + timedelta(seconds=2)
    ours = send_all(bundled, clock)
    clock.at = NOW + timedelta(seconds=2)
    theirs = send_all(plain, clock)
    plain.dispose()
    assert len(ours) == 800
    assert what_went_out(ours) == what_went_out(theirs)
    with bundled.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(outbox_bundles)) == 0
        states = conn.execute(select(outbox_messages.c.state).distinct()).scalars().all()
    assert states == ["sent"]


def test_a_bundle_waits_for_more_urgent_replies_queued_after_it(engine: Engine) -> None:
    waitlisted = [o for o in storm_batch(0, 200) if o.kind == "waitlisted"]
    assert queue_at(engine, waitlisted, NOW, BUNDLE_MIN) == len(waitlisted)
    winner = [o for o in storm_batch(200, 20) if o.kind == "payment_needed"][:1]
    queue_at(engine, winner, NOW + timedelta(seconds=5), BUNDLE_MIN)
    clock = Clock()
    clock.at = NOW + timedelta(seconds=10)
    sent = send_all(engine, clock)
    kinds = [m.idempotency_key.rsplit(":", 1)[1] for m in sent]
    assert kinds == ["payment_needed"] + ["waitlisted"] * len(waitlisted)


def test_a_bundle_is_opened_when_it_is_due_and_not_before(engine: Engine) -> None:
    queue_at(engine, storm_batch(0, 100), NOW + timedelta(minutes=5), 1)
    clock = Clock()
    assert send_all(engine, clock) == []
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(outbox_messages)) == 0
    clock.at = NOW + timedelta(minutes=5)
    assert len(send_all(engine, clock)) == 100


def test_a_batch_bundled_twice_goes_out_once(engine: Engine) -> None:
    batch = storm_batch(0, 120)
    queue_at(engine, batch, NOW, 1)
    queue_at(engine, batch, NOW, 1)  # a redelivered batch, or a job run twice
    queue_at(engine, batch[:10], NOW, NEVER)
    clock = Clock()
    clock.at = NOW + timedelta(seconds=1)
    sent = send_all(engine, clock)
    keys = [m.idempotency_key for m in sent]
    assert len(keys) == len(set(keys)) == 120


def test_the_queue_status_counts_bundled_replies(engine: Engine) -> None:
    queue_at(engine, storm_batch(0, 100), NOW - timedelta(minutes=1), BUNDLE_MIN)
    queue_at(engine, storm_batch(100, 20), NOW, NEVER)
    with session_factory(engine)() as session:
        (account,) = queue_status(session, now=NOW)
    # 65 waitlisted replies went as a bundle a minute ago; the rest are rows.
    assert account.depth == {0: 12, 1: 12, 3: 78, 4: 12, 5: 6}
    assert account.oldest_due == NOW - timedelta(minutes=1)
    assert account.failed == 0


def test_a_bundle_that_cannot_be_opened_holds_up_nothing_else(engine: Engine) -> None:
    queue_at(engine, [o for o in storm_batch(0, 100) if o.kind == "waitlisted"], NOW, 1)
    queue_at(engine, storm_batch(100, 20), NOW + timedelta(seconds=1), NEVER)
    with engine.begin() as conn:  # a reply no message row can hold
        conn.execute(outbox_bundles.update().values(replies='[["1:waitlisted", "mastodon"]]'))
    clock = Clock()
    clock.at = NOW + timedelta(seconds=2)
    sent = send_all(engine, clock)
    assert len(sent) == 20
    with engine.connect() as conn:
        (error,) = conn.execute(select(outbox_bundles.c.error)).scalars()
    assert error and "cannot be opened" in error
    with session_factory(engine)() as session:
        (account,) = queue_status(session, now=clock.at)
    assert account.failed == 65 and account.total == 0


def test_a_sender_waits_for_a_more_urgent_bundle_another_is_opening(pg_url: str) -> None:
    engine = create_engine(pg_url, pool_size=4)
    queue_at(engine, [o for o in storm_batch(0, 60) if o.kind == "waitlisted"][:5], NOW, NEVER)
    winners = [o for o in storm_batch(0, 400) if o.kind == "payment_needed"]
    queue_at(engine, winners, NOW + timedelta(seconds=1), 1)
    clock = Clock()
    clock.at = NOW + timedelta(seconds=2)
    connector = Recording(clock)
    composer = Composer([BRAND], public_url="https://shop.example", signer=SIGNER)
    sender = Sender(session_factory(engine), connector, composer=composer, clock=clock)
    factory = session_factory(engine)
    with factory.begin() as other:  # another sender, in the middle of opening the bundle
        bundle = other.execute(select(outbox_bundles).with_for_update()).one()
        waiting = threading.Thread(target=sender.send_one)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive(), "the sender did not wait for the bundle"
        assert connector.sent == [], "a less urgent reply went out first"
        open_bundle(other, bundle)
    waiting.join(timeout=30)
    sender.drain()
    engine.dispose()
    kinds = [m.idempotency_key.rsplit(":", 1)[1] for m in connector.sent]
    assert kinds == ["payment_needed"] * len(winners) + ["waitlisted"] * 5


def test_going_back_below_the_bundles_migration_keeps_every_reply(empty_db: str) -> None:
    upgrade(empty_db)
    engine = create_engine(empty_db)
    batch = storm_batch(0, 100)
    queue_at(engine, batch[:3], NOW - timedelta(minutes=1), NEVER)  # already messages
    queue_at(engine, batch, NOW, 1)
    command.downgrade(alembic_config(empty_db), "0003")
    with engine.connect() as conn:
        rows = conn.execute(select(outbox_messages).order_by(outbox_messages.c.id)).all()
    assert len(rows) == 100
    assert {r.state for r in rows} == {"queued"}
    assert {r.idempotency_key for r in rows} == {
        f"{o.reservation_id or o.post_id}:{o.kind}" for o in batch
    }
    due = {r.idempotency_key: r.due_at for r in rows}
    assert due[f"{batch[0].reservation_id}:waitlisted"] == NOW - timedelta(minutes=1)
    assert due[f"{batch[50].reservation_id}:waitlisted"] == NOW
    assert {r.kind: r.priority for r in rows} == {k: PRIORITY[k] for k in {o.kind for o in batch}}
    winner = next(r for r in rows if r.kind == "payment_needed")
    assert decode_facts(winner.facts)["hold_expires_at"] == NOW + timedelta(minutes=15)
    assert decode_facts(winner.facts)["amount_due"] == 29900
    upgrade(empty_db)
    clock = Clock()
    clock.at = NOW + timedelta(seconds=1)
    assert len(send_all(engine, clock)) == 100
    engine.dispose()
