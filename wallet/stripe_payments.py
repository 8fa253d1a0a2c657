"""Stripe top-ups: Checkout Sessions, signed webhooks, reconciliation and cash-out refunds.

The rules this module keeps, whoever calls it:

- A paid Checkout Session is credited exactly once. `apply_paid_session` is the only path that
  credits, whether the session arrives in a webhook or from reconciliation; it locks the
  session's row, credits `amount_total` from Stripe's own object through
  `ledger.credit_topup(stripe_ref=<session id>)` (idempotent on its own), and marks the row paid.
- Every webhook event id is recorded once (`record_event`), in the caller's transaction.
- A top-up link creates at most one Checkout Session per token and amount: the attempt is stored
  with its idempotency key and exact parameters before Stripe is called, and a retry reuses both.
- A buyer never gets back more than they paid in: cash-out refunds are drawn from their own
  paid top-ups, most recent first, and never exceed what is left of each.

Functions that take a SQLAlchemy `Session` flush and never commit; the caller owns the
transaction. Functions that take a `sessionmaker` run their own short transactions around the
network calls, so no database lock is held while Stripe is being asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import stripe
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.schema import Table

from wallet import ledger
from wallet.stripe_tables import stripe_checkout_sessions, stripe_events, stripe_refunds
from wallet.tables import transfers

log = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_SECONDS = 300
_BUYER_KEY = re.compile(r"^[^\s:]+:\S+$")  # "platform:account_id", as the ledger keys wallets
# Stripe accepts a Checkout `expires_at` between 30 minutes and 24 hours after creation. The
# margins cover the time between our clock reading and Stripe's.
CHECKOUT_MIN_LIFETIME = timedelta(minutes=30)
CHECKOUT_MAX_LIFETIME = timedelta(hours=24)
CLOCK_MARGIN = timedelta(minutes=2)


class PaymentError(Exception):
    """Root of the wallet's Stripe errors."""


class StripeUnavailableError(PaymentError):
    """Stripe could not be reached or answered with a server error; the outcome is unknown and
    the same request (same idempotency key) may be retried."""


class StripeRejectedError(PaymentError):
    """Stripe refused the request (4xx): retrying it unchanged will not help."""


class BadSignatureError(PaymentError):
    """A webhook whose signature is missing, forged or outside the tolerance window."""


class MalformedPayloadError(PaymentError):
    """A webhook whose signature is valid but whose body is not a JSON object in UTF-8."""


class CashoutRefusedError(PaymentError):
    """A cash-out asked for more than the buyer's credit or than their top-ups paid in."""


