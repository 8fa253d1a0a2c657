"""The web process: top-up links, the Stripe webhook, the buyer status page, campaign stock.

- `GET /topup/{token}?amount=` (a `pay` token) opens a Stripe Checkout Session for the link's
  buyer and campaign and redirects there (amount in minor units, within the campaign's
  `topup_min..topup_max`). Stripe down or slow: a 503 page asking to try again; the retry
  reuses the idempotency key, so Stripe never makes a second session for the same link and
  amount.
- `POST /stripe/webhook` reads at most `MAX_WEBHOOK_BODY` bytes (413 beyond), verifies
  `Stripe-Signature` on the raw body (400 and no change when it is missing, forged or older than
  300 s), refuses a signed event that is not JSON or whose fields do not have the shape Stripe
  and `open_checkout` give them (400 naming the field, no change), records the event id once,
  and applies paid Checkout Sessions (credit, settle, queue replies: one transaction) and
  `charge.refunded` (debit).
- `GET /me/{token}` (a `me` token): the buyer's reservations, queue positions, hold deadlines
  and balance. A token works on its own route only, and both go to the buyer by direct message.
- `GET /c/{campaign}`: stock left per SKU and reservations per state.
- `GET /healthz`: 200 when the database answers.

Every `GET` page also answers `HEAD` (uptime probes use it), except `/topup/`, which opens a
Checkout Session at Stripe and so is not a safe method to repeat for a probe.

Every page is plain HTML that works on a phone, and every value on it is escaped.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import stripe
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from bot.jobs_payments import apply_topup
from bot.links import (
    ExpiredLinkError,
    InvalidLinkError,
    LinkSigner,
    Purpose,
    link_id,
    signer_for,
    status_url,
)
from bot.replies import money
from config.brand import Brand, Campaign
from config.settings import Settings
from orders import queue
from orders.campaigns import CampaignOwnedError
from orders.tables import products, reservations
from wallet import ledger
from wallet.errors import InvalidTransfer
from wallet.stripe_payments import (
    BadSignatureError,
    MalformedPayloadError,
    PaidSession,
    PaymentError,
    StripeRejectedError,
    StripeUnavailableError,
    TopupRequest,
    apply_charge_refunded,
    charge_payment_intent,
    is_buyer_key,
    knows_payment,
    make_client,
    mark_session_expired,
    open_checkout,
    paid_session,
    record_event,
    refund_failed,
    session_for_payment,
    set_event_outcome,
    verify_event,
)
from wallet.stripe_tables import stripe_checkout_sessions

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
PAID_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
EXPIRED_EVENTS = ("checkout.session.expired", "checkout.session.async_payment_failed")
REFUND_EVENTS = ("refund.failed", "refund.updated")
_WEBHOOK_ATTEMPTS = 3
# Stripe's events are a few KiB; anything far larger is not from Stripe and is not read.
MAX_WEBHOOK_BODY = 256 * 1024
# Amounts are stored as BigInteger minor units.
_MAX_AMOUNT = 2**63 - 1
# Stripe's ids are far shorter; this keeps every key built from one within the 255-character
# columns that store them (e.g. "charge:<id>:<amount>").
_MAX_ID = 200


class DuplicateCampaignError(CampaignOwnedError):
    """Two brands define the same campaign id; the web process refuses to start rather than
    silently serve one of them."""


@dataclass(frozen=True)
class Site:
    """Everything the handlers share."""

    settings: Settings
    factory: sessionmaker[Session]
    campaigns: Mapping[str, tuple[Brand, Campaign]]
    brands: Sequence[Brand]
    clock: Clock
    signer: LinkSigner
    stripe: stripe.StripeClient | None


# --- HTML --------------------------------------------------------------------------------------

_STYLE = (
    "body{font-family:system-ui,-apple-system,sans-serif;max-width:40rem;margin:0 auto;"
    "padding:1rem;line-height:1.45;color:#222}h1{font-size:1.4rem}h2{font-size:1.1rem}"
    "table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .25rem;"
    "border-bottom:1px solid #ddd;vertical-align:top}.note{background:#fff7d6;padding:.6rem;"
    "border-radius:.3rem}.big{font-size:1.3rem;font-weight:600}a.button,button{display:inline-block;"
    "padding:.6rem 1rem;background:#1a5fd0;color:#fff;border:0;border-radius:.3rem;"
    "text-decoration:none;font-size:1rem}input{font-size:1rem;padding:.4rem;width:8rem}"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, status: int = 200, lang: str = "en") -> HTMLResponse:
    doc = (
        f'<!doctype html><html lang="{_e(lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers={"Cache-Control": "no-store"})


def _when(at: datetime | None, campaign: Campaign) -> str:
    if at is None:
        return ""
    try:
        zone = ZoneInfo(campaign.timezone)
    except (KeyError, ValueError):
        zone = ZoneInfo("UTC")
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


# --- queries -----------------------------------------------------------------------------------


def _hold_deadline(
    session: Session, buyer: str, campaign_id: str, now: datetime
) -> datetime | None:
    """When the buyer's earliest live hold lapses (None when nothing is held for them)."""
    r = reservations
    found: datetime | None = session.execute(
        select(func.min(r.c.hold_expires_at)).where(
            r.c.buyer == buyer,
            r.c.campaign_id == campaign_id,
            r.c.state == "awaiting_payment",
            r.c.hold_expires_at > now,
        )
    ).scalar_one()
    return found


