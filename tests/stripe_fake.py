"""A small stateful Stripe API on `responses`, returning Stripe's documented object shapes.

It keeps Checkout Sessions, PaymentIntents, charges and refunds in memory and honours the
`Idempotency-Key` header the way Stripe's v1 API does: a request with a key it has answered
before gets the saved answer (a different body under the same key is an `idempotency_error`).
Faults can be queued for the next calls: `"500"` (an error before anything is created),
`"timeout"` (the connection times out before Stripe sees the request) and `"lost"` (Stripe
creates the object but the answer never arrives: a read timeout).

Webhook events are built as Stripe sends them (`object: "event"`, `data.object`) and signed with
`stripe.WebhookSignature.generate_signature_header`, the library's own v1 scheme.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import requests
import responses
import stripe

if TYPE_CHECKING:
    from bot.links import Purpose

API = "https://api.stripe.com"
WEBHOOK_SECRET = "whsec_test_0123456789abcdef0123456789abcdef"
API_VERSION = "2025-10-29.clover"


def _unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`metadata[buyer]=x&line_items[0][quantity]=1` back into nested dicts/lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append({})
                if last:
                    node[idx] = value
                else:
                    if not isinstance(node[idx], (dict, list)) or not node[idx]:
                        node[idx] = [] if parts[i + 1].isdigit() else {}
                    node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if parts[i + 1].isdigit() else {})
    return root


@dataclass
class FakeStripe:
    """In-memory Stripe; `install(rsps)` registers its endpoints on a `responses` mock."""

    now: float = field(default_factory=time.time)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    refund_status: str = "succeeded"
    faults: list[str] = field(default_factory=list)
    saved: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def _id(self, prefix: str) -> str:
        return f"{prefix}_test_{next(self._ids):08d}"

    # --- HTTP ----------------------------------------------------------------------------------

    def install(self, rsps: responses.RequestsMock) -> None:
        rsps.add_callback("POST", f"{API}/v1/checkout/sessions", callback=self._create_session)
        rsps.add_callback(
            "GET", re.compile(rf"{API}/v1/checkout/sessions(\?.*)?$"), callback=self._list_sessions
        )
        rsps.add_callback("POST", f"{API}/v1/refunds", callback=self._create_refund)

    def _fault(self) -> str | None:
        return self.faults.pop(0) if self.faults else None

    def _idempotent(self, request: Any, create: Any) -> tuple[int, dict[str, str], str]:
        key = request.headers.get("Idempotency-Key")
        body = request.body.decode() if isinstance(request.body, bytes) else request.body or ""
        self.requests.append((request.method, request.url, key))
        fault = self._fault()
        if fault == "timeout":
            raise requests.exceptions.ConnectTimeout("connect timed out")
        if fault == "500":
            return 500, {"Request-Id": "req_fault"}, json.dumps(_error("api_error", "boom"))
        if key and key in self.saved:
            saved_body, status, answer = self.saved[key]
            if saved_body != body:
                err = _error(
                    "idempotency_error",
                    "Keys for idempotent requests can only be used "
                    "with the same parameters they were first used with.",
                )
                return 400, {}, json.dumps(err)
            result = (status, {"Idempotent-Replayed": "true"}, answer)
        else:
            params = _unflatten(parse_qsl(body, keep_blank_values=True))
            status, answer = create(params)
            if key:
                self.saved[key] = (body, status, answer)
            result = (status, {"Request-Id": self._id("req")}, answer)
        if fault == "lost":
            raise requests.exceptions.ReadTimeout("read timed out")
        return result

    def _create_session(self, request: Any) -> tuple[int, dict[str, str], str]:
        return self._idempotent(request, self._new_session)

    def _new_session(self, params: dict[str, Any]) -> tuple[int, str]:
        expires_at = int(params["expires_at"])
        if not self.now + 1800 <= expires_at <= self.now + 86400:
            err = _error(
                "invalid_request_error",
                "The `expires_at` timestamp must be between 30 minutes and 24 hours from "
                "Checkout Session creation.",
            )
            return 400, json.dumps(err)
        item = params["line_items"][0]
        amount = int(item["price_data"]["unit_amount"]) * int(item["quantity"])
        sid = self._id("cs")
        session = {
            "id": sid,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": int(self.now),
            "currency": item["price_data"]["currency"],
            "customer": None,
            "customer_details": None,
            "expires_at": expires_at,
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "mode": params["mode"],
            "payment_intent": None,
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params.get("success_url"),
            "url": f"https://checkout.stripe.com/c/pay/{sid}#fidkdWxOYHwnPyd1blpxYHZxWjA0",
        }
        self.sessions[sid] = session
        return 200, json.dumps(session)

    def _list_sessions(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.requests.append((request.method, request.url, None))
        query = _unflatten(parse_qsl(urlsplit(request.url).query))
        if self._fault() == "500":
            return 500, {}, json.dumps(_error("api_error", "boom"))
        limit = int(query.get("limit", 10))
        gte = int(query.get("created", {}).get("gte", 0))
        found = [
            s
            for s in sorted(self.sessions.values(), key=lambda s: (-s["created"], s["id"]))
            if s["created"] >= gte
            and (not query.get("status") or s["status"] == query["status"])
            and (not query.get("payment_intent") or s["payment_intent"] == query["payment_intent"])
        ]
        after = query.get("starting_after")
        if after:
            ids = [s["id"] for s in found]
            found = found[ids.index(after) + 1 :]
        page = found[:limit]
        body = {
            "object": "list",
            "data": page,
            "has_more": len(found) > limit,
            "url": "/v1/checkout/sessions",
        }
        return 200, {}, json.dumps(body)

    def _create_refund(self, request: Any) -> tuple[int, dict[str, str], str]:
        return self._idempotent(request, self._new_refund)

    def _new_refund(self, params: dict[str, Any]) -> tuple[int, str]:
        intent = self.intents.get(params.get("payment_intent", ""))
        if intent is None:
            return 400, json.dumps(_error("invalid_request_error", "No such payment_intent"))
        charge = self.charges[intent["latest_charge"]]
        amount = int(params.get("amount", charge["amount"] - charge["amount_refunded"]))
        if amount > charge["amount"] - charge["amount_refunded"]:
            err = _error("invalid_request_error", "Refund amount is greater than unrefunded amount")
            return 400, json.dumps(err)
        if self.refund_status != "failed":
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refund = {
            "id": self._id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "created": int(self.now),
            "currency": charge["currency"],
            "metadata": params.get("metadata", {}),
            "payment_intent": intent["id"],
            "reason": params.get("reason"),
            "status": self.refund_status,
        }
        self.refunds[refund["id"]] = refund
        return 200, json.dumps(refund)

    # --- what happens at Stripe outside our calls ---------------------------------------------

    def create_session(
        self, *, buyer: str, amount: int, currency: str = "usd", campaign: str = "demo"
    ) -> dict[str, Any]:
        """A session made some other way (e.g. its creation answer was lost long ago)."""
        status, body = self._new_session(
            {
                "mode": "payment",
                "client_reference_id": buyer,
                "metadata": {"buyer": buyer, "campaign": campaign},
                "line_items": [
                    {
                        "quantity": "1",
                        "price_data": {"currency": currency, "unit_amount": str(amount)},
                    }
                ],
                "expires_at": str(int(self.now) + 3600),
            }
        )
        assert status == 200, body
        return json.loads(body)

    def pay(self, session_id: str, *, async_payment: bool = False) -> dict[str, Any]:
        """The buyer pays: the session completes (paid, or unpaid until an async method
        clears) and gets a PaymentIntent with a charge. Returns the session object."""
        session = self.sessions[session_id]
        intent_id = self._id("pi")
        charge_id = self._id("ch")
        self.charges[charge_id] = {
            "id": charge_id,
            "object": "charge",
            "amount": session["amount_total"],
            "amount_captured": session["amount_total"],
            "amount_refunded": 0,
            "captured": True,
            "currency": session["currency"],
            "metadata": {},
            "paid": True,
            "payment_intent": intent_id,
            "refunded": False,
            "status": "succeeded",
        }
        self.intents[intent_id] = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": session["amount_total"],
            "currency": session["currency"],
            "latest_charge": charge_id,
            "status": "processing" if async_payment else "succeeded",
        }
        session.update(
            status="complete",
            payment_intent=intent_id,
            payment_status="unpaid" if async_payment else "paid",
            url=None,
        )
        return dict(session)

    def settle_async(self, session_id: str) -> dict[str, Any]:
        session = self.sessions[session_id]
        session["payment_status"] = "paid"
        self.intents[session["payment_intent"]]["status"] = "succeeded"
        return dict(session)

    def refund_in_dashboard(self, session_id: str, amount: int) -> dict[str, Any]:
        """A refund made in the Stripe dashboard; returns the charge for `charge.refunded`."""
        intent = self.intents[self.sessions[session_id]["payment_intent"]]
        charge = self.charges[intent["latest_charge"]]
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return dict(charge)

    def event(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self._id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(self.now),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def signed(
    event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a webhook delivery, signed as Stripe signs them."""
    payload = json.dumps(event, indent=2)
    header = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=int(time.time()) if timestamp is None else timestamp
    )
    return payload.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        from datetime import UTC, datetime

        self.now = datetime.fromtimestamp(int(now), UTC)

    def __call__(self) -> Any:
        return self.now

    def advance(self, **delta: float) -> None:
        from datetime import timedelta

        self.now += timedelta(**delta)


