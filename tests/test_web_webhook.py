"""`POST /stripe/webhook`: only Stripe's signed events count, each once, in any order.

Deliveries are signed with `stripe.WebhookSignature.generate_signature_header` (Stripe's v1
scheme) and go through the real app (FastAPI TestClient), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from stripe_fake import Shop

from bot.tables import outbox_messages
from orders.tables import reservations
from wallet.stripe_tables import stripe_events
from wallet.tables import transfers

BUYER = "mastodon:109348"


@pytest.fixture
def shop(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    s = Shop(db_url, tmp_path, monkeypatch)
    yield s
    s.close()


def _state(shop: Shop, buyer: str) -> list[str]:
    with shop.factory() as session:
        query = select(reservations.c.state).where(reservations.c.buyer == buyer)
        return list(session.execute(query.order_by(reservations.c.id)).scalars())


def test_a_paid_top_up_credits_settles_and_queues_the_reply_in_one_go(shop: Shop) -> None:
    [outcome] = shop.order(BUYER)
    assert outcome.kind == "payment_needed" and _state(shop, BUYER) == ["awaiting_payment"]
    session = shop.paid_checkout(BUYER, 29900)

    response = shop.deliver(shop.fake.event("checkout.session.completed", session))

    assert response.status_code == 200 and response.json()["outcome"] == "credited"
    assert _state(shop, BUYER) == ["confirmed"]
    assert shop.balance(BUYER) == 0  # 299.00 in, 299.00 spent on the phone
    assert shop.count(outbox_messages, outbox_messages.c.idempotency_key.like("%:confirmed")) == 1
    assert shop.audit() == []


def test_unverified_deliveries_get_400_and_change_nothing(shop: Shop) -> None:
    from stripe_fake import signed

    shop.order(BUYER)
    event = shop.fake.event("checkout.session.completed", shop.paid_checkout(BUYER, 29900))
    body, headers = signed(event)
    forged_body = body.replace(BUYER.encode(), b"mastodon:666")  # says someone else paid
    attempts = {
        "wrong secret": signed(event, secret="whsec_attacker"),
        "empty secret": signed(event, secret=""),
        "stale (301 s)": signed(event, timestamp=int(time.time()) - 301),
        "no header": (body, {"Content-Type": "application/json"}),
        "garbage header": (body, {"Stripe-Signature": "t=abc,v1=zz"}),
        "v0 scheme only": (
            body,
            {"Stripe-Signature": headers["Stripe-Signature"].replace("v1=", "v0=")},
        ),
        "body changed": (forged_body, headers),
        "not json": (b"{oops", signed(event)[1]),
    }
    for name, (payload, sent_headers) in attempts.items():
        response = shop.http.post("/stripe/webhook", content=payload, headers=sent_headers)
        assert response.status_code == 400, name
    assert shop.count(stripe_events) == 0
    assert shop.balance(BUYER) == 0 and shop.balance("mastodon:666") == 0
    assert _state(shop, BUYER) == ["awaiting_payment"]
    assert shop.deliver(event).status_code == 200  # the genuine delivery still counts
    assert _state(shop, BUYER) == ["confirmed"]


def test_redelivered_and_replayed_events_credit_once(shop: Shop) -> None:
    event = shop.fake.event("checkout.session.completed", shop.paid_checkout(BUYER, 5000))
    first = shop.deliver(event)
    again = shop.deliver(event)  # Stripe's retry of the same event id
    replay = shop.deliver(event, timestamp=int(time.time()) - 200)  # captured and resent
    late_replay = shop.deliver(event, timestamp=int(time.time()) - 3600)
    assert first.json()["outcome"] == "credited"
    assert again.json()["duplicate"] and replay.json()["duplicate"]
    assert late_replay.status_code == 400
    assert shop.balance(BUYER) == 5000
    assert shop.count(stripe_events) == 1


def test_async_payment_events_in_either_order_credit_once(shop: Shop) -> None:
    shop.order(BUYER, sku="CASE")
    response = shop.http.get(f"/topup/{shop.token(BUYER)}", params={"amount": 1000})
    assert response.status_code in (200, 303)
    sid = max(shop.fake.sessions)
    completed_unpaid = shop.fake.event(
        "checkout.session.completed", shop.fake.pay(sid, async_payment=True)
    )
    succeeded = shop.fake.event(
        "checkout.session.async_payment_succeeded", shop.fake.settle_async(sid)
    )
    expired_late = shop.fake.event(
        "checkout.session.expired", dict(shop.fake.sessions[sid], status="expired")
    )

    assert shop.deliver(succeeded).json()["outcome"] == "credited"
    assert shop.deliver(completed_unpaid).json()["outcome"] == "unpaid"
    assert shop.deliver(expired_late).json()["outcome"] == "expired"
    assert shop.deliver(succeeded).json()["duplicate"]
    assert _state(shop, BUYER) == ["confirmed"]
    assert shop.balance(BUYER) == 0
    assert shop.audit() == []


def test_unpaid_completion_waits_for_the_money(shop: Shop) -> None:
    shop.order(BUYER, sku="CASE")
    shop.http.get(f"/topup/{shop.token(BUYER)}", params={"amount": 1000})
    sid = max(shop.fake.sessions)
    event = shop.fake.event("checkout.session.completed", shop.fake.pay(sid, async_payment=True))
    assert shop.deliver(event).json()["outcome"] == "unpaid"
    assert shop.balance(BUYER) == 0 and _state(shop, BUYER) == ["awaiting_payment"]


def test_unknown_event_types_are_acknowledged_and_ignored(shop: Shop) -> None:
    event = shop.fake.event("customer.created", {"id": "cus_test_1", "object": "customer"})
    response = shop.deliver(event)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert shop.count(stripe_events, stripe_events.c.outcome == "ignored") == 1


def test_a_dashboard_refund_debits_the_wallet(shop: Shop) -> None:
    session = shop.paid_checkout(BUYER, 5000)
    shop.deliver(shop.fake.event("checkout.session.completed", session))
    charge = shop.fake.refund_in_dashboard(session["id"], 2000)
    response = shop.deliver(shop.fake.event("charge.refunded", charge))
    assert response.json()["outcome"] == "debited:2000"
    assert shop.balance(BUYER) == 3000
    assert shop.audit() == []


def test_burst_of_1000_deliveries_of_200_sessions_credits_exactly_200_times(shop: Shop) -> None:
    rng = random.Random(20121030)
    buyers = [f"mastodon:{100000 + i}" for i in range(50)]
    paid_in: dict[str, int] = dict.fromkeys(buyers, 0)
    events = []
    for i in range(200):
        buyer = buyers[i % len(buyers)]
        amount = rng.randrange(500, 20000)
        obj = shop.fake.pay(
            shop.fake.create_session(buyer=buyer, amount=amount, campaign="drop")["id"]
        )
        events.append(shop.fake.event("checkout.session.completed", obj))
        paid_in[buyer] += amount
    deliveries = events + [rng.choice(events) for _ in range(800)]
    rng.shuffle(deliveries)

    outcomes = [shop.deliver(event).json() for event in deliveries]

    assert sum(1 for o in outcomes if o.get("outcome") == "credited") == 200
    assert sum(1 for o in outcomes if o.get("duplicate")) == 800
    assert shop.count(transfers, transfers.c.kind == "topup") == 200
    assert shop.count(stripe_events) == 200
    assert {b: shop.balance(b) for b in buyers} == paid_in
    assert shop.audit() == []


def test_payments_of_other_integrations_on_the_account_are_left_alone(shop: Shop) -> None:
    made = shop.fake.create_session(buyer="order-1234", amount=5000)
    response = shop.deliver(
        shop.fake.event("checkout.session.completed", shop.fake.pay(made["id"]))
    )
    assert response.status_code == 200 and response.json()["outcome"] == "not_a_topup"
    assert shop.count(transfers) == 0


def test_refunds_and_their_top_up_in_every_order_settle_the_same(shop: Shop) -> None:
    import itertools

    for n, order in enumerate(itertools.permutations(["paid", "refund1", "refund2"])):
        buyer = f"mastodon:{700 + n}"
        session = shop.paid_checkout(buyer, 5000)
        events = {"paid": shop.fake.event("checkout.session.completed", session)}
        events["refund1"] = shop.fake.event(
            "charge.refunded", shop.fake.refund_in_dashboard(session["id"], 1000)
        )
        events["refund2"] = shop.fake.event(
            "charge.refunded", shop.fake.refund_in_dashboard(session["id"], 1500)
        )
        for name in order:
            assert shop.deliver(events[name]).status_code == 200
        assert shop.balance(buyer) == 2500, order
    assert shop.count(transfers, transfers.c.kind == "topup") == 6
    assert shop.audit() == []


def test_a_refund_ahead_of_its_top_up_waits_while_stripe_is_down(shop: Shop) -> None:
    session = shop.paid_checkout(BUYER, 5000)
    refund = shop.fake.event("charge.refunded", shop.fake.refund_in_dashboard(session["id"], 800))
    shop.fake.faults = ["500"] * 3
    assert shop.deliver(refund).status_code == 503  # Stripe redelivers it later
    assert shop.count(stripe_events) == 0 and shop.balance(BUYER) == 0
    assert shop.deliver(refund).json()["outcome"] == "credited,debited:800"
    paid = shop.deliver(shop.fake.event("checkout.session.completed", session))
    assert paid.json()["outcome"] == "already_credited"
    assert shop.balance(BUYER) == 4200 and shop.audit() == []
