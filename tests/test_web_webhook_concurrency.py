"""On PostgreSQL, Stripe's parallel deliveries and a reconciliation run racing the webhook
still credit each payment once (the web process serves requests on many threads)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from stripe_fake import Shop, signed

from bot.jobs_payments import reconcile_payments
from wallet.tables import transfers


@pytest.fixture
def shop(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    s = Shop(pg_url, tmp_path, monkeypatch)
    yield s
    s.close()


@pytest.mark.postgres
def test_parallel_deliveries_and_reconciliation_credit_each_payment_once(shop: Shop) -> None:
    from bot.web import webhook

    rng = random.Random(7)
    buyers = [f"mastodon:{i}" for i in range(5)]
    events = []
    for i in range(40):
        made = shop.fake.create_session(buyer=buyers[i % 5], amount=1000 + i, campaign="drop")
        obj = shop.fake.pay(made["id"])
        events.append(shop.fake.event("checkout.session.completed", obj))
        if i % 4 == 0:  # a second, distinct event about the same payment
            events.append(shop.fake.event("checkout.session.async_payment_succeeded", obj))
    deliveries = [signed(e) for e in events * 3]
    rng.shuffle(deliveries)
    site = shop.app.state.site

    def deliver(item: tuple[bytes, dict[str, str]]) -> int:
        body, headers = item
        return webhook(site, body, headers["Stripe-Signature"]).status_code

    def reconcile() -> int:
        report = reconcile_payments(shop.factory, shop.stripe, shop.brands, now=shop.clock.now)
        return len(report.applied)

    with ThreadPoolExecutor(max_workers=8) as pool:
        racing = pool.submit(reconcile)
        codes = list(pool.map(deliver, deliveries))
        reconciled = racing.result()

    assert set(codes) == {200}
    assert 0 <= reconciled <= 40
    assert shop.count(transfers, transfers.c.kind == "topup") == 40
    expected = {b: sum(1000 + i for i in range(40) if i % 5 == n) for n, b in enumerate(buyers)}
    assert {b: shop.balance(b) for b in buyers} == expected
    assert shop.audit() == []