def no_retry_sleep(monkeypatch: Any) -> None:
    """Keep the Stripe library's network retries but skip their real back-off sleeps."""
    from stripe._http_client import HTTPClient

    monkeypatch.setattr(HTTPClient, "_sleep_time_seconds", lambda self, n: 0.0)


SHOP_BRAND = """
[brand]
id = "shop"
name = "Shop <Phones> & Co"

[[campaigns]]
id = "drop"
name = "Phone drop"
hashtag = "PhoneDrop"
currency = "USD"
opens_at = 2026-01-01T00:00:00Z
closes_at = 2036-01-01T00:00:00Z
per_buyer_limit = 5
hold_minutes = 60
topup_min = 500
topup_max = 200000

[[campaigns.products]]
sku = "PHONE"
name = "Phone <b>64GB</b>"
price = 29900
stock = 2

[[campaigns.products]]
sku = "CASE"
name = "Case"
price = 1000
stock = 1000
"""


class Shop:
    """A running web app on a fresh database, with Stripe faked and a hand-moved clock."""

    def __init__(self, db_url: str, tmp_path: Any, monkeypatch: Any) -> None:
        from fastapi.testclient import TestClient
        from pydantic import SecretStr

        from bot.links import LinkSigner
        from bot.web import create_app
        from config.database import create_engine, session_factory
        from config.loader import load_brand
        from config.settings import Settings
        from orders.campaigns import load_campaigns
        from wallet.stripe_payments import make_client

        no_retry_sleep(monkeypatch)
        path = tmp_path / "shop.toml"
        path.write_text(SHOP_BRAND, encoding="utf-8")
        self.brands = [load_brand(path)]
        self.engine = create_engine(db_url)
        self.factory = session_factory(self.engine)
        self.fake = FakeStripe()
        self.rsps = responses.RequestsMock(assert_all_requests_are_fired=False)
        self.rsps.start()
        self.fake.install(self.rsps)
        self.clock = Clock(self.fake.now)
        with self.factory.begin() as session:
            load_campaigns(session, self.brands, now=self.clock.now)
        self.settings = Settings(
            STRIPE_WEBHOOK_SECRET=SecretStr(WEBHOOK_SECRET),
            FLASHTAG_LINK_SECRET=SecretStr("link-secret-for-tests-0123456789"),
            PUBLIC_URL="https://shop.example",
        )
        self.signer = LinkSigner(b"link-secret-for-tests-0123456789")
        self.stripe = make_client("sk_test_fake", max_network_retries=2)
        self.app = create_app(
            self.settings,
            self.factory,
            self.brands,
            self.clock,
            stripe_client=self.stripe,
            signer=self.signer,
        )
        # Entered once: one event loop for every request, not a new one per request.
        self.http = TestClient(self.app, follow_redirects=False).__enter__()
        self._posts = itertools.count(1)

    def close(self) -> None:
        self.http.__exit__(None, None, None)
        self.rsps.stop()
        self.rsps.reset()
        self.engine.dispose()

    def token(self, buyer: str, campaign: str = "drop", purpose: Purpose = "pay") -> str:
        """A buyer link token: `pay` opens `/topup/`, `me` opens `/me/`."""
        return self.signer.issue(buyer, campaign, purpose=purpose, now=self.clock.now)

    def order(
        self, buyer: str, sku: str = "PHONE", quantity: int = 1, handle: str = "fan"
    ) -> list[Any]:
        from orders.commands import Command, Decision
        from orders.engine import apply

        command = Command(
            platform=buyer.split(":")[0],
            post_id=str(next(self._posts)),
            buyer=buyer,
            handle=handle,
            posted_at=self.clock.now,
            decision=Decision("order", sku=sku, quantity=quantity),
            campaign_id="drop",
        )
        with self.factory.begin() as session:
            return apply(session, [command], now=self.clock.now)

    def deliver(
        self, event: dict[str, Any], *, timestamp: int | None = None, secret: str = WEBHOOK_SECRET
    ) -> Any:
        body, headers = signed(event, secret=secret, timestamp=timestamp)
        return self.http.post("/stripe/webhook", content=body, headers=headers)

    def paid_checkout(self, buyer: str, amount: int) -> dict[str, Any]:
        """The buyer opens their top-up link and pays; returns the completed session."""
        response = self.http.get(f"/topup/{self.token(buyer)}", params={"amount": amount})
        assert response.status_code in (200, 303), response.text
        session_id = max(self.fake.sessions)
        return self.fake.pay(session_id)

    def balance(self, buyer: str, currency: str = "USD") -> int:
        from wallet import ledger

        with self.factory() as session:
            return ledger.available(session, buyer, currency)

    def audit(self) -> list[str]:
        from orders.audit import audit

        with self.factory() as session:
            return audit(session)

    def count(self, table: Any, *where: Any) -> int:
        from sqlalchemy import func, select

        with self.factory() as session:
            return int(
                session.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
            )