def _amount_due(session: Session, buyer: str, campaign: Campaign, now: datetime) -> int:
    """What the buyer's live holds cost beyond their credit."""
    r = reservations
    due = session.execute(
        select(func.coalesce(func.sum(r.c.amount), 0)).where(
            r.c.buyer == buyer,
            r.c.campaign_id == campaign.id,
            r.c.state == "awaiting_payment",
            r.c.hold_expires_at > now,
        )
    ).scalar_one()
    return max(int(due) - ledger.available(session, buyer, campaign.currency), 0)


# --- handlers ----------------------------------------------------------------------------------


def _link(site: Site, token: str, purpose: Purpose) -> tuple[Any, Brand, Campaign] | HTMLResponse:
    """The link behind `token`, which must have been signed for this route's `purpose` (a status
    token never opens a payment, a payment token never shows the status page)."""
    try:
        link = site.signer.verify(token, purpose=purpose, now=site.clock())
    except ExpiredLinkError:
        return _page(
            "This link has expired",
            "<p>Ask the bot for a fresh one: reply <b>status</b> or <b>topup</b> to it.</p>",
            410,
        )
    except InvalidLinkError:
        return _page("Link not found", "<p>This link is not valid.</p>", 404)
    found = site.campaigns.get(link.campaign_id)
    if found is None:
        return _page("Link not found", "<p>This sale is not running here.</p>", 404)
    return link, found[0], found[1]


def _major(amount: int, campaign: Campaign) -> str:
    """Minor units as the plain decimal a buyer types: 29900 -> "299.00"."""
    digits = campaign.minor_digits
    sign = "-" if amount < 0 else ""
    whole, part = divmod(abs(amount), 10**digits)
    return f"{sign}{whole}.{part:0{digits}d}" if digits else f"{sign}{whole}"


def parse_major(text: str, campaign: Campaign) -> int | None:
    """A decimal amount typed by a buyer ("50", "49.90") in minor units, exactly; None if it is
    not a plain non-negative number with at most the currency's decimals."""
    text = text.strip().replace(",", ".")
    if not text or len(text) > 15 or not all(c in "0123456789." for c in text):
        return None
    try:
        value = Decimal(text) * (10**campaign.minor_digits)
    except InvalidOperation:
        return None
    if value != value.to_integral_value():
        return None
    return int(value)


