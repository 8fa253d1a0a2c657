"""Campaign loading, promotion with credit, queue positions, and what SQLite stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from test_engine_support import OPENS, Shop, kinds, make_brand

from bot.schema import all_metadata
from config.database import create_engine
from orders.campaigns import CampaignOwnedError, StockBelowAllocatedError, load_campaigns
from orders.tables import campaigns, products

PRICE = 100_00


@pytest.fixture
def shop(db_url: str) -> Iterator[Shop]:
    s = Shop(db_url)
    yield s
    assert s.audit() == []
    s.close()


def test_loading_campaigns_again_changes_nothing_and_never_unsells(shop: Shop) -> None:
    def snapshot() -> list[tuple[object, ...]]:
        with shop.sessions() as s:
            return [tuple(r) for r in s.execute(select(campaigns))] + [
                tuple(r) for r in s.execute(select(products).order_by(products.c.sku))
            ]

    shop.apply(shop.post("alice", quantity=2), shop.post("bob"))
    before = snapshot()
    with shop.sessions.begin() as s:
        load_campaigns(s, [shop.brand], now=shop.now)
    assert snapshot() == before

    # More stock goes on sale; less than what is already allocated is refused.
    with shop.sessions.begin() as s:
        load_campaigns(s, [make_brand(stock={"PHONE-BLACK": 5, "PHONE-WHITE": 2})], now=shop.now)
    assert shop.stock()["stock"] == 5
    with pytest.raises(StockBelowAllocatedError), shop.sessions.begin() as s:
        load_campaigns(s, [make_brand(stock={"PHONE-BLACK": 2, "PHONE-WHITE": 2})], now=shop.now)
    assert shop.stock()["stock"] == 5


def test_another_brand_cannot_take_over_a_campaign_by_its_id(shop: Shop) -> None:
    """Campaign ids key the stock and the reservations: a second brand file reusing one is
    refused, and the first brand's campaign stays as it was."""
    shop.apply(shop.post("alice", quantity=2))
    other = make_brand(stock={"PHONE-BLACK": 50, "PHONE-WHITE": 50})
    other = other.model_copy(update={"brand": other.brand.model_copy(update={"id": "rival"})})
    refused = pytest.raises(CampaignOwnedError, match="'drop' belongs to brand 'acme'")
    with refused, shop.sessions.begin() as s:
        load_campaigns(s, [other], now=shop.now)
    with shop.sessions() as s:
        assert s.execute(select(campaigns.c.brand_id)).scalars().all() == ["acme"]
    assert shop.stock()["stock"] == 3


def test_a_promoted_buyer_with_credit_is_confirmed_at_once(shop: Shop) -> None:
    shop.topup("carol", PRICE)
    shop.apply(shop.post("alice", quantity=2), shop.post("bob"))
    outs = shop.apply(shop.post("carol"), shop.post("dave"))
    assert [(o.kind, o.queue_position) for o in outs] == [("waitlisted", 1), ("waitlisted", 2)]
    shop.advance(minutes=31)
    outs = shop.expire()
    assert [(o.kind, o.buyer, o.state) for o in outs] == [
        ("expired", "mastodon:alice", "expired"),
        ("expired", "mastodon:bob", "expired"),
        ("promoted", "mastodon:carol", "confirmed"),
        ("promoted", "mastodon:dave", "awaiting_payment"),
    ]
    assert shop.balance("carol") == 0
    dave = outs[-1]
    assert dave.hold_expires_at == shop.now + timedelta(minutes=30)
    assert dave.amount_due == PRICE


def test_status_shows_the_queue_moving_up(shop: Shop) -> None:
    shop.apply(shop.post("alice", quantity=2), shop.post("bob"))
    shop.apply(shop.post("carol"), shop.post("dave"), shop.post("erin"))
    [before] = shop.apply(shop.post("erin", "status"))
    assert (before.state, before.queue_position) == ("waitlisted", 3)
    shop.apply(shop.post("bob", "cancel", sku=None))  # carol moves up into bob's unit
    [after] = shop.apply(shop.post("erin", "status"))
    assert (after.state, after.queue_position) == ("waitlisted", 2)


def test_posts_for_an_unknown_campaign_are_recorded_and_ignored(shop: Shop) -> None:
    stray = replace(shop.post("alice"), campaign_id="nope")
    [out] = shop.apply(stray)
    assert (out.kind, out.reason) == ("ignored", "unknown_campaign")
    assert kinds(shop.apply(stray)) == ["duplicate"]


def test_sqlite_keeps_times_in_one_comparable_form(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'times.db'}"
    engine = create_engine(url)
    for metadata in all_metadata():
        metadata.create_all(engine)
    engine.dispose()
    shop = Shop(url)
    shop.now = OPENS + timedelta(minutes=1, microseconds=0)
    shop.apply(shop.post("alice", at=OPENS + timedelta(seconds=5)))
    with shop.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT posted_at, allocated_at, hold_expires_at FROM order_reservations")
        ).one()
        posted = conn.execute(text("SELECT posted_at, seen_at FROM order_posts")).one()
    # The form SQLAlchemy writes: naive UTC, always with microseconds, so text order is time
    # order and equal times compare equal.
    assert tuple(stored) == (
        "2026-03-01 12:00:05.000000",
        "2026-03-01 12:01:00.000000",
        "2026-03-01 12:31:00.000000",
    )
    assert tuple(posted) == ("2026-03-01 12:00:05.000000", "2026-03-01 12:01:00.000000")
    # A hold lapses exactly at its expiry.
    shop.now = OPENS + timedelta(minutes=31)
    assert kinds(shop.expire()) == ["expired"]
    shop.close()


def test_a_deletion_finds_its_post_in_any_campaign_of_the_brand(shop: Shop) -> None:
    brand = make_brand(campaign_id="first")
    second = brand.campaigns[0].model_copy(update={"id": "second"})
    shop.use(brand.model_copy(update={"campaigns": [brand.campaigns[0], second]}))
    order = replace(shop.post("alice"), campaign_id="second")
    assert kinds(shop.apply(order)) == ["payment_needed"]
    # The connector knows only the post id; the pipeline names the brand's first campaign.
    deletion = replace(shop.delete(order), buyer="", handle="", campaign_id="first")
    [out] = shop.apply(deletion)
    assert (out.kind, out.campaign_id, out.buyer) == ("cancelled", "second", "mastodon:alice")
    with shop.sessions() as s:
        row = s.execute(
            select(products).where(
                products.c.campaign_id == "second", products.c.sku == "PHONE-BLACK"
            )
        ).one()
    assert (row.allocated, row.released) == (0, 1)


def test_the_fast_outcome_constructor_builds_the_same_frozen_value() -> None:
    from dataclasses import FrozenInstanceError, fields

    from orders.outcomes import FIELDS, Outcome

    values = ("waitlisted", "x", "9", "x:1", "@a", "drop", 7, "PHONE-BLACK", 2, "waitlisted")
    rest = (None, 4, None, None, None, None, "ja", "unlisted")
    names = [f.name for f in fields(Outcome)]
    assert set(names) == FIELDS
    fast = Outcome.from_fields(dict(zip(names, (*values, *rest), strict=True)))
    assert fast == Outcome(*values, *rest)  # type: ignore[arg-type]
    assert hash(fast) == hash(Outcome(*values, *rest))  # type: ignore[arg-type]
    with pytest.raises(FrozenInstanceError):
        fast.kind = "expired"  # type: ignore[misc]
