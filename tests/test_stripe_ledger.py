"""Paid sessions, refunds and cash-outs against the real ledger, told as a buyer's story.

Each test runs on SQLite and PostgreSQL (`db_url`), with Stripe as the stateful fake.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import responses
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from stripe_fake import Clock, FakeStripe, no_retry_sleep

from config.database import create_engine, session_factory
from wallet import ledger
from wallet.stripe_payments import (
    CashoutRefusedError,
    StripeUnavailableError,
    apply_charge_refunded,
    apply_paid_session,
    make_client,
    paid_session,
    plan_cashout,
    refund_failed,
    send_refunds,
)
from wallet.stripe_payments import audit as stripe_audit
from wallet.stripe_tables import stripe_refunds

BUYER = "mastodon:109348"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    no_retry_sleep(monkeypatch)
    stripe_fake = FakeStripe()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        stripe_fake.install(rsps)
        yield stripe_fake


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def _topup(factory: sessionmaker[Session], fake: FakeStripe, clock: Clock, amount: int) -> str:
    session_obj = fake.create_session(buyer=BUYER, amount=amount)
    paid = paid_session(fake.pay(session_obj["id"]))
    assert paid is not None
    with factory.begin() as s:
        assert apply_paid_session(s, paid, at=clock.now, via="webhook")
    return str(session_obj["id"])


def _balance(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return ledger.available(s, BUYER, "USD")


def _audit(factory: sessionmaker[Session]) -> list[str]:
    with factory() as s:
        return ledger.audit(s) + stripe_audit(s)


def test_a_paid_session_is_credited_once_whoever_brings_it(
    factory: sessionmaker[Session], fake: FakeStripe
) -> None:
    clock = Clock(fake.now)
    obj = fake.pay(fake.create_session(buyer=BUYER, amount=2500)["id"])
    paid = paid_session(obj)
    assert paid is not None and paid.amount == 2500 and paid.currency == "USD"
    with factory.begin() as s:
        assert apply_paid_session(s, paid, at=clock.now, via="webhook")
    for via in ("webhook", "reconcile", "webhook"):
        with factory.begin() as s:
            assert not apply_paid_session(s, paid, at=clock.now, via=via)
    assert _balance(factory) == 2500
    assert _audit(factory) == []


def test_unpaid_and_foreign_sessions_credit_nothing(fake: FakeStripe) -> None:
    obj = fake.pay(fake.create_session(buyer=BUYER, amount=900)["id"], async_payment=True)
    assert paid_session(obj) is None  # completed, but the bank transfer has not cleared
    assert paid_session(fake.settle_async(obj["id"])) is not None
    subscription = dict(obj, mode="subscription", payment_status="paid")
    assert paid_session(subscription) is None
    anonymous = dict(obj, client_reference_id=None, metadata={}, payment_status="paid")
    assert paid_session(anonymous) is None


def test_the_amount_comes_from_stripe_not_from_metadata(
    factory: sessionmaker[Session], fake: FakeStripe
) -> None:
    clock = Clock(fake.now)
    obj = fake.pay(fake.create_session(buyer=BUYER, amount=700)["id"])
    obj["metadata"] = dict(obj["metadata"], amount="999999")
    paid = paid_session(obj)
    assert paid is not None
    with factory.begin() as s:
        apply_paid_session(s, paid, at=clock.now, via="webhook")
    assert _balance(factory) == 700


def test_dashboard_refunds_debit_the_cumulative_difference_in_any_order(
    factory: sessionmaker[Session], fake: FakeStripe
) -> None:
    clock = Clock(fake.now)
    sid = _topup(factory, fake, clock, 5000)
    first = fake.refund_in_dashboard(sid, 1000)  # amount_refunded 1000
    second = fake.refund_in_dashboard(sid, 1500)  # amount_refunded 2500
    debited = []
    for charge in (second, first, second):  # late, early, redelivered
        with factory.begin() as s:
            debited.append(apply_charge_refunded(s, charge, at=clock.now))
    assert debited == [2500, 0, 0]
    assert _balance(factory) == 2500
    assert _audit(factory) == []


def test_refund_of_a_charge_we_never_sold_changes_nothing(
    factory: sessionmaker[Session], fake: FakeStripe
) -> None:
    clock = Clock(fake.now)
    _topup(factory, fake, clock, 5000)
    stranger = fake.create_session(buyer="mastodon:1", amount=300)
    charge = fake.refund_in_dashboard(fake.pay(stranger["id"])["id"], 300)
    with factory.begin() as s:
        assert apply_charge_refunded(s, charge, at=clock.now) == 0
    assert _balance(factory) == 5000


def test_cash_out_refunds_the_most_recent_top_ups_first(
    factory: sessionmaker[Session], fake: FakeStripe
) -> None:
    clock = Clock(fake.now)
    older = _topup(factory, fake, clock, 1000)
    clock.advance(minutes=1)
    middle = _topup(factory, fake, clock, 2000)
    clock.advance(minutes=1)
    latest = _topup(factory, fake, clock, 3000)
    clock.advance(minutes=1)
    with factory.begin() as s:
        orders = plan_cashout(s, buyer=BUYER, amount=4000, currency="USD", at=clock.now)
    intents = {fake.sessions[sid]["payment_intent"]: sid for sid in (older, middle, latest)}
    assert [(intents[o.payment_intent], o.amount) for o in orders] == [
        (latest, 3000),
        (middle, 1000),
    ]
    assert _balance(factory) == 2000  # debited at once, before Stripe is asked

    sent = send_refunds(factory, make_client("sk_test_x"), now=clock.now)
    assert [s.state for s in sent] == ["succeeded", "succeeded"]
    assert sorted(r["amount"] for r in fake.refunds.values()) == [1000, 3000]
    assert send_refunds(factory, make_client("sk_test_x"), now=clock.now) == []

    # Stripe then reports the refunds on the charges: already accounted, nothing more is taken.
    for sid in (latest, middle):
        with factory.begin() as s:
            assert apply_charge_refunded(s, _charge(fake, sid), at=clock.now) == 0
    assert _balance(factory) == 2000
    assert _audit(factory) == []


def test_cash_out_never_returns_more_than_was_paid_in(
    factory: sessionmaker[Session], fake: FakeStripe
) -> None:
    clock = Clock(fake.now)
    sid = _topup(factory, fake, clock, 1000)
    with factory.begin() as s, pytest.raises(CashoutRefusedError):
        plan_cashout(s, buyer=BUYER, amount=1001, currency="USD", at=clock.now)
    with factory.begin() as s:
        plan_cashout(s, buyer=BUYER, amount=600, currency="USD", at=clock.now)
    send_refunds(factory, make_client("sk_test_x"), now=clock.now)
    with factory.begin() as s, pytest.raises(CashoutRefusedError):
        plan_cashout(s, buyer=BUYER, amount=401, currency="USD", at=clock.now)
    with factory.begin() as s:
        plan_cashout(s, buyer=BUYER, amount=400, currency="USD", at=clock.now)
    send_refunds(factory, make_client("sk_test_x"), now=clock.now)
    assert _charge(fake, sid)["amount_refunded"] == 1000
    assert _balance(factory) == 0
    assert _audit(factory) == []


def test_cash_out_survives_a_lost_answer_without_refunding_twice(
    factory: sessionmaker[Session], fake: FakeStripe
) -> None:
    clock = Clock(fake.now)
    _topup(factory, fake, clock, 1000)
    with factory.begin() as s:
        plan_cashout(s, buyer=BUYER, amount=1000, currency="USD", at=clock.now)
    fake.faults = ["lost"]
    with pytest.raises(StripeUnavailableError):
        send_refunds(factory, make_client("sk_test_x", max_network_retries=0), now=clock.now)
    assert len(fake.refunds) == 1  # Stripe refunded; the answer was lost
    with factory() as s:
        assert s.execute(select(stripe_refunds.c.state)).scalars().all() == ["pending"]
    sent = send_refunds(factory, make_client("sk_test_x"), now=clock.now)
    assert len(sent) == 1 and len(fake.refunds) == 1
    assert sent[0].refund_id in fake.refunds


def _charge(fake: FakeStripe, sid: str) -> dict[str, Any]:
    return dict(fake.charges[fake.intents[fake.sessions[sid]["payment_intent"]]["latest_charge"]])


def test_a_refund_stripe_cannot_complete_goes_back_into_the_wallet(
    factory: sessionmaker[Session], fake: FakeStripe
) -> None:
    clock = Clock(fake.now)
    _topup(factory, fake, clock, 3000)
    with factory.begin() as s:
        plan_cashout(s, buyer=BUYER, amount=1000, currency="USD", at=clock.now)
    fake.refund_status = "failed"
    [sent] = send_refunds(factory, make_client("sk_test_x"), now=clock.now)
    assert sent.state == "failed"
    assert _balance(factory) == 3000
    with factory.begin() as s:  # Stripe's refund.failed event about it, later: nothing more
        assert refund_failed(s, fake.refunds[str(sent.refund_id)], at=clock.now) == 0
    assert _balance(factory) == 3000

    fake.refund_status = "pending"
    with factory.begin() as s:
        plan_cashout(s, buyer=BUYER, amount=3000, currency="USD", at=clock.now)
    [later] = send_refunds(factory, make_client("sk_test_x"), now=clock.now)
    assert later.state == "succeeded" and _balance(factory) == 0
    failed_later = dict(fake.refunds[str(later.refund_id)], status="failed")
    with factory.begin() as s:
        assert refund_failed(s, failed_later, at=clock.now) == 3000
    assert _balance(factory) == 3000
    assert _audit(factory) == []


def test_audit_notices_a_paid_session_that_was_never_credited(
    factory: sessionmaker[Session], fake: FakeStripe
) -> None:
    from sqlalchemy import delete, update

    from wallet.stripe_tables import stripe_checkout_sessions

    clock = Clock(fake.now)
    sid = _topup(factory, fake, clock, 1000)
    assert _audit(factory) == []
    with factory.begin() as s:
        s.execute(
            update(stripe_checkout_sessions)
            .where(stripe_checkout_sessions.c.session_id == sid)
            .values(amount_total=1500)
        )
    assert any("credited as topup of 1000" in p for p in _audit(factory))
    with factory.begin() as s:
        s.execute(delete(stripe_checkout_sessions))
    assert any("without a paid Stripe session" in p for p in _audit(factory))