def _topup_form(token: str, campaign: Campaign, amount: int, error: str = "") -> str:
    lo, hi = money(campaign.topup_min, campaign), money(campaign.topup_max, campaign)
    msg = f'<p class="note">{_e(error)}</p>' if error else ""
    return (
        f"{msg}<p>Top up your wallet for {_e(campaign.name)} with Stripe: between {_e(lo)} and "
        f"{_e(hi)}. Unused credit can be refunded to your card.</p>"
        f'<form method="get" action="/topup/{_e(token)}">'
        f'<label>Amount ({_e(campaign.currency)}) <input name="major" inputmode="decimal" '
        f'value="{_e(_major(amount, campaign))}"></label> '
        '<button type="submit">Pay with Stripe</button></form>'
    )


def topup(site: Site, token: str, amount_text: str | None, major: str | None = None) -> Response:
    """`amount` is minor units (links the bot sends); `major` is what a buyer types in the form."""
    found = _link(site, token, "pay")
    if isinstance(found, HTMLResponse):
        return found
    link, brand, campaign = found
    now = site.clock()
    with site.factory() as session:
        suggested = max(_amount_due(session, link.buyer, campaign, now), campaign.topup_min)
        hold_deadline = _hold_deadline(session, link.buyer, campaign.id, now)
    suggested = min(suggested, campaign.topup_max)
    if not amount_text and not major:
        return _page("Top up", _topup_form(token, campaign, suggested), lang=campaign.language)
    if amount_text:
        # ASCII digits only: str.isdigit() is also true for "²", which int() refuses.
        plain = amount_text.isascii() and amount_text.isdecimal() and len(amount_text) <= 12
        parsed = int(amount_text) if plain else None
    else:
        parsed = parse_major(major or "", campaign)
    if parsed is None:
        form = _topup_form(token, campaign, suggested, "Please enter an amount like 50.00.")
        return _page("Top up", form, 400, campaign.language)
    amount = parsed
    if not campaign.topup_min <= amount <= campaign.topup_max:
        error = (
            f"Top-ups are between {money(campaign.topup_min, campaign)} and "
            f"{money(campaign.topup_max, campaign)}."
        )
        return _page(
            "Top up", _topup_form(token, campaign, suggested, error), 400, campaign.language
        )
    if site.stripe is None:
        log.error("top-up asked but STRIPE_SECRET_KEY is not set")
        return _page("Payments are not available", "<p>Please try again later.</p>", 503)
    # Stripe sends the buyer back to their status page: a `me` token with this link's expiry, so
    # the same link and amount always make the same request (Stripe's idempotency key needs it).
    me_token = site.signer.sign(link.buyer, link.campaign_id, link.expires_at, purpose="me")
    me = status_url(site.settings.public_url, me_token)
    request = TopupRequest(
        link_id=link_id(token),
        buyer=link.buyer,
        campaign_id=campaign.id,
        currency=campaign.currency,
        amount=amount,
        product_name=f"{brand.brand.name} credit ({campaign.name})",
        success_url=f"{me}?paid=1",
        cancel_url=me,
        hold_deadline=hold_deadline,
    )
    try:
        checkout = open_checkout(site.factory, site.stripe, request, now=now)
    except StripeUnavailableError:
        retry = f"/topup/{token}?amount={amount}"
        return _page(
            "Payment is busy, please try again",
            "<p>Stripe did not answer in time. Nothing was charged.</p>"
            f'<p><a class="button" href="{_e(retry)}">Try again</a></p>'
            "<p>Trying again is safe: you will get the same payment page, never a second charge "
            "for this link.</p>",
            503,
            campaign.language,
        )
    except StripeRejectedError:
        return _page(
            "Payment could not be started",
            "<p>Stripe refused this payment. Nothing was charged. Please ask the bot for a new "
            "top-up link.</p>",
            502,
            campaign.language,
        )
    if checkout.outlives_hold and hold_deadline is not None:
        body = (
            '<p class="note">Your reservation is held until '
            f"<b>{_e(_when(hold_deadline, campaign))}</b>. Stripe keeps its payment page open "
            "for at least 30 minutes, so if you pay "
            "after that time the money stays in your wallet as credit: it is used for your next "
            "order or refunded on request, never lost.</p>"
            f"<p>Amount: <b>{_e(money(amount, campaign))}</b></p>"
            f'<p><a class="button" href="{_e(checkout.url)}">Continue to payment</a></p>'
        )
        return _page("Top up", body, 200, campaign.language)
    return RedirectResponse(checkout.url, status_code=303, headers={"Cache-Control": "no-store"})


