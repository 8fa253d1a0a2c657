"""On PostgreSQL a top-up settling a buyer never deadlocks a batch ordering for that buyer.

`apply` locks stock rows, then wallets. The webhook's `apply_topup` credits a wallet and settles
the buyer's reservations in one transaction; unless it takes the stock locks first, the two lock
in opposite orders and PostgreSQL aborts one of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from test_engine_support import Shop, make_brand

from bot.jobs_payments import apply_topup
from orders.commands import Command
from wallet.stripe_payments import PaidSession, apply_paid_session

ROUNDS = 25


@pytest.fixture
def shop(pg_url: str) -> Iterator[Shop]:
    s = Shop(pg_url, make_brand(stock={"PHONE-BLACK": 500}, limit=10))
    yield s
    s.close()


@pytest.mark.postgres
def test_topups_and_orders_for_one_buyer_race_without_deadlock(shop: Shop) -> None:
    errors: list[BaseException] = []
    for n in range(ROUNDS):
        fan = f"racer{n}"
        shop.apply(shop.post(fan))  # awaiting payment: no credit yet
        with shop.sessions.begin() as s:  # credit enough for a second phone, not yet settled
            pre = PaidSession(
                session_id=f"pre_{n}",
                buyer=shop.buyer(fan),
                campaign_id="drop",
                amount=100_00,
                currency="EUR",
                payment_intent=f"pi_pre_{n}",
                topup_key=None,
            )
            apply_paid_session(s, pre, at=shop.now, via="webhook")
        second = shop.post(fan)
        paid = PaidSession(
            session_id=f"cs_{n}",
            buyer=shop.buyer(fan),
            campaign_id="drop",
            amount=100_00,
            currency="EUR",
            payment_intent=f"pi_{n}",
            topup_key=None,
        )
        start = threading.Barrier(2)

        def order(start: threading.Barrier = start, second: Command = second) -> None:
            start.wait()
            try:
                shop.apply(second)
            except BaseException as exc:
                errors.append(exc)

        def topup(start: threading.Barrier = start, paid: PaidSession = paid) -> None:
            start.wait()
            try:
                with shop.sessions.begin() as s:
                    apply_topup(s, paid, brands=[shop.brand], now=shop.now, via="webhook")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=order), threading.Thread(target=topup)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert errors == []
    assert shop.audit() == []
    for n in range(ROUNDS):  # both phones paid: the pre-credit and the top-up cover them
        assert [state for _, state, _ in shop.states(f"racer{n}")] == ["confirmed", "confirmed"]
