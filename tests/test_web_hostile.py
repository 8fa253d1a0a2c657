"""The web process facing odd or hostile input: exotic digits, signed but malformed Stripe events,
oversized bodies, unparseable payloads, HEAD probes and brand files that clash.

Every answer is a clear 4xx (never a 500 that Stripe would retry forever), and nothing changes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe
from stripe_fake import SHOP_BRAND, WEBHOOK_SECRET, Shop, signed

from bot.web import MAX_WEBHOOK_BODY
from wallet.stripe_tables import stripe_checkout_sessions, stripe_events
from wallet.tables import transfers

BUYER = "mastodon:109348"


@pytest.fixture
def shop(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    s = Shop(db_url, tmp_path, monkeypatch)
    yield s
    s.close()


def _nothing_changed(shop: Shop) -> bool:
    return (
        shop.count(stripe_events) == 0
        and shop.count(transfers) == 0
        and shop.count(stripe_checkout_sessions, stripe_checkout_sessions.c.state == "paid") == 0
    )


# --- 1. amounts in a top-up link ---------------------------------------------------------------


@pytest.mark.parametrize("amount", ["²", "١٠٠٠", "１０００", "1000²"])
def test_topup_amounts_with_non_ascii_digits_get_the_amount_form(shop: Shop, amount: str) -> None:
    response = shop.http.get(f"/topup/{shop.token(BUYER)}", params={"amount": amount})
    assert response.status_code == 400
    assert "Please enter an amount" in response.text
    assert shop.fake.sessions == {}


def test_typed_amounts_with_non_ascii_digits_get_the_amount_form(shop: Shop) -> None:
    response = shop.http.get(f"/topup/{shop.token(BUYER)}", params={"major": "١٠"})
    assert response.status_code == 400 and "Please enter an amount" in response.text
    assert shop.fake.sessions == {}


# --- 2. signed events of the wrong shape -------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = event
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def _drop(path: str) -> Edit:
    def edit(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = event
        for key in parents:
            node = node[key]
        del node[last]

    return edit


MALFORMED: dict[str, tuple[Edit, str]] = {
    "metadata a string": (_set("data.object.metadata", "buyer"), "data.object.metadata"),
    "amount_total true": (_set("data.object.amount_total", True), "data.object.amount_total"),
    "amount_total beyond 64 bits": (
        _set("data.object.amount_total", 99999999999999999999999),
        "data.object.amount_total",
    ),
    "amount_total negative": (_set("data.object.amount_total", -5000), "data.object.amount_total"),
    "amount_total a string": (_set("data.object.amount_total", "5000"), "data.object.amount_total"),
    "amount_total missing": (_drop("data.object.amount_total"), "data.object.amount_total"),
    "event id missing": (_drop("id"), "id"),
    "event id null": (_set("id", None), "id"),
    "event id a number": (_set("id", 12), "id"),
    "type missing": (_drop("type"), "type"),
    "data.object a list": (_set("data.object", []), "data.object"),
    "session id an object": (_set("data.object.id", {"id": "cs_1"}), "data.object.id"),
    "currency not a code": (_set("data.object.currency", "e1"), "data.object.currency"),
    "currency missing": (_set("data.object.currency", None), "data.object.currency"),
    "campaign a number": (
        _set("data.object.metadata.campaign", 7),
        "data.object.metadata.campaign",
    ),
    "payment_intent a number": (
        _set("data.object.payment_intent", 7),
        "data.object.payment_intent",
    ),
    "buyer too long for a wallet": (
        _set("data.object.client_reference_id", "mastodon:" + "9" * 300),
        "data.object.client_reference_id",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_signed_paid_event_of_the_wrong_shape_is_refused_and_changes_nothing(
    shop: Shop, name: str
) -> None:
    edit, field = MALFORMED[name]
    shop.order(BUYER)
    good = shop.fake.event("checkout.session.completed", shop.paid_checkout(BUYER, 29900))
    bad = json.loads(json.dumps(good))
    bad["id"] = "evt_malformed"
    edit(bad)

    response = shop.deliver(bad)

    assert response.status_code == 400, response.text
    assert response.json() == {"error": "malformed event", "field": field}
    assert _nothing_changed(shop)
    assert shop.balance(BUYER) == 0
    # The genuine event, delivered afterwards, still credits once.
    assert shop.deliver(good).json()["outcome"] == "credited"
    assert shop.deliver(good).json()["duplicate"]
    assert shop.count(transfers, transfers.c.kind == "topup") == 1


def test_money_paid_for_a_campaign_no_longer_served_is_still_credited_once(shop: Shop) -> None:
    """The buyer paid: the top-up is theirs to spend or cash out, in the currency they paid in,
    whatever became of the campaign (reconciliation would credit it too)."""
    made = shop.fake.create_session(buyer=BUYER, amount=5000, currency="eur", campaign="gone")
    event = shop.fake.event("checkout.session.completed", shop.fake.pay(made["id"]))
    assert shop.deliver(event).json()["outcome"] == "credited"
    assert shop.deliver(event).json()["duplicate"]
    assert shop.balance(BUYER, "EUR") == 5000


@pytest.mark.parametrize(
    ("kind", "obj", "field"),
    [
        (
            "charge.refunded",
            {"id": "ch_1", "amount_refunded": "100"},
            "data.object.amount_refunded",
        ),
        ("charge.refunded", {"id": "ch_1", "amount_refunded": -1}, "data.object.amount_refunded"),
        ("charge.refunded", {"id": "ch_1"}, "data.object.amount_refunded"),
        ("charge.refunded", {"amount_refunded": 100}, "data.object.id"),
        (
            "charge.refunded",
            {"id": "ch_1", "amount_refunded": 1, "payment_intent": ["pi"]},
            "data.object.payment_intent",
        ),
        ("checkout.session.expired", {"id": {"$ne": None}}, "data.object.id"),
        ("refund.failed", {"id": None, "status": "failed"}, "data.object.id"),
        ("refund.updated", {"id": "re_1", "status": 3}, "data.object.status"),
    ],
)
def test_other_handled_events_of_the_wrong_shape_are_refused(
    shop: Shop, kind: str, obj: dict[str, Any], field: str
) -> None:
    response = shop.deliver(shop.fake.event(kind, obj))
    assert response.status_code == 400
    assert response.json() == {"error": "malformed event", "field": field}
    assert _nothing_changed(shop)


def test_events_flashtag_does_not_handle_keep_their_answer(shop: Shop) -> None:
    odd = shop.fake.event("customer.updated", {"id": "cus_1", "balance": "lots", "metadata": "x"})
    no_object = shop.fake.event("invoice.created", {})
    del no_object["data"]["object"]
    for event in (odd, no_object):
        response = shop.deliver(event)
        assert response.status_code == 200 and response.json()["outcome"] == "ignored"


# --- 3. body size ------------------------------------------------------------------------------


def _raw_post(shop: Shop, headers: list[tuple[bytes, bytes]], total: int) -> tuple[int, int]:
    """POST `total` bytes to the webhook straight through ASGI, in 64 KiB chunks; returns the
    status and how many bytes the app pulled."""
    chunk = b" " * 65536
    pulled = 0
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled >= total:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": pulled < total}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/stripe/webhook",
        "raw_path": b"/stripe/webhook",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"shop.example"), (b"stripe-signature", b"t=1,v1=00"), *headers],
        "client": ("203.0.113.9", 40000),
        "server": ("shop.example", 443),
    }
    asyncio.run(shop.app(scope, receive, send))
    return messages[0]["status"], pulled


def test_a_chunked_body_is_not_read_past_the_limit(shop: Shop) -> None:
    status, pulled = _raw_post(shop, [(b"transfer-encoding", b"chunked")], 50 * 1024 * 1024)
    assert status == 413
    assert pulled <= MAX_WEBHOOK_BODY + 65536
    assert shop.count(stripe_events) == 0


def test_a_declared_oversized_body_is_refused_unread(shop: Shop) -> None:
    size = 50 * 1024 * 1024
    status, pulled = _raw_post(shop, [(b"content-length", str(size).encode())], size)
    assert (status, pulled) == (413, 0)
    response = shop.http.post("/stripe/webhook", content=b"{" * (MAX_WEBHOOK_BODY + 1))
    assert response.status_code == 413


def test_a_signed_event_just_under_the_limit_still_counts(shop: Shop) -> None:
    event = shop.fake.event("checkout.session.completed", shop.paid_checkout(BUYER, 5000))
    text = json.dumps(event)
    text += " " * (MAX_WEBHOOK_BODY - len(text))
    header = stripe.WebhookSignature.generate_signature_header(text, WEBHOOK_SECRET)
    response = shop.http.post(
        "/stripe/webhook", content=text.encode(), headers={"Stripe-Signature": header}
    )
    assert response.status_code == 200 and response.json()["outcome"] == "credited"


# --- 4. signed payloads that do not parse ------------------------------------------------------


@pytest.mark.parametrize("text", ["{oops", "", "[1, 2]", '"evt"', "null"])
def test_a_signed_body_that_is_not_a_json_object_is_called_malformed(shop: Shop, text: str) -> None:
    header = stripe.WebhookSignature.generate_signature_header(text, WEBHOOK_SECRET)
    response = shop.http.post(
        "/stripe/webhook", content=text.encode(), headers={"Stripe-Signature": header}
    )
    assert response.status_code == 400 and response.json()["error"] == "malformed JSON"
    assert shop.count(stripe_events) == 0


def test_a_body_that_is_not_utf8_is_refused_without_a_check_it_cannot_pass(shop: Shop) -> None:
    """Stripe signs UTF-8 JSON, and its library checks signatures over text only."""
    _body, headers = signed(shop.fake.event("customer.created", {"id": "cus_1"}))
    response = shop.http.post("/stripe/webhook", content=b'{"id": "evt_\xff\xfe"}', headers=headers)
    assert response.status_code == 400 and response.json()["error"] == "invalid signature"
    assert shop.count(stripe_events) == 0


def test_unsigned_garbage_is_an_invalid_signature_not_malformed_json(shop: Shop) -> None:
    _body, headers = signed(shop.fake.event("customer.created", {"id": "cus_1"}))
    response = shop.http.post("/stripe/webhook", content=b"{oops", headers=headers)
    assert response.status_code == 400 and response.json()["error"] == "invalid signature"
    assert shop.count(stripe_events) == 0


# --- 5. HEAD -----------------------------------------------------------------------------------


def test_probes_may_use_head(shop: Shop) -> None:
    for path in ("/healthz", f"/me/{shop.token(BUYER, purpose='me')}", "/c/drop"):
        got = shop.http.get(path)
        head = shop.http.head(path)
        assert (head.status_code, got.status_code) == (200, 200), path
        assert head.headers["content-type"] == got.headers["content-type"]
    assert shop.http.head("/c/nope").status_code == 404


# --- 6. two brands, one campaign id ------------------------------------------------------------


def test_two_brands_with_one_campaign_id_stop_the_web_process_with_one_line(
    shop: Shop,
) -> None:
    from bot.cli import explain
    from bot.web import DuplicateCampaignError, create_app
    from config.loader import parse_brand

    other = parse_brand(SHOP_BRAND.replace('id = "shop"', 'id = "rival"'), "rival.toml")
    with pytest.raises(DuplicateCampaignError) as caught:
        create_app(
            shop.settings,
            shop.factory,
            [*shop.brands, other],
            shop.clock,
            stripe_client=shop.stripe,
            signer=shop.signer,
        )
    message = str(caught.value)
    assert "'drop'" in message and "'shop'" in message and "'rival'" in message
    assert isinstance(caught.value, ValueError)
    reason = explain(caught.value)
    assert reason is not None and "\n" not in reason and "'rival'" in reason
