"""Reconciliation: a paid top-up whose webhook never came is credited once, by the same path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stripe_fake import Shop

from bot.jobs_payments import reconcile_payments
from orders.tables import reservations
from wallet.stripe_payments import StripeUnavailableError
from wallet.tables import transfers

BUYER = "mastodon:109348"


@pytest.fixture
def shop(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    s = Shop(db_url, tmp_path, monkeypatch)
    yield s
    s.close()


def _reconcile(shop: Shop, hours: float = 48) -> list[str]:
    report = reconcile_payments(
        shop.factory, shop.stripe, shop.brands, now=shop.clock.now, hours=hours
    )
    return report.applied


def test_lost_webhook_is_credited_once_even_when_it_arrives_afterwards(shop: Shop) -> None:
    shop.order(BUYER)
    session = shop.paid_checkout(BUYER, 29900)  # paid; the webhook is lost

    assert _reconcile(shop) == [session["id"]]
    assert shop.balance(BUYER) == 0
    assert shop.count(reservations, reservations.c.state == "confirmed") == 1

    late = shop.deliver(shop.fake.event("checkout.session.completed", session))
    assert late.json()["outcome"] == "already_credited"
    assert _reconcile(shop) == []
    assert shop.count(transfers, transfers.c.kind == "topup") == 1
    assert shop.audit() == []


def test_reconciliation_skips_what_webhooks_already_applied(shop: Shop) -> None:
    delivered = shop.paid_checkout(BUYER, 1000)
    shop.deliver(shop.fake.event("checkout.session.completed", delivered))
    lost = shop.paid_checkout("mastodon:2", 2000)
    unpaid = shop.fake.create_session(buyer="mastodon:3", amount=3000)
    shop.fake.pay(unpaid["id"], async_payment=True)  # completed, money not yet cleared
    shop.fake.create_session(buyer="mastodon:4", amount=4000)  # still open

    assert _reconcile(shop) == [lost["id"]]
    assert (shop.balance(BUYER), shop.balance("mastodon:2"), shop.balance("mastodon:3")) == (
        1000,
        2000,
        0,
    )


def test_reconciliation_pages_through_every_session(shop: Shop) -> None:
    ids = []
    for i in range(230):  # three pages of 100
        made = shop.fake.create_session(buyer=f"x:{i}", amount=500 + i)
        ids.append(shop.fake.pay(made["id"])["id"])
    assert sorted(_reconcile(shop)) == sorted(ids)
    lists = [url for method, url, _ in shop.fake.requests if method == "GET"]
    assert len(lists) == 3 and "starting_after" in lists[-1]
    assert shop.count(transfers, transfers.c.kind == "topup") == 230
    assert shop.audit() == []


def test_only_the_window_is_asked_for(shop: Shop) -> None:
    shop.paid_checkout(BUYER, 1000)
    shop.clock.advance(hours=3)
    shop.fake.now += 3 * 3600
    assert _reconcile(shop, hours=2) == []
    assert shop.balance(BUYER) == 0
    assert len(_reconcile(shop, hours=4)) == 1


def test_stripe_down_applies_nothing_and_says_so(shop: Shop) -> None:
    shop.paid_checkout(BUYER, 1000)
    shop.fake.faults = ["500"] * 3
    with pytest.raises(StripeUnavailableError):
        _reconcile(shop)
    assert shop.balance(BUYER) == 0
    assert _reconcile(shop) != []


def test_reconciliation_finishes_an_interrupted_cash_out(shop: Shop) -> None:
    from bot.jobs_payments import cash_out

    shop.deliver(shop.fake.event("checkout.session.completed", shop.paid_checkout(BUYER, 2000)))
    shop.fake.faults = ["timeout"] * 3
    report = cash_out(
        shop.factory, shop.stripe, buyer=BUYER, amount=800, currency="USD", now=shop.clock.now
    )
    assert report["pending"] == 800 and shop.fake.refunds == {}
    reconcile_payments(shop.factory, shop.stripe, shop.brands, now=shop.clock.now)
    assert [r["amount"] for r in shop.fake.refunds.values()] == [800]
    reconcile_payments(shop.factory, shop.stripe, shop.brands, now=shop.clock.now)
    assert len(shop.fake.refunds) == 1
    assert shop.balance(BUYER) == 1200 and shop.audit() == []


def test_a_page_failing_midway_applies_nothing(shop: Shop) -> None:
    for i in range(120):
        shop.fake.pay(shop.fake.create_session(buyer=f"x:{i}", amount=600)["id"])
    shop.fake.faults = ["ok", "500", "500", "500"]  # page 1 arrives, page 2 never does
    with pytest.raises(StripeUnavailableError):
        _reconcile(shop)
    assert shop.count(transfers) == 0
    assert len(_reconcile(shop)) == 120