def make_client(
    secret_key: str, *, max_network_retries: int = 2, timeout: float = 20.0
) -> stripe.StripeClient:
    """A StripeClient on `requests` (so tests can mock it with `responses`), with retries on.

    Retries reuse the request's idempotency key, so a retried POST never creates twice.
    """
    return stripe.StripeClient(
        secret_key,
        max_network_retries=max_network_retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def _translate(what: str, exc: stripe.StripeError) -> PaymentError:
    """Stripe's error as ours: worth retrying with the same key, or refused for good."""
    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError)):
        log.warning("Stripe %s: unreachable or rate limited (%s)", what, type(exc).__name__)
        return StripeUnavailableError(f"{what}: {type(exc).__name__}")
    status = exc.http_status or 0
    if status >= 500 or status == 409:
        log.warning("Stripe %s: HTTP %s (request %s)", what, status, exc.request_id)
        return StripeUnavailableError(f"{what}: HTTP {status}")
    log.error("Stripe %s rejected: HTTP %s %s", what, status, exc.code)
    return StripeRejectedError(f"{what}: HTTP {status} {exc.code or ''}".strip())


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one Stripe call, mapping its errors onto ours in one place."""
    try:
        return fn(*args, **kwargs)
    except stripe.StripeError as exc:
        raise _translate(what, exc) from exc


def _insert(session: Session, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ON CONFLICT DO NOTHING on the session's backend."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# --- Checkout Sessions -------------------------------------------------------------------------


@dataclass(frozen=True)
class TopupRequest:
    """What a buyer's top-up link asks for. `link_id` identifies the signed link (never the
    link itself, which is a bearer secret); with the amount it makes the idempotency key."""

    link_id: str
    buyer: str
    campaign_id: str
    currency: str
    amount: int
    product_name: str
    success_url: str
    cancel_url: str
    hold_deadline: datetime | None


@dataclass(frozen=True)
class Checkout:
    """A Checkout Session the buyer can be sent to."""

    session_id: str
    url: str
    expires_at: datetime
    amount: int
    currency: str
    # True when the buyer's hold lapses before Stripe lets the session expire (Stripe keeps a
    # session open for at least 30 minutes); the page must tell the buyer so.
    outlives_hold: bool


def checkout_expiry(now: datetime, hold_deadline: datetime | None) -> datetime:
    """The session's `expires_at`: the hold deadline, kept inside Stripe's 30 min to 24 h range.

    Stripe cannot expire a session sooner than 30 minutes after creation, so a hold that lapses
    earlier gets the 30-minute minimum; a payment after the hold lapsed still lands in the
    wallet as credit (never lost), and the buyer is told so before paying.
    """
    earliest = now + CHECKOUT_MIN_LIFETIME + CLOCK_MARGIN
    latest = now + CHECKOUT_MAX_LIFETIME - CLOCK_MARGIN
    target = latest if hold_deadline is None else hold_deadline
    return min(max(target, earliest), latest).replace(microsecond=0)


def idempotency_key(link_id: str, amount: int, attempt: int) -> str:
    digest = hashlib.sha256(link_id.encode()).hexdigest()[:32]
    return f"flashtag-topup-{digest}-{amount}-{attempt}"


def _checkout_params(req: TopupRequest, key: str, expires_at: datetime) -> dict[str, Any]:
    meta = {"buyer": req.buyer, "campaign": req.campaign_id, "topup_key": key}
    return {
        "mode": "payment",
        "client_reference_id": req.buyer,
        "metadata": meta,
        "payment_intent_data": {"metadata": meta},
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": req.currency.lower(),
                    "unit_amount": req.amount,
                    "product_data": {"name": req.product_name},
                },
            }
        ],
        "success_url": req.success_url,
        "cancel_url": req.cancel_url,
        "expires_at": int(expires_at.timestamp()),
    }


def _reserve_attempt(session: Session, req: TopupRequest, now: datetime) -> RowMapping:
    """The attempt row to use: an open session to reuse, the last attempt to retry unchanged,
    or a new attempt when the last one can no longer be sent with the same parameters."""
    prefix = idempotency_key(req.link_id, req.amount, 0).rsplit("-", 1)[0] + "-"
    t = stripe_checkout_sessions
    rows = (
        session.execute(
            select(t)
            .where(t.c.idempotency_key.startswith(prefix, autoescape=True))
            .order_by(t.c.id.desc())
        )
        .mappings()
        .all()
    )
    attempt = 0
    if rows:
        last = rows[0]
        attempt = int(str(last["idempotency_key"]).rsplit("-", 1)[1]) + 1
        expires = last["expires_at"]
        if last["state"] == "open" and last["url"] and expires > now + timedelta(minutes=1):
            return last
        if last["state"] == "creating" and expires >= now + CHECKOUT_MIN_LIFETIME + CLOCK_MARGIN:
            return last
    expires_at = checkout_expiry(now, req.hold_deadline)
    key = idempotency_key(req.link_id, req.amount, attempt)
    session.execute(
        _insert(session, t)
        .values(
            idempotency_key=key,
            buyer=req.buyer,
            campaign_id=req.campaign_id,
            currency=req.currency,
            amount=req.amount,
            state="creating",
            expires_at=expires_at,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )
    row = session.execute(select(t).where(t.c.idempotency_key == key)).mappings().one()
    return row


def open_checkout(
    factory: sessionmaker[Session],
    client: stripe.StripeClient,
    req: TopupRequest,
    *,
    now: datetime,
) -> Checkout:
    """Create (or reuse) the Checkout Session for this link and amount.

    Raises `StripeUnavailableError` when Stripe is down or times out; calling again with the same
    request retries with the same idempotency key and parameters, so Stripe never makes a
    second session for it.
    """
    with factory.begin() as session:
        row = _reserve_attempt(session, req, now)
    key = str(row["idempotency_key"])
    expires_at: datetime = row["expires_at"]
    outlives = req.hold_deadline is not None and req.hold_deadline < expires_at
    if row["state"] == "open" and row["session_id"] and row["url"]:
        return Checkout(
            str(row["session_id"]), str(row["url"]), expires_at, req.amount, req.currency, outlives
        )
    params = _checkout_params(req, key, expires_at)
    created = _call(
        "checkout.sessions.create",
        client.v1.checkout.sessions.create,
        params=params,
        options={"idempotency_key": key},
    )
    session_id = str(created.id)
    url = str(created.url)
    t = stripe_checkout_sessions
    with factory.begin() as session:
        taken = session.execute(
            select(t.c.id).where(t.c.session_id == session_id, t.c.id != row["id"])
        ).first()
        if taken is None:
            session.execute(
                update(t)
                .where(t.c.id == row["id"])
                .values(session_id=session_id, url=url, state="open")
                .where(t.c.state == "creating")
            )
    log.info("checkout session %s for %s, %s %s", session_id, req.buyer, req.amount, req.currency)
    return Checkout(session_id, url, expires_at, req.amount, req.currency, outlives)


# --- Webhook events ----------------------------------------------------------------------------


def verify_event(payload: bytes, signature: str | None, secret: str) -> dict[str, Any]:
    """The event in a webhook body, after checking its `Stripe-Signature` (v1 HMAC-SHA256 over
    `timestamp.body`, at most 300 s old).

    Raises `BadSignatureError` when the signature does not hold (or the body is not UTF-8, which
    the library cannot check), and `MalformedPayloadError` when it holds but the body is not a
    JSON object.
    The signature is always checked first, so an unsigned sender only ever learns that.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        # Stripe signs UTF-8 JSON; its library checks signatures over text only.
        raise BadSignatureError("body is not UTF-8, so its signature cannot be checked") from None
    try:
        stripe.WebhookSignature.verify_header(
            text, signature, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
        )
    except stripe.SignatureVerificationError as exc:
        raise BadSignatureError(str(exc).split(".")[0]) from exc
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise MalformedPayloadError("body is not JSON") from exc
    if not isinstance(event, dict):
        raise MalformedPayloadError("body is not a JSON object")
    return event


