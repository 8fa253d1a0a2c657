"""`GET /topup/{token}`: a buyer's link becomes one Stripe Checkout Session, even when Stripe
stumbles; bad amounts and bad links never reach Stripe."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from stripe_fake import Shop

from orders.tables import reservations
from wallet.stripe_tables import stripe_checkout_sessions

BUYER = "mastodon:109348"


@pytest.fixture
def shop(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    s = Shop(db_url, tmp_path, monkeypatch)
    yield s
    s.close()


def _posts(shop: Shop) -> int:
    return sum(1 for method, _url, _key in shop.fake.requests if method == "POST")


def test_link_redirects_to_a_checkout_for_that_buyer_and_campaign(shop: Shop) -> None:
    response = shop.http.get(f"/topup/{shop.token(BUYER)}", params={"amount": 2500})
    assert response.status_code == 303
    [made] = shop.fake.sessions.values()
    assert response.headers["location"] == made["url"]
    assert made["client_reference_id"] == BUYER
    assert made["metadata"]["buyer"] == BUYER and made["metadata"]["campaign"] == "drop"
    assert (made["currency"], made["amount_total"], made["mode"]) == ("usd", 2500, "payment")
    assert urlsplit(made["success_url"]).path.startswith("/me/")


def test_checkout_expires_with_the_hold(shop: Shop) -> None:
    [outcome] = shop.order(BUYER)
    assert outcome.hold_expires_at is not None
    response = shop.http.get(f"/topup/{shop.token(BUYER)}", params={"amount": 29900})
    assert response.status_code == 303
    [made] = shop.fake.sessions.values()
    assert made["expires_at"] == int(outcome.hold_expires_at.timestamp())


def test_a_hold_shorter_than_stripes_minimum_is_explained_before_paying(shop: Shop) -> None:
    [outcome] = shop.order(BUYER)
    assert outcome.hold_expires_at is not None
    shop.clock.now = outcome.hold_expires_at - timedelta(minutes=10)
    response = shop.http.get(f"/topup/{shop.token(BUYER)}", params={"amount": 29900})
    assert response.status_code == 200
    assert "at least 30 minutes" in response.text and "Continue to payment" in response.text
    [made] = shop.fake.sessions.values()
    assert made["url"].replace("&", "&amp;") in response.text
    assert made["expires_at"] >= int((shop.clock.now + timedelta(minutes=30)).timestamp())


@pytest.mark.parametrize("fault", ["500", "timeout"])
def test_stripe_failing_gives_a_retry_page_and_the_retry_no_second_session(
    shop: Shop, fault: str
) -> None:
    token = shop.token(BUYER)
    shop.fake.faults = [fault] * 3
    failed = shop.http.get(f"/topup/{token}", params={"amount": 2500})
    assert failed.status_code == 503
    assert "try again" in failed.text.lower() and "Nothing was charged" in failed.text
    assert shop.fake.sessions == {}

    retried = shop.http.get(f"/topup/{token}", params={"amount": 2500})
    reloaded = shop.http.get(f"/topup/{token}", params={"amount": 2500})

    assert retried.status_code == reloaded.status_code == 303
    assert len(shop.fake.sessions) == 1
    assert retried.headers["location"] == reloaded.headers["location"]
    keys = {key for method, _url, key in shop.fake.requests if method == "POST"}
    assert len(keys) == 1
    assert shop.count(stripe_checkout_sessions) == 1


def test_answer_lost_in_transit_still_one_session(shop: Shop) -> None:
    token = shop.token(BUYER)
    shop.fake.faults = ["lost", "timeout", "timeout"]
    assert shop.http.get(f"/topup/{token}", params={"amount": 2500}).status_code == 503
    assert len(shop.fake.sessions) == 1  # created at Stripe, answer lost
    response = shop.http.get(f"/topup/{token}", params={"amount": 2500})
    assert response.status_code == 303 and len(shop.fake.sessions) == 1


def test_amounts_outside_the_brand_bounds_never_reach_stripe(shop: Shop) -> None:
    for amount in ["499", "200001", "12.50", "-5", "abc", "9" * 20, "<script>"]:
        response = shop.http.get(f"/topup/{shop.token(BUYER)}", params={"amount": amount})
        assert response.status_code == 400, amount
        assert "USD 5.00" in response.text and "USD 2,000.00" in response.text
        assert "<script>" not in response.text
    assert _posts(shop) == 0


def test_without_an_amount_the_page_suggests_what_is_due(shop: Shop) -> None:
    shop.order(BUYER)
    response = shop.http.get(f"/topup/{shop.token(BUYER)}")
    assert response.status_code == 200 and 'value="299.00"' in response.text
    assert _posts(shop) == 0


def test_the_form_takes_the_amount_as_a_buyer_types_it(shop: Shop) -> None:
    token = shop.token(BUYER)
    assert shop.http.get(f"/topup/{token}", params={"major": "49.9"}).status_code == 303
    assert [s["amount_total"] for s in shop.fake.sessions.values()] == [4990]
    for typed in ["49.999", "1e3", "-5", "", "4.99"]:
        response = shop.http.get(f"/topup/{token}", params={"major": typed})
        assert response.status_code in (200, 400), typed
    assert len(shop.fake.sessions) == 1


def test_forged_expired_and_foreign_links(shop: Shop) -> None:
    token = shop.token(BUYER)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert shop.http.get(f"/topup/{forged}", params={"amount": 900}).status_code == 404
    unknown = shop.signer.issue(BUYER, "no-such-sale", purpose="pay", now=shop.clock.now)
    assert shop.http.get(f"/topup/{unknown}", params={"amount": 900}).status_code == 404
    shop.clock.advance(days=8)
    assert shop.http.get(f"/topup/{token}", params={"amount": 900}).status_code == 410
    assert _posts(shop) == 0


def test_no_stripe_key_means_a_polite_503(shop: Shop) -> None:
    from fastapi.testclient import TestClient

    from bot.web import create_app

    settings = shop.settings.model_copy(update={"stripe_secret_key": None})
    app = create_app(settings, shop.factory, shop.brands, shop.clock, signer=shop.signer)
    with TestClient(app, follow_redirects=False) as http:
        response = http.get(f"/topup/{shop.token(BUYER)}", params={"amount": 900})
    assert response.status_code == 503


def test_paying_after_the_link_flow_confirms_the_order(shop: Shop) -> None:
    shop.order(BUYER)
    session = shop.paid_checkout(BUYER, 29900)
    shop.deliver(shop.fake.event("checkout.session.completed", session))
    with shop.factory() as s:
        states = s.execute(select(reservations.c.state)).scalars().all()
    assert states == ["confirmed"]


def test_a_lapsed_hold_does_not_shorten_the_checkout(shop: Shop) -> None:
    [outcome] = shop.order(BUYER)
    assert outcome.hold_expires_at is not None
    shop.clock.now = outcome.hold_expires_at + timedelta(seconds=1)
    shop.fake.now = shop.clock.now.timestamp()
    response = shop.http.get(f"/topup/{shop.token(BUYER)}", params={"amount": 1000})
    assert response.status_code == 303  # plain credit top-up, nothing to warn about
