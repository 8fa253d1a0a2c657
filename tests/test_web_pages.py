"""The buyer status page, the campaign page and the health check, as a buyer sees them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stripe_fake import Shop


@pytest.fixture
def shop(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    s = Shop(db_url, tmp_path, monkeypatch)
    yield s
    s.close()


def test_status_page_shows_holds_queue_positions_and_balance(shop: Shop) -> None:
    [held] = shop.order("mastodon:1")
    shop.order("mastodon:2")
    [first_waiting] = shop.order("mastodon:3")
    [second_waiting] = shop.order("mastodon:4", quantity=2)
    assert (first_waiting.queue_position, second_waiting.queue_position) == (1, 2)
    assert held.hold_expires_at is not None

    page = shop.http.get(f"/me/{shop.token('mastodon:1', purpose='me')}")
    assert page.status_code == 200
    assert "Awaiting payment" in page.text and "USD 299.00" in page.text
    assert held.hold_expires_at.strftime("%Y-%m-%d %H:%M:%S") in page.text
    assert "Balance" in page.text and "USD 0.00" in page.text
    assert 'name="viewport"' in page.text
    assert "/topup/" in page.text  # what is due can be paid from the page

    waiting = shop.http.get(f"/me/{shop.token('mastodon:4', purpose='me')}").text
    assert "On the waitlist" in waiting and "position <b>2</b>" in waiting
    assert (
        "position <b>1</b>" in shop.http.get(f"/me/{shop.token('mastodon:3', purpose='me')}").text
    )


def test_status_page_follows_a_top_up(shop: Shop) -> None:
    shop.order("mastodon:1", sku="CASE")
    session = shop.paid_checkout("mastodon:1", 5000)
    shop.deliver(shop.fake.event("checkout.session.completed", session))
    page = shop.http.get(f"/me/{shop.token('mastodon:1', purpose='me')}", params={"paid": "1"}).text
    assert "Confirmed" in page and "USD 40.00" in page and "Thank you" in page


def test_everything_shown_is_escaped(shop: Shop) -> None:
    shop.order("mastodon:1", handle='<script>alert("x")</script>')
    page = shop.http.get(f"/me/{shop.token('mastodon:1', purpose='me')}").text
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>64GB</b>" not in page and "Phone &lt;b&gt;64GB&lt;/b&gt;" in page
    stock = shop.http.get("/c/drop").text
    assert "<b>64GB</b>" not in stock


def test_a_link_shows_only_its_own_buyer(shop: Shop) -> None:
    shop.order("mastodon:1", handle="alice")
    shop.order("mastodon:2", handle="bob")
    page = shop.http.get(f"/me/{shop.token('mastodon:2', purpose='me')}").text
    assert "bob" in page and "alice" not in page
    assert shop.http.get("/me/not-a-token").status_code == 404


def test_each_link_opens_only_its_own_page(shop: Shop) -> None:
    shop.order("mastodon:1")
    me, pay = shop.token("mastodon:1", purpose="me"), shop.token("mastodon:1", purpose="pay")
    # A status link (the kind a reply might have shown) never opens a payment in the fan's name.
    assert shop.http.get(f"/topup/{me}", params={"amount": 29900}).status_code == 404
    assert shop.http.get(f"/topup/{me}").status_code == 404
    assert shop.fake.sessions == {}
    # A payment link never shows the fan's orders, balance or handle.
    refused = shop.http.get(f"/me/{pay}")
    assert refused.status_code == 404 and "fan" not in refused.text
    # Each on its own route works, and the status page's pay button carries a payment token.
    page = shop.http.get(f"/me/{me}").text
    assert "Awaiting payment" in page and me not in page.split("<body>")[1]
    href = page.split('href="/topup/')[1].split("?")[0]
    assert shop.signer.verify(href, purpose="pay", now=shop.clock.now).buyer == "mastodon:1"
    assert shop.http.get(f"/topup/{pay}", params={"amount": 29900}).status_code == 303


def test_campaign_page_counts_stock_and_states(shop: Shop) -> None:
    shop.order("mastodon:1")
    shop.order("mastodon:2")
    shop.order("mastodon:3")
    shop.order("mastodon:4", sku="CASE", quantity=3)
    page = shop.http.get("/c/drop")
    assert page.status_code == 200
    assert "<td>PHONE</td><td>Phone &lt;b&gt;64GB&lt;/b&gt;</td><td>0</td><td>2</td>" in page.text
    assert "<td>CASE</td><td>Case</td><td>997</td><td>1000</td>" in page.text
    assert "<td>awaiting_payment</td><td>3</td>" in page.text
    assert "<td>waitlisted</td><td>1</td>" in page.text
    assert shop.http.get("/c/nope").status_code == 404


def test_healthz(shop: Shop) -> None:
    response = shop.http.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_a_lapsed_hold_is_shown_as_lapsed_not_payable(shop: Shop) -> None:
    [held] = shop.order("mastodon:1")
    assert held.hold_expires_at is not None
    shop.clock.now = held.hold_expires_at
    page = shop.http.get(f"/me/{shop.token('mastodon:1', purpose='me')}").text
    assert "hold lapsed at" in page and "/topup/" not in page