def record_event(session: Session, event: Mapping[str, Any], *, outcome: str, at: datetime) -> bool:
    """Record an event id; False when it was recorded before (a redelivery or a replay)."""
    obj = (event.get("data") or {}).get("object") or {}
    result = session.execute(
        _insert(session, stripe_events)
        .values(
            event_id=event["id"],
            type=str(event.get("type", ""))[:100],
            object_id=obj.get("id") if isinstance(obj.get("id"), str) else None,
            outcome=outcome,
            received_at=at,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(stripe_events.c.id)
    )
    return result.first() is not None


def set_event_outcome(session: Session, event_id: str, outcome: str) -> None:
    session.execute(
        update(stripe_events).where(stripe_events.c.event_id == event_id).values(outcome=outcome)
    )


@dataclass(frozen=True)
class PaidSession:
    """A paid Checkout Session as Stripe describes it (never as the buyer does)."""

    session_id: str
    buyer: str
    campaign_id: str | None
    amount: int
    currency: str
    payment_intent: str | None
    topup_key: str | None


def is_buyer_key(value: object) -> TypeGuard[str]:
    """Whether `value` has the shape of the buyer key flashtag puts in its Checkout Sessions
    ("platform:account_id"); a paid session without one was made by some other integration."""
    return isinstance(value, str) and _BUYER_KEY.match(value) is not None


def paid_session(obj: Mapping[str, Any]) -> PaidSession | None:
    """The paid top-up in a `checkout.session` object, or None (unpaid, not a one-off payment,
    or not made by flashtag)."""
    if obj.get("object") != "checkout.session" or obj.get("mode") != "payment":
        return None
    if obj.get("payment_status") != "paid":
        return None
    metadata = obj.get("metadata") or {}
    buyer = obj.get("client_reference_id") or metadata.get("buyer")
    amount = obj.get("amount_total")
    currency = obj.get("currency")
    if not is_buyer_key(buyer):
        return None  # a payment some other integration on this Stripe account made
    if not isinstance(amount, int) or not isinstance(currency, str) or len(currency) != 3:
        return None
    intent = obj.get("payment_intent")
    if isinstance(intent, Mapping):
        intent = intent.get("id")
    return PaidSession(
        session_id=str(obj["id"]),
        buyer=str(buyer),
        campaign_id=metadata.get("campaign"),
        amount=amount,
        currency=str(currency).upper(),
        payment_intent=str(intent) if intent else None,
        topup_key=metadata.get("topup_key"),
    )


def apply_paid_session(session: Session, paid: PaidSession, *, at: datetime, via: str) -> bool:
    """Credit a paid session's `amount_total` to its buyer, once. True if credited now.

    The one path for webhooks and reconciliation alike: the session's row is locked, a session
    already marked paid is skipped, and the ledger's `stripe_ref` makes a second credit
    impossible even if the row were lost.
    """
    t = stripe_checkout_sessions
    by_session = select(t).where(t.c.session_id == paid.session_id).with_for_update()
    row = session.execute(by_session).mappings().first()
    if row is None and paid.topup_key:
        # Our own attempt, whose creation answer never reached us: give it the session id.
        session.execute(
            update(t)
            .where(t.c.idempotency_key == paid.topup_key, t.c.session_id.is_(None))
            .values(session_id=paid.session_id, state="open")
        )
        row = session.execute(by_session).mappings().first()
    if row is None:
        session.execute(
            _insert(session, t)
            .values(
                session_id=paid.session_id,
                buyer=paid.buyer,
                campaign_id=paid.campaign_id,
                currency=paid.currency,
                amount=max(paid.amount, 1),
                state="open",
                created_at=at,
            )
            .on_conflict_do_nothing(index_elements=["session_id"])
        )
        row = session.execute(by_session).mappings().one()
    if row["state"] == "paid":
        return False
    if row["buyer"] != paid.buyer:
        log.error("checkout %s: Stripe names a different buyer than our record", paid.session_id)
    credited = False
    if paid.amount > 0:
        credited = ledger.credit_topup(
            session,
            buyer=row["buyer"],
            amount=paid.amount,
            currency=paid.currency,
            stripe_ref=paid.session_id,
            at=at,
        )
    session.execute(
        update(t)
        .where(t.c.id == row["id"])
        .values(
            state="paid",
            amount_total=paid.amount,
            payment_intent=paid.payment_intent,
            paid_at=at,
            applied_via=via,
        )
    )
    if credited:
        log.info("credited %s %s to %s (%s)", paid.amount, paid.currency, row["buyer"], via)
    return credited


def mark_session_expired(session: Session, obj: Mapping[str, Any]) -> None:
    t = stripe_checkout_sessions
    session.execute(
        update(t)
        .where(t.c.session_id == obj.get("id"), t.c.state.in_(("creating", "open")))
        .values(state="expired")
    )


def charge_payment_intent(charge: Mapping[str, Any]) -> str | None:
    intent = charge.get("payment_intent")
    if isinstance(intent, Mapping):
        intent = intent.get("id")
    return str(intent) if intent else None


def knows_payment(session: Session, payment_intent: str) -> bool:
    """Whether the top-up paid by this PaymentIntent has been applied here."""
    t = stripe_checkout_sessions
    found = session.execute(
        select(t.c.id).where(t.c.payment_intent == payment_intent, t.c.state == "paid")
    ).first()
    return found is not None


def session_for_payment(client: stripe.StripeClient, payment_intent: str) -> dict[str, Any] | None:
    """The Checkout Session that created this PaymentIntent, asked of Stripe (for a refund whose
    top-up has not reached us yet: Stripe does not order its events)."""
    page = _call(
        "checkout.sessions.list",
        client.v1.checkout.sessions.list,
        params={"payment_intent": payment_intent, "limit": 1},
    )
    return page.data[0].to_dict() if page.data else None


def apply_charge_refunded(session: Session, charge: Mapping[str, Any], *, at: datetime) -> int:
    """Debit what a `charge.refunded` says was refunded and we have not yet accounted for.

    `amount_refunded` is cumulative, so reordered events are harmless: the debit is the part
    above everything already recorded for that payment intent (our own cash-outs included,
    which were debited when they were made). Returns the amount debited now.
    """
    intent = charge_payment_intent(charge)
    refunded = charge.get("amount_refunded")
    if not intent or not isinstance(refunded, int):
        return 0
    t = stripe_checkout_sessions
    row = (
        session.execute(
            select(t)
            .where(t.c.payment_intent == str(intent), t.c.state == "paid")
            .with_for_update()
        )
        .mappings()
        .first()
    )
    if row is None:
        log.warning("charge %s refunded for a payment that is not a known top-up", charge.get("id"))
        return 0
    known = _refunded_so_far(session, str(intent))
    delta = min(refunded, int(row["amount_total"] or 0)) - known
    if delta <= 0:
        return 0
    key = f"charge:{charge.get('id')}:{refunded}"
    inserted = session.execute(
        _insert(session, stripe_refunds)
        .values(
            key=key,
            payment_intent=str(intent),
            charge_id=charge.get("id"),
            buyer=row["buyer"],
            currency=row["currency"],
            amount=delta,
            source="stripe",
            state="succeeded",
            created_at=at,
            updated_at=at,
        )
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(stripe_refunds.c.id)
    )
    if inserted.first() is None:
        return 0
    ledger.debit_refund(
        session, buyer=row["buyer"], amount=delta, currency=row["currency"], ref=key, at=at
    )
    log.info("refund of %s %s debited from %s", delta, row["currency"], row["buyer"])
    return delta


def _refunded_so_far(session: Session, payment_intent: str) -> int:
    r = stripe_refunds
    total = session.execute(
        select(func.coalesce(func.sum(r.c.amount), 0)).where(
            r.c.payment_intent == payment_intent, r.c.state != "failed"
        )
    ).scalar_one()
    return int(total)


# --- Reconciliation ----------------------------------------------------------------------------


def completed_sessions(client: stripe.StripeClient, *, since: datetime) -> Iterator[dict[str, Any]]:
    """Every Checkout Session Stripe completed since `since`, across all pages."""
    page = _call(
        "checkout.sessions.list",
        client.v1.checkout.sessions.list,
        params={"status": "complete", "created": {"gte": int(since.timestamp())}, "limit": 100},
    )
    try:
        for item in page.auto_paging_iter():
            yield item.to_dict()
    except stripe.StripeError as exc:
        raise _translate("checkout.sessions.list (next page)", exc) from exc


def unapplied(session: Session, session_ids: list[str]) -> set[str]:
    """The ids among `session_ids` that are not yet marked paid here."""
    if not session_ids:
        return set()
    t = stripe_checkout_sessions
    done = session.execute(
        select(t.c.session_id).where(t.c.session_id.in_(session_ids), t.c.state == "paid")
    ).scalars()
    return set(session_ids) - {str(s) for s in done}


# --- Cash-out ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefundOrder:
    """One Stripe refund a cash-out needs: part of one top-up's payment."""

    key: str
    payment_intent: str
    amount: int
    buyer: str
    currency: str


def plan_cashout(
    session: Session, *, buyer: str, amount: int, currency: str, at: datetime
) -> list[RefundOrder]:
    """Debit `amount` of unused credit and record the Stripe refunds that return it.

    The refunds come from the buyer's paid top-ups, most recent first, each never beyond what is
    left of that payment. Raises `CashoutRefusedError` when the buyer's credit or their refundable
    top-ups do not cover the amount. The refunds are recorded as pending; `send_refunds` sends
    them (and can be rerun until Stripe has taken them all).
    """
    if amount <= 0:
        raise CashoutRefusedError("the amount must be positive")
    balance = ledger.available(session, buyer, currency)
    if amount > balance:
        raise CashoutRefusedError(
            f"{buyer} has {balance} {currency} of unused credit, not {amount}"
        )
    t = stripe_checkout_sessions
    topups = session.execute(
        select(t.c.payment_intent, t.c.amount_total)
        .where(
            t.c.buyer == buyer,
            t.c.currency == currency,
            t.c.state == "paid",
            t.c.payment_intent.is_not(None),
        )
        .order_by(t.c.paid_at.desc(), t.c.id.desc())
    ).all()
    cashout_id = uuid.uuid4().hex
    orders: list[RefundOrder] = []
    left = amount
    for intent, paid_in in topups:
        if left == 0:
            break
        room = int(paid_in or 0) - _refunded_so_far(session, str(intent))
        take = min(room, left)
        if take <= 0:
            continue
        key = f"flashtag-cashout-{cashout_id}-{len(orders)}"
        orders.append(RefundOrder(key, str(intent), take, buyer, currency))
        left -= take
    if left:
        raise CashoutRefusedError(
            f"{buyer}'s top-ups leave only {amount - left} {currency} to refund, not {amount}"
        )
    for order in orders:
        session.execute(
            stripe_refunds.insert().values(
                key=order.key,
                payment_intent=order.payment_intent,
                buyer=buyer,
                currency=currency,
                amount=order.amount,
                source="cashout",
                state="pending",
                created_at=at,
                updated_at=at,
            )
        )
    ref = f"cashout:{cashout_id}"
    ledger.debit_refund(session, buyer=buyer, amount=amount, currency=currency, ref=ref, at=at)
    # debit_refund takes at most what is available; a hold that slipped in since the check above
    # must not let Stripe return more than the wallet gave up.
    taken = session.execute(
        select(transfers.c.amount).where(transfers.c.ref == ref)
    ).scalar_one_or_none()
    if taken != amount:
        raise CashoutRefusedError(f"{buyer}'s credit changed during the cash-out; try again")
    return orders


@dataclass(frozen=True)
class SentRefund:
    key: str
    refund_id: str | None
    amount: int
    state: str


def send_refunds(
    factory: sessionmaker[Session],
    client: stripe.StripeClient,
    *,
    buyer: str | None = None,
    now: datetime,
) -> list[SentRefund]:
    """Send every pending cash-out refund to Stripe (each with its own idempotency key, so a
    rerun after a crash or a timeout never refunds twice). Raises `StripeUnavailableError` when
    Stripe is down; the rest stay pending for the next run."""
    r = stripe_refunds
    with factory.begin() as session:
        query = select(r).where(r.c.state == "pending", r.c.source == "cashout")
        if buyer is not None:
            query = query.where(r.c.buyer == buyer)
        pending = session.execute(query.order_by(r.c.id)).mappings().all()
    sent: list[SentRefund] = []
    for row in pending:
        refund = _call(
            "refunds.create",
            client.v1.refunds.create,
            params={
                "payment_intent": row["payment_intent"],
                "amount": row["amount"],
                "reason": "requested_by_customer",
                "metadata": {"buyer": row["buyer"], "flashtag_key": row["key"]},
            },
            options={"idempotency_key": row["key"]},
        )
        state = "failed" if refund.status in ("failed", "canceled") else "succeeded"
        with factory.begin() as session:
            session.execute(
                update(r)
                .where(r.c.id == row["id"], r.c.state == "pending")
                .values(refund_id=refund.id, charge_id=getattr(refund, "charge", None))
            )
            if state == "failed":
                refund_failed(session, refund.to_dict(), at=now)
            else:
                session.execute(
                    update(r)
                    .where(r.c.id == row["id"], r.c.state == "pending")
                    .values(state="succeeded", updated_at=now)
                )
        sent.append(SentRefund(str(row["key"]), str(refund.id), int(row["amount"]), state))
    return sent


RESTORED_PREFIX = "refund-failed:"


def refund_failed(session: Session, refund: Mapping[str, Any], *, at: datetime) -> int:
    """A cash-out refund Stripe could not complete (`status` failed or canceled, at creation or
    later in `refund.failed` / `refund.updated`): its amount goes back into the wallet, once.
    Returns the amount restored."""
    if refund.get("status") not in ("failed", "canceled"):
        return 0
    r = stripe_refunds
    row = (
        session.execute(
            select(r)
            .where(r.c.refund_id == refund.get("id"), r.c.source == "cashout")
            .with_for_update()
        )
        .mappings()
        .first()
    )
    if row is None or row["state"] == "failed":
        return 0
    session.execute(update(r).where(r.c.id == row["id"]).values(state="failed", updated_at=at))
    ledger.credit_topup(
        session,
        buyer=row["buyer"],
        amount=int(row["amount"]),
        currency=row["currency"],
        stripe_ref=f"{RESTORED_PREFIX}{row['key']}",
        at=at,
    )
    log.error(
        "refund %s failed at Stripe: %s back to %s", row["refund_id"], row["amount"], row["buyer"]
    )
    return int(row["amount"])


# --- Audit -------------------------------------------------------------------------------------


def audit(session: Session, *, limit: int = 20) -> list[str]:
    """Check the Stripe side of the books; an empty list means it holds.

    - every paid top-up is credited exactly once: a paid session with a non-zero total has one
      `topup` transfer under its session id, of its `amount_total`, and every `topup` transfer
      belongs to a paid session;
    - nobody is refunded more than they paid: per payment intent, refunds (pending or done)
      never exceed the session's `amount_total`;
    - every cash-out took from the wallet exactly what its Stripe refunds return.
    """
    problems: list[str] = []
    t = stripe_checkout_sessions
    credited = session.execute(
        select(t.c.session_id, t.c.amount_total, transfers.c.amount, transfers.c.kind)
        .outerjoin(transfers, transfers.c.ref == t.c.session_id)
        .where(t.c.state == "paid", t.c.amount_total > 0)
        .where(
            transfers.c.id.is_(None)
            | (transfers.c.amount != t.c.amount_total)
            | (transfers.c.kind != "topup")
        )
        .limit(limit)
    ).all()
    for sid, total, amount, kind in credited:
        if amount is None:
            problems.append(f"paid session {sid} ({total}) was never credited")
        else:
            problems.append(f"paid session {sid} ({total}) credited as {kind} of {amount}")
    orphans = session.execute(
        select(transfers.c.ref)
        .outerjoin(t, (t.c.session_id == transfers.c.ref) & (t.c.state == "paid"))
        .where(transfers.c.kind == "topup", t.c.id.is_(None))
        .where(~transfers.c.ref.startswith(RESTORED_PREFIX))
        .limit(limit)
    ).scalars()
    problems.extend(f"top-up {ref} credited without a paid Stripe session" for ref in orphans)
    r = stripe_refunds
    refunded = (
        select(r.c.payment_intent, func.sum(r.c.amount).label("refunded"))
        .where(r.c.state != "failed")
        .group_by(r.c.payment_intent)
        .subquery()
    )
    over = session.execute(
        select(t.c.session_id, t.c.amount_total, refunded.c.refunded)
        .join(refunded, refunded.c.payment_intent == t.c.payment_intent)
        .where(refunded.c.refunded > func.coalesce(t.c.amount_total, 0))
        .limit(limit)
    ).all()
    problems.extend(f"session {sid}: {total} paid in, {back} refunded" for sid, total, back in over)
    cashouts = session.execute(
        select(r.c.key, r.c.amount, r.c.state).where(r.c.source == "cashout")
    ).all()
    planned: dict[str, int] = {}
    for key, amount, state in cashouts:
        cashout_id = str(key).removeprefix("flashtag-cashout-").rsplit("-", 1)[0]
        planned[f"cashout:{cashout_id}"] = planned.get(f"cashout:{cashout_id}", 0) + int(amount)
        if state == "failed":
            planned[f"{RESTORED_PREFIX}{key}"] = int(amount)
    if planned:
        taken = {
            str(ref): int(amount)
            for ref, amount in session.execute(
                select(transfers.c.ref, transfers.c.amount).where(
                    transfers.c.ref.in_(list(planned))
                )
            )
        }
        for ref, amount in planned.items():
            if taken.get(ref) != amount:
                problems.append(
                    f"{ref}: Stripe refunds {amount}, the ledger moved {taken.get(ref, 0)}"
                )
    return problems[: limit * 4]
