"""Top-up Checkout Sessions: the parameters Stripe gets, and never a second session per link.

Stripe is the stateful fake in `stripe_fake` (Stripe's object shapes, v1 idempotency semantics);
the StripeClient is the real one with network retries on.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import responses
from sqlalchemy import func, select
from stripe_fake import Clock, FakeStripe, no_retry_sleep

from config.database import create_engine, session_factory
from wallet.stripe_payments import (
    CHECKOUT_MIN_LIFETIME,
    StripeRejectedError,
    StripeUnavailableError,
    TopupRequest,
    checkout_expiry,
    make_client,
    open_checkout,
)
from wallet.stripe_tables import stripe_checkout_sessions


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    no_retry_sleep(monkeypatch)
    stripe_fake = FakeStripe()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        stripe_fake.install(rsps)
        yield stripe_fake


def _request(clock: Clock, *, amount: int = 5000, hold_minutes: float | None = 60) -> TopupRequest:
    return TopupRequest(
        link_id="link-1",
        buyer="mastodon:109348",
        campaign_id="demo",
        currency="USD",
        amount=amount,
        product_name="Demo credit",
        success_url="https://shop.example/me/t?paid=1",
        cancel_url="https://shop.example/me/t",
        hold_deadline=None if hold_minutes is None else clock.now + timedelta(minutes=hold_minutes),
    )


def test_session_carries_buyer_campaign_currency_and_hold_expiry(
    db_url: str, fake: FakeStripe
) -> None:
    engine = create_engine(db_url)
    factory = session_factory(engine)
    clock = Clock(fake.now)
    checkout = open_checkout(factory, make_client("sk_test_x"), _request(clock), now=clock.now)

    made = fake.sessions[checkout.session_id]
    assert made["mode"] == "payment"
    assert made["currency"] == "usd"
    assert made["amount_total"] == 5000
    assert made["client_reference_id"] == "mastodon:109348"
    assert made["metadata"]["buyer"] == "mastodon:109348"
    assert made["metadata"]["campaign"] == "demo"
    assert made["expires_at"] == int((clock.now + timedelta(minutes=60)).timestamp())
    assert checkout.url == made["url"] and not checkout.outlives_hold
    engine.dispose()


def test_expiry_stays_inside_stripes_window() -> None:
    clock = Clock(1_800_000_000)
    now = clock.now
    assert checkout_expiry(now, None) <= now + timedelta(hours=24)
    assert checkout_expiry(now, now + timedelta(hours=30)) <= now + timedelta(hours=24)
    # A hold lapsing in 15 s cannot shorten a session below Stripe's 30 minutes.
    assert checkout_expiry(now, now + timedelta(seconds=15)) >= now + CHECKOUT_MIN_LIFETIME
    assert checkout_expiry(now, now + timedelta(hours=2)) == now + timedelta(hours=2)


def test_short_hold_is_flagged_so_the_buyer_is_told(db_url: str, fake: FakeStripe) -> None:
    engine = create_engine(db_url)
    clock = Clock(fake.now)
    request = _request(clock, hold_minutes=0.25)
    checkout = open_checkout(
        session_factory(engine), make_client("sk_test_x"), request, now=clock.now
    )
    assert checkout.outlives_hold
    assert checkout.expires_at >= clock.now + CHECKOUT_MIN_LIFETIME
    engine.dispose()


@pytest.mark.parametrize("fault", ["500", "timeout"])
def test_stripe_down_then_retry_makes_exactly_one_session(
    db_url: str, fake: FakeStripe, fault: str
) -> None:
    engine = create_engine(db_url)
    factory = session_factory(engine)
    client = make_client("sk_test_x", max_network_retries=2)
    clock = Clock(fake.now)
    fake.faults = [fault] * 3  # the first try and both library retries fail
    with pytest.raises(StripeUnavailableError):
        open_checkout(factory, client, _request(clock), now=clock.now)
    assert fake.sessions == {}

    clock.advance(minutes=1)
    first = open_checkout(factory, client, _request(clock), now=clock.now)
    again = open_checkout(factory, client, _request(clock), now=clock.now)

    assert len(fake.sessions) == 1
    assert first.session_id == again.session_id
    keys = {key for method, _url, key in fake.requests if method == "POST"}
    assert len(keys) == 1, "every attempt must reuse one idempotency key"
    with factory() as session:
        rows = session.execute(select(func.count()).select_from(stripe_checkout_sessions))
        assert rows.scalar_one() == 1
    engine.dispose()


def test_answer_lost_after_stripe_created_the_session_reuses_it(
    db_url: str, fake: FakeStripe
) -> None:
    engine = create_engine(db_url)
    factory = session_factory(engine)
    client = make_client("sk_test_x", max_network_retries=0)
    clock = Clock(fake.now)
    fake.faults = ["lost"]
    with pytest.raises(StripeUnavailableError):
        open_checkout(factory, client, _request(clock), now=clock.now)
    assert len(fake.sessions) == 1  # Stripe made it; we never heard back

    clock.advance(minutes=2)  # same parameters: the stored expiry, not a new one
    checkout = open_checkout(factory, client, _request(clock), now=clock.now)
    assert len(fake.sessions) == 1
    assert checkout.session_id in fake.sessions
    engine.dispose()


def test_library_retries_hide_a_single_blip(db_url: str, fake: FakeStripe) -> None:
    engine = create_engine(db_url)
    clock = Clock(fake.now)
    fake.faults = ["500"]
    client = make_client("sk_test_x", max_network_retries=2)
    checkout = open_checkout(session_factory(engine), client, _request(clock), now=clock.now)
    assert list(fake.sessions) == [checkout.session_id]
    engine.dispose()


def test_different_amounts_are_different_sessions(db_url: str, fake: FakeStripe) -> None:
    engine = create_engine(db_url)
    factory = session_factory(engine)
    client = make_client("sk_test_x")
    clock = Clock(fake.now)
    a = open_checkout(factory, client, _request(clock, amount=5000), now=clock.now)
    b = open_checkout(factory, client, _request(clock, amount=7000), now=clock.now)
    assert a.session_id != b.session_id
    assert fake.sessions[b.session_id]["amount_total"] == 7000
    engine.dispose()


def test_an_expired_session_is_replaced(db_url: str, fake: FakeStripe) -> None:
    engine = create_engine(db_url)
    factory = session_factory(engine)
    client = make_client("sk_test_x")
    clock = Clock(fake.now)
    first = open_checkout(factory, client, _request(clock, hold_minutes=None), now=clock.now)
    clock.advance(hours=25)
    fake.now += 25 * 3600
    second = open_checkout(factory, client, _request(clock, hold_minutes=None), now=clock.now)
    assert first.session_id != second.session_id
    engine.dispose()


def test_stripe_rejection_is_not_retried_as_unavailable(db_url: str, fake: FakeStripe) -> None:
    engine = create_engine(db_url)
    clock = Clock(fake.now)
    fake.now += 3 * 3600  # Stripe's clock is far ahead: our expires_at is "too soon" for it
    with pytest.raises(StripeRejectedError):
        open_checkout(
            session_factory(engine), make_client("sk_test_x"), _request(clock), now=clock.now
        )
    engine.dispose()
