"""Worked scenarios: what a fan and a brand see in their credit wallet, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from config.database import create_engine, session_factory
from wallet import ledger
from wallet.errors import HoldExpired, HoldNotPending, InsufficientFunds

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FAN = "mastodon:109348"
OTHER = "x:777"


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    engine = create_engine(db_url)
    with session_factory(engine)() as s:
        yield s
    engine.dispose()


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_fan_tops_up_holds_twice_one_lapses_one_is_paid(session: Session) -> None:
    """Fan tops up 50.00, holds 19.99 twice; one hold lapses and is voided, the other settles."""
    assert ledger.credit_topup(
        session, buyer=FAN, amount=5000, currency="EUR", stripe_ref="cs_1", at=at(0)
    )
    first = ledger.hold(
        session,
        buyer=FAN,
        campaign_id="mi2",
        amount=1999,
        currency="EUR",
        ref="r1",
        expires_at=at(30),
        at=at(1),
    )
    ledger.hold(
        session,
        buyer=FAN,
        campaign_id="mi2",
        amount=1999,
        currency="EUR",
        ref="r2",
        expires_at=at(30),
        at=at(2),
    )
    assert first > 0
    assert ledger.available(session, FAN, "EUR") == 5000 - 2 * 1999
    assert ledger.balance(session, FAN, "EUR") == ledger.Balance(posted=5000, held=3998)

    # A third phone does not fit in what is left (10.02).
    with pytest.raises(InsufficientFunds) as refused:
        ledger.hold(
            session,
            buyer=FAN,
            campaign_id="mi2",
            amount=1999,
            currency="EUR",
            ref="r3",
            expires_at=at(30),
            at=at(3),
        )
    assert (refused.value.needed, refused.value.available) == (1999, 1002)

    ledger.post_hold(session, "r1", at=at(10))
    assert ledger.lapsed_holds(session, at(29)) == []
    assert ledger.lapsed_holds(session, at(30)) == ["r2"]
    with pytest.raises(HoldExpired):
        ledger.post_hold(session, "r2", at=at(31))
    ledger.void_hold(session, "r2", at=at(31))

    assert ledger.balance(session, FAN, "EUR") == ledger.Balance(posted=3001, held=0)
    lines = [(e.ref, e.state, e.amount, e.balance) for e in ledger.statement(session, FAN, "EUR")]
    assert lines == [
        ("cs_1", "posted", 5000, 5000),
        ("r1", "posted", -1999, 3001),
        ("r2", "voided", -1999, None),
    ]
    assert ledger.audit(session) == []


def test_posted_or_voided_hold_is_final(session: Session) -> None:
    ledger.credit_topup(session, buyer=FAN, amount=1000, currency="EUR", stripe_ref="cs", at=at(0))
    for ref in ("a", "b"):
        ledger.hold(
            session,
            buyer=FAN,
            campaign_id="c",
            amount=400,
            currency="EUR",
            ref=ref,
            expires_at=at(30),
            at=at(1),
        )
    ledger.post_hold(session, "a", at=at(2))
    ledger.void_hold(session, "b", at=at(2))
    for ref, state in (("a", "posted"), ("b", "voided")):
        with pytest.raises(HoldNotPending) as err:
            ledger.post_hold(session, ref, at=at(3))
        assert err.value.state == state
        with pytest.raises(HoldNotPending):
            ledger.void_hold(session, ref, at=at(3))
    assert ledger.available(session, FAN, "EUR") == 600
    assert ledger.audit(session) == []


def test_same_stripe_payment_credits_once(session: Session) -> None:
    args = {"buyer": FAN, "amount": 2500, "currency": "CNY", "stripe_ref": "cs_test_a1", "at": T0}
    assert ledger.credit_topup(session, **args) is True
    assert ledger.credit_topup(session, **args) is False
    session.commit()
    assert ledger.credit_topup(session, **args) is False
    assert ledger.available(session, FAN, "CNY") == 2500
    assert len(ledger.statement(session, FAN, "CNY")) == 1


def test_cancelled_order_is_refunded_to_wallet_then_cashed_out(session: Session) -> None:
    ledger.credit_topup(session, buyer=FAN, amount=3000, currency="EUR", stripe_ref="cs", at=at(0))
    held = ledger.hold_many(
        session,
        [ledger.HoldRequest(FAN, "mi2", 1999, "EUR", "r1")],
        post=True,
        at=at(1),
    )
    assert list(held) == ["r1"]
    assert ledger.available(session, FAN, "EUR") == 1001
    assert ledger.refund_to_wallet(
        session, buyer=FAN, campaign_id="mi2", amount=1999, currency="EUR", ref="x1", at=at(5)
    )
    assert not ledger.refund_to_wallet(
        session, buyer=FAN, campaign_id="mi2", amount=1999, currency="EUR", ref="x1", at=at(6)
    )
    assert ledger.available(session, FAN, "EUR") == 3000
    # The sales account cannot refund more than it took.
    with pytest.raises(InsufficientFunds):
        ledger.refund_to_wallet(
            session, buyer=FAN, campaign_id="mi2", amount=1, currency="EUR", ref="x2", at=at(7)
        )
    session.rollback()


def test_lapse_promotes_the_next_fan_then_a_refund_and_a_cash_out(session: Session) -> None:
    """Fan A tops up 50.00 and orders two phones at 19.99; one hold lapses, so fan B (next on
    the waitlist, 30.00 in her wallet) is charged; A cancels the paid phone and cashes out."""
    ledger.credit_topup(
        session, buyer=FAN, amount=5000, currency="EUR", stripe_ref="cs_a", at=at(0)
    )
    ledger.credit_topup(
        session, buyer=OTHER, amount=3000, currency="EUR", stripe_ref="cs_b", at=at(0)
    )
    for ref in ("a1", "a2"):
        ledger.hold(
            session,
            buyer=FAN,
            campaign_id="mi2",
            amount=1999,
            currency="EUR",
            ref=ref,
            expires_at=at(30),
            at=at(1),
        )
    ledger.post_hold(session, "a1", at=at(5))
    session.commit()

    # 30 minutes on, a2 lapses; B is promoted and paid at once.
    ledger.void_many(session, ledger.lapsed_holds(session, at(30)), at=at(30))
    held = ledger.hold_many(
        session, [ledger.HoldRequest(OTHER, "mi2", 1999, "EUR", "b1")], post=True, at=at(30)
    )
    session.commit()
    assert list(held) == ["b1"]
    assert ledger.available_many(session, [FAN, OTHER], "EUR") == {FAN: 3001, OTHER: 1001}

    # A cancels a1 while the campaign allows it: the price goes back to the wallet.
    assert ledger.refund_to_wallet(
        session, buyer=FAN, campaign_id="mi2", amount=1999, currency="EUR", ref="rf-a1", at=at(40)
    )
    assert ledger.available(session, FAN, "EUR") == 5000

    # A holds 10.00 for another order, then asks Stripe for all 50.00 back: only what is not
    # held can go; the held 10.00 stays until that order settles or lapses.
    ledger.hold(
        session,
        buyer=FAN,
        campaign_id="mi2",
        amount=1000,
        currency="EUR",
        ref="a3",
        expires_at=at(90),
        at=at(41),
    )
    assert ledger.debit_refund(
        session, buyer=FAN, amount=5000, currency="EUR", ref="re_1", at=at(45)
    )
    assert not ledger.debit_refund(
        session, buyer=FAN, amount=5000, currency="EUR", ref="re_1", at=at(46)
    )
    assert ledger.balance(session, FAN, "EUR") == ledger.Balance(posted=1000, held=1000)
    session.commit()
    assert [(e.ref, e.amount, e.balance) for e in ledger.statement(session, FAN, "EUR")] == [
        ("cs_a", 5000, 5000),
        ("a1", -1999, 3001),
        ("a2", -1999, None),
        ("rf-a1", 1999, 5000),
        ("a3", -1000, None),
        ("re_1", -4000, 1000),
    ]
    assert ledger.audit(session) == []
