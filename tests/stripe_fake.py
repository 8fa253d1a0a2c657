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
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import responses
import stripe

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
            if s["created"] >= gte and (not query.get("status") or s["status"] == query["status"])
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
            "status": "succeeded",
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
