"""Every named ledger error, raised where a caller would hit it, and leaving balances untouched."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from config.database import create_engine, session_factory
from wallet import ledger
from wallet.errors import (
    HoldError,
    HoldExpired,
    HoldNotFound,
    HoldNotPending,
    InsufficientFunds,
    InvalidAmount,
    InvalidBuyer,
    InvalidCurrency,
    InvalidTransfer,
    LedgerError,
    NaiveDatetime,
    SameAccount,
    TransferConflict,
    UnbalancedTransfer,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FAN = "mastodon:42"


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    engine = create_engine(db_url)
    with session_factory(engine)() as s:
        ledger.credit_topup(s, buyer=FAN, amount=1000, currency="EUR", stripe_ref="cs_0", at=T0)
        s.commit()
        yield s
    engine.dispose()


def _hold(session: Session, **over: Any) -> ledger.HoldId:
    args: dict[str, Any] = {
        "buyer": FAN,
        "campaign_id": "mi2",
        "amount": 300,
        "currency": "EUR",
        "ref": "h1",
        "expires_at": T0 + timedelta(minutes=30),
        "at": T0,
    }
    args.update(over)
    return ledger.hold(session, **args)


def test_error_tree_has_one_root() -> None:
    for error in (
        InvalidAmount,
        InvalidBuyer,
        InvalidCurrency,
        NaiveDatetime,
        UnbalancedTransfer,
        SameAccount,
        TransferConflict,
        InsufficientFunds,
        HoldNotFound,
        HoldNotPending,
        HoldExpired,
    ):
        assert issubclass(error, LedgerError)
    assert issubclass(HoldExpired, HoldError)
    assert issubclass(InvalidAmount, InvalidTransfer)


@pytest.mark.parametrize("amount", [0, -5, 1.5, True, "100", None])
def test_amount_must_be_positive_integer_minor_units(session: Session, amount: object) -> None:
    with pytest.raises(InvalidAmount):
        ledger.credit_topup(
            session, buyer=FAN, amount=amount, currency="EUR", stripe_ref="cs_x", at=T0
        )  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        _hold(session, amount=amount)
    assert ledger.available(session, FAN, "EUR") == 1000


@pytest.mark.parametrize("currency", ["eur", "EURO", "", "E1R"])
def test_currency_is_an_iso_code(session: Session, currency: str) -> None:
    with pytest.raises(InvalidCurrency):
        _hold(session, currency=currency)
    with pytest.raises(InvalidCurrency):
        ledger.available(session, FAN, currency)


@pytest.mark.parametrize("buyer", ["42", "mastodon:", ":42", "mastodon:4 2", ""])
def test_buyer_is_a_platform_account_key(session: Session, buyer: str) -> None:
    with pytest.raises(InvalidBuyer):
        ledger.credit_topup(
            session, buyer=buyer, amount=100, currency="EUR", stripe_ref="cs_b", at=T0
        )


def test_naive_datetimes_are_refused(session: Session) -> None:
    with pytest.raises(NaiveDatetime):
        _hold(session, at=datetime(2026, 11, 25, 12, 0))
    with pytest.raises(NaiveDatetime):
        _hold(session, expires_at=datetime(2026, 11, 25, 12, 30))


def test_unbalanced_and_self_transfers_are_refused(session: Session) -> None:
    wallet = ledger.wallet_of(FAN)
    with pytest.raises(UnbalancedTransfer) as err:
        ledger.transfer(
            session,
            ref="t1",
            kind="topup",
            legs=[(ledger.CLEARING, -500), (wallet, 499)],
            currency="EUR",
            at=T0,
        )
    assert err.value.amounts == [-500, 499]
    with pytest.raises(UnbalancedTransfer):
        ledger.transfer(
            session,
            ref="t2",
            kind="topup",
            legs=[(ledger.CLEARING, -500), (wallet, 250), (wallet, 250)],
            currency="EUR",
            at=T0,
        )
    with pytest.raises(SameAccount):
        ledger.transfer(
            session,
            ref="t3",
            kind="topup",
            legs=[(wallet, -500), (wallet, 500)],
            currency="EUR",
            at=T0,
        )
    with pytest.raises(InvalidTransfer, match="a topup moves clearing -> wallet"):
        ledger.transfer(
            session,
            ref="t4",
            kind="topup",
            legs=[(ledger.sales_of("mi2"), -500), (wallet, 500)],
            currency="EUR",
            at=T0,
        )
    assert ledger.available(session, FAN, "EUR") == 1000


def test_reused_ref_for_a_different_transfer_conflicts(session: Session) -> None:
    with pytest.raises(TransferConflict):
        ledger.credit_topup(
            session, buyer=FAN, amount=999, currency="EUR", stripe_ref="cs_0", at=T0
        )
    with pytest.raises(TransferConflict):
        ledger.credit_topup(
            session, buyer="x:1", amount=1000, currency="EUR", stripe_ref="cs_0", at=T0
        )
    session.rollback()
    _hold(session)
    with pytest.raises(TransferConflict):
        _hold(session, amount=301)
    assert _hold(session) == _hold(session)  # the same hold again is the same hold
    assert ledger.available(session, FAN, "EUR") == 700
    # Asking to pay at once for what is recorded as a pending hold is not the same request.
    pay_now = ledger.HoldRequest(FAN, "mi2", 300, "EUR", "h1")
    with pytest.raises(TransferConflict, match="pending hold"):
        ledger.hold_many(session, [pay_now], post=True, at=T0)


def test_insufficient_funds_says_what_was_missing(session: Session) -> None:
    with pytest.raises(InsufficientFunds) as err:
        _hold(session, amount=1001)
    assert (err.value.account, err.value.needed, err.value.available) == (
        "wallet:mastodon:42",
        1001,
        1000,
    )
    with pytest.raises(InsufficientFunds):
        _hold(session, buyer="mastodon:never-paid", amount=1)


def test_unknown_hold(session: Session) -> None:
    with pytest.raises(HoldNotFound):
        ledger.post_hold(session, "nope", at=T0)
    with pytest.raises(HoldNotFound):  # a top-up is not a hold
        ledger.void_hold(session, "cs_0", at=T0)


def test_hold_is_final_once_posted_or_voided(session: Session) -> None:
    _hold(session, ref="p")
    _hold(session, ref="v")
    ledger.post_hold(session, "p", at=T0)
    ledger.void_hold(session, "v", at=T0)
    with pytest.raises(HoldNotPending, match="posted"):
        ledger.void_hold(session, "p", at=T0)
    with pytest.raises(HoldNotPending, match="voided"):
        ledger.post_hold(session, "v", at=T0)


def test_expired_hold_can_only_be_voided(session: Session) -> None:
    _hold(session, ref="late")
    with pytest.raises(HoldExpired) as err:
        ledger.post_hold(session, "late", at=T0 + timedelta(minutes=30))
    assert err.value.expires_at == T0 + timedelta(minutes=30)
    assert ledger.hold_state(session, "late") == "pending"
    ledger.void_hold(session, "late", at=T0 + timedelta(minutes=31))
    assert ledger.available(session, FAN, "EUR") == 1000


def test_batch_requests_are_checked_before_anything_is_written(session: Session) -> None:
    good = ledger.HoldRequest(FAN, "mi2", 100, "EUR", "b1", T0 + timedelta(minutes=5))
    with pytest.raises(InvalidTransfer, match="twice"):
        ledger.hold_many(session, [good, good], at=T0)
    with pytest.raises(InvalidTransfer, match="expiry"):
        ledger.hold_many(session, [ledger.HoldRequest(FAN, "mi2", 100, "EUR", "b2")], at=T0)
    with pytest.raises(InvalidTransfer):
        ledger.hold_many(session, [ledger.HoldRequest(FAN, "", 100, "EUR", "b3")], post=True, at=T0)
    assert ledger.available(session, FAN, "EUR") == 1000


def test_post_many_is_all_or_nothing(session: Session) -> None:
    _hold(session, ref="a", amount=100)
    _hold(session, ref="b", amount=100)
    ledger.void_hold(session, "b", at=T0)
    with pytest.raises(HoldNotPending):
        ledger.post_many(session, ["a", "b"], at=T0)
    assert ledger.hold_state(session, "a") == "pending"
    assert ledger.balance(session, FAN, "EUR") == ledger.Balance(posted=1000, held=100)