def _apply(site: Site, session: Session, paid: PaidSession, now: datetime) -> str:
    applied = apply_topup(session, paid, brands=site.brands, now=now, via="webhook")
    return "credited" if applied is not None else "already_credited"


def _handle_event(
    site: Site, session: Session, event: Mapping[str, Any], paid_first: PaidSession | None
) -> str:
    kind = event.get("type")
    obj = (event.get("data") or {}).get("object") or {}
    now = site.clock()
    if kind in PAID_EVENTS:
        paid = paid_session(obj)
        if paid is None:
            return "unpaid" if obj.get("payment_status") != "paid" else "not_a_topup"
        return _apply(site, session, paid, now)
    if kind in EXPIRED_EVENTS:
        mark_session_expired(session, obj)
        return "expired"
    if kind == "charge.refunded":
        prefix = ""
        if paid_first is not None:  # the refund overtook its top-up: apply the top-up first
            prefix = _apply(site, session, paid_first, now) + ","
        return f"{prefix}debited:{apply_charge_refunded(session, obj, at=now)}"
    if kind in REFUND_EVENTS:
        return f"restored:{refund_failed(session, obj, at=now)}"
    return "ignored"


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID


def _is_amount(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_AMOUNT


def _intent_problem(obj: Mapping[str, Any]) -> str | None:
    intent = obj.get("payment_intent")
    if isinstance(intent, Mapping):  # expanded
        intent = intent.get("id")
    if intent is not None and not _is_id(intent):
        return "data.object.payment_intent"
    return None


def _checkout_problem(obj: Mapping[str, Any]) -> str | None:
    """What is wrong with a `checkout.session` in a paid event. A paid session flashtag made
    must carry a buyer the ledger knows, its amount and a currency code. Another
    integration's session only needs a readable shape."""
    if not _is_id(obj.get("id")):
        return "data.object.id"
    for name in ("object", "mode", "payment_status", "client_reference_id", "currency"):
        if not isinstance(obj.get(name), str | None):
            return f"data.object.{name}"
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        return "data.object.metadata"
    for key in ("buyer", "campaign", "topup_key"):
        if not isinstance(metadata.get(key), str | None):
            return f"data.object.metadata.{key}"
    amount = obj.get("amount_total")
    if amount is not None and not _is_amount(amount):
        return "data.object.amount_total"
    if problem := _intent_problem(obj):
        return problem
    paid = (obj.get("object"), obj.get("mode"), obj.get("payment_status"))
    buyer = obj.get("client_reference_id") or metadata.get("buyer")
    if paid != ("checkout.session", "payment", "paid") or not is_buyer_key(buyer):
        return None  # unpaid, or another integration's payment: acknowledged, left alone
    try:
        ledger.wallet_of(buyer)
    except InvalidTransfer:
        return "data.object." + (
            "client_reference_id" if obj.get("client_reference_id") else "metadata.buyer"
        )
    if amount is None:
        return "data.object.amount_total"
    # The money arrived: it is credited in the currency it was paid in, even for a campaign
    # since removed from the brand files, as reconciliation would credit it.
    currency = obj.get("currency") or ""
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
        return "data.object.currency"
    return None


# The event types whose objects `webhook` reads, and so checks first.
_CHECKED_EVENTS = frozenset((*PAID_EVENTS, *EXPIRED_EVENTS, *REFUND_EVENTS, "charge.refunded"))


def _event_problem(event: Mapping[str, Any]) -> str | None:
    """The first field that makes a signed event unusable (wrong type, missing, negative, out
    of range), or None. Checked before any transaction, so a malformed event changes nothing;
    events of types not handled here only need an id."""
    if not _is_id(event.get("id")):
        return "id"
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        return "type"
    data = event.get("data")
    if data is not None and not isinstance(data, Mapping):
        return "data"
    obj = (data or {}).get("object")
    if obj is not None and not isinstance(obj, Mapping):
        return "data.object"
    if isinstance(obj, Mapping) and isinstance(obj.get("id"), str) and len(obj["id"]) > 255:
        return "data.object.id"  # longer than the column that records it
    if kind not in _CHECKED_EVENTS:
        return None
    if not isinstance(obj, Mapping):
        return "data.object"
    if kind in PAID_EVENTS:
        return _checkout_problem(obj)
    if not _is_id(obj.get("id")):
        return "data.object.id"
    if kind in REFUND_EVENTS and not isinstance(obj.get("status"), str | None):
        return "data.object.status"
    if kind == "charge.refunded":
        if not _is_amount(obj.get("amount_refunded")):
            return "data.object.amount_refunded"
        return _intent_problem(obj)
    return None


def _overtaken_topup(site: Site, event: Mapping[str, Any]) -> PaidSession | None:
    """For a refund of a payment not applied here yet, the paid top-up it refunds, fetched from
    Stripe before any transaction opens (no lock is held while Stripe answers)."""
    if event.get("type") != "charge.refunded" or site.stripe is None:
        return None
    intent = charge_payment_intent((event.get("data") or {}).get("object") or {})
    if intent is None:
        return None
    with site.factory() as session:
        if knows_payment(session, intent):
            return None
    found = session_for_payment(site.stripe, intent)
    return paid_session(found) if found is not None else None


def webhook(site: Site, payload: bytes, signature: str | None) -> Response:
    secret = site.settings.stripe_webhook_secret
    if secret is None or not secret.get_secret_value():
        log.error("Stripe webhook received but STRIPE_WEBHOOK_SECRET is not set")
        return JSONResponse({"error": "webhook secret not configured"}, status_code=503)
    try:
        event = verify_event(payload, signature, secret.get_secret_value())
    except BadSignatureError as exc:
        log.warning("rejected a Stripe webhook: %s", exc)
        return JSONResponse({"error": "invalid signature"}, status_code=400)
    except MalformedPayloadError as exc:
        log.error("rejected a signed Stripe webhook: %s", exc)
        return JSONResponse({"error": "malformed JSON", "detail": str(exc)}, status_code=400)
    problem = _event_problem(event)
    if problem is not None:
        log.error("rejected a signed Stripe event: bad or missing %s", problem)
        return JSONResponse({"error": "malformed event", "field": problem}, status_code=400)
    try:
        paid_first = _overtaken_topup(site, event)
    except PaymentError as exc:  # Stripe is asked again when it redelivers the event
        log.warning("webhook %s deferred: %s", event["id"], exc)
        return JSONResponse({"error": "try again"}, status_code=503)
    for attempt in range(1, _WEBHOOK_ATTEMPTS + 1):
        try:
            with site.factory.begin() as session:
                if not record_event(session, event, outcome="received", at=site.clock()):
                    return JSONResponse({"received": True, "duplicate": True})
                outcome = _handle_event(site, session, event, paid_first)
                set_event_outcome(session, event["id"], outcome)
        except (IntegrityError, DBAPIError) as exc:
            # A concurrent delivery of the same payment won the race, or PostgreSQL found a
            # serialisation conflict: the transaction rolled back, so run it again.
            if attempt == _WEBHOOK_ATTEMPTS:
                log.error(
                    "webhook %s failed %d times: %s", event["id"], attempt, type(exc).__name__
                )
                return JSONResponse({"error": "try again"}, status_code=500)
            continue
        log.info("webhook %s %s: %s", event["id"], event.get("type"), outcome)
        return JSONResponse({"received": True, "outcome": outcome})
    return JSONResponse({"error": "try again"}, status_code=500)  # pragma: no cover


def status_page(site: Site, token: str, paid: bool) -> Response:
    found = _link(site, token, "me")
    if isinstance(found, HTMLResponse):
        return found
    link, _brand, campaign = found
    now = site.clock()
    r = reservations
    with site.factory() as session:
        balance = ledger.available(session, link.buyer, campaign.currency)
        rows = (
            session.execute(
                select(r, products.c.name.label("product_name"))
                .join(
                    products,
                    (products.c.campaign_id == r.c.campaign_id) & (products.c.sku == r.c.sku),
                )
                .where(r.c.buyer == link.buyer, r.c.campaign_id == campaign.id)
                .order_by(r.c.posted_at, r.c.post_id, r.c.part)
            )
            .mappings()
            .all()
        )
        # Counted in the order promotion follows (queue tickets), not by post time.
        places = queue.positions(session, [row["id"] for row in rows])
        handle = rows[-1]["handle"] if rows else None
        pending_topups = session.execute(
            select(func.count()).where(
                stripe_checkout_sessions.c.buyer == link.buyer,
                stripe_checkout_sessions.c.state == "open",
            )
        ).scalar_one()
    parts = [f"<p>Orders of <b>{_e(handle)}</b></p>"] if handle else []
    if paid:
        parts.append(
            '<p class="note">Thank you! Your payment is being confirmed by Stripe; your balance '
            "updates within moments. Reload this page to see it.</p>"
        )
    parts.append(f'<p>Balance: <span class="big">{_e(money(balance, campaign))}</span></p>')
    if pending_topups:
        parts.append(f"<p>Top-ups started and not yet paid: {_e(pending_topups)}</p>")
    labels = {
        "awaiting_payment": "Awaiting payment",
        "confirmed": "Confirmed",
        "waitlisted": "On the waitlist",
        "cancelled": "Cancelled",
        "expired": "Hold lapsed",
        "rejected": "Rejected",
    }
    if rows:
        parts.append("<h2>Your reservations</h2><table><tr><th>Item</th><th>Status</th></tr>")
        for row in rows:
            detail = [_e(labels.get(row["state"], row["state"]))]
            if row["state"] == "awaiting_payment" and row["hold_expires_at"] > now:
                detail.append(
                    f"pay {_e(money(int(row['amount']), campaign))} by "
                    f"<b>{_e(_when(row['hold_expires_at'], campaign))}</b>"
                )
            elif row["state"] == "awaiting_payment":
                detail.append(f"hold lapsed at {_e(_when(row['hold_expires_at'], campaign))}")
            if row["state"] == "waitlisted":
                detail.append(f"position <b>{_e(places[row['id']])}</b> in the queue")
            if row["reason"]:
                detail.append(f"({_e(row['reason'])})")
            parts.append(
                f"<tr><td>{_e(row['quantity'])} × {_e(row['product_name'])}</td>"
                f"<td>{'<br>'.join(detail)}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>No reservations yet.</p>")
    due = sum(
        int(row["amount"])
        for row in rows
        if row["state"] == "awaiting_payment" and row["hold_expires_at"] > now
    )
    if due > balance:
        amount = min(max(due - balance, campaign.topup_min), campaign.topup_max)
        # The page is the buyer's own (its link goes only by direct message), so it offers a
        # payment link of its own: a `pay` token with the same expiry, never this `me` token.
        pay = site.signer.sign(link.buyer, link.campaign_id, link.expires_at, purpose="pay")
        href = f"/topup/{pay}?amount={amount}"
        parts.append(
            f'<p><a class="button" href="{_e(href)}">Top up {_e(money(amount, campaign))}</a></p>'
        )
    parts.append(f"<p><small>Updated {_e(_when(now, campaign))}</small></p>")
    return _page(campaign.name, "".join(parts), 200, campaign.language)


def campaign_page(site: Site, campaign_id: str) -> Response:
    found = site.campaigns.get(campaign_id)
    if found is None:
        return _page("Not found", "<p>No such sale.</p>", 404)
    _brand, campaign = found
    r = reservations
    with site.factory() as session:
        stock = session.execute(
            select(products.c.sku, products.c.name, products.c.stock, products.c.allocated)
            .where(products.c.campaign_id == campaign.id)
            .order_by(products.c.sku)
        ).all()
        states: dict[str, int] = dict(
            session.execute(
                select(r.c.state, func.count())
                .where(r.c.campaign_id == campaign.id)
                .group_by(r.c.state)
            ).all()
        )
    parts = ["<h2>Stock</h2><table><tr><th>SKU</th><th>Item</th><th>Left</th><th>of</th></tr>"]
    for sku, name, total, allocated in stock:
        parts.append(
            f"<tr><td>{_e(sku)}</td><td>{_e(name)}</td><td>{_e(total - allocated)}</td>"
            f"<td>{_e(total)}</td></tr>"
        )
    parts.append("</table><h2>Reservations</h2><table><tr><th>State</th><th>Count</th></tr>")
    for state in (
        "awaiting_payment",
        "confirmed",
        "waitlisted",
        "cancelled",
        "expired",
        "rejected",
    ):
        parts.append(f"<tr><td>{_e(state)}</td><td>{_e(states.get(state, 0))}</td></tr>")
    parts.append("</table>")
    return _page(campaign.name, "".join(parts), 200, campaign.language)


def healthz(site: Site) -> Response:
    try:
        with site.factory() as session:
            session.execute(text("SELECT 1"))
    except DBAPIError:
        return JSONResponse({"status": "database unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


# --- the app -----------------------------------------------------------------------------------


async def _capped_body(request: Request, limit: int) -> bytes | Response:
    """The request body, or a 413 once it is known to exceed `limit` bytes: from the declared
    Content-Length when there is one, else while reading (a chunked body is never read past
    the limit)."""
    too_large = JSONResponse(
        {"error": "body too large", "limit": limit},
        status_code=413,
        headers={"Connection": "close"},
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdecimal()):
            return JSONResponse({"error": "bad Content-Length"}, status_code=400)
        if int(declared) > limit:
            return too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return too_large
    return bytes(body)


def create_app(
    settings: Settings,
    factory: sessionmaker[Session],
    brands: Sequence[Brand],
    clock: Clock,
    *,
    stripe_client: stripe.StripeClient | None = None,
    signer: LinkSigner | None = None,
) -> FastAPI:
    """The web app. `stripe_client` defaults to one built from `STRIPE_SECRET_KEY` (absent when
    the key is unset: top-up pages then answer 503); `signer` to `bot.links.signer_for`."""
    if stripe_client is None and settings.stripe_secret_key is not None:
        stripe_client = make_client(settings.stripe_secret_key.get_secret_value())
    campaigns: dict[str, tuple[Brand, Campaign]] = {}
    for brand in brands:
        for campaign in brand.campaigns:
            if campaign.id in campaigns:
                first = campaigns[campaign.id][0].brand.id
                raise DuplicateCampaignError(
                    f"campaign id {campaign.id!r} is defined by brand {first!r} and by brand "
                    f"{brand.brand.id!r}; give one of them another id"
                )
            campaigns[campaign.id] = (brand, campaign)
    site = Site(
        settings=settings,
        factory=factory,
        campaigns=campaigns,
        brands=list(brands),
        clock=clock,
        signer=signer or signer_for(settings, factory),
        stripe=stripe_client,
    )
    app = FastAPI(title="flashtag", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.site = site

    @app.get("/topup/{token}")
    def _topup(token: str, amount: str | None = None, major: str | None = None) -> Response:
        return topup(site, token, amount, major)

    @app.post("/stripe/webhook")
    async def _webhook(request: Request) -> Response:
        payload = await _capped_body(request, MAX_WEBHOOK_BODY)
        if isinstance(payload, Response):
            return payload
        signature = request.headers.get("stripe-signature")
        return await run_in_threadpool(webhook, site, payload, signature)

    @app.api_route("/me/{token}", methods=["GET", "HEAD"])
    def _me(token: str, paid: str | None = None) -> Response:
        return status_page(site, token, paid == "1")

    @app.api_route("/c/{campaign_id}", methods=["GET", "HEAD"])
    def _campaign(campaign_id: str) -> Response:
        return campaign_page(site, campaign_id)

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    def _healthz() -> Response:
        return healthz(site)

    return app
