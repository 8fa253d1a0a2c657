"""The worker and the web app against a real Mastodon API (mastodon-mock) and PostgreSQL.

Fans post over HTTP; the worker's streaming connector hears them, the engine decides, the
outbox replies over HTTP; a top-up arrives as a signed Stripe webhook at the web app; a hold
lapses (the clock's expiry job, on an injected time), the waitlist moves up, and the audit is
clean at the end.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import stripe
import uvicorn
from mastodon_mock.config import SeedAccount, SeedConfig
from mastodon_mock.testing import MockServer
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from waiting import wait_for

from bot.commands.orders_cmd import one_reply_per_kind
from bot.demo_mock import free_port
from bot.jobs import JobContext, run_job
from bot.tables import outbox_messages
from bot.web import create_app
from bot.worker import Worker
from config.brand import Brand
from config.database import create_engine, session_factory
from config.loader import parse_brand
from config.settings import Settings, get_settings
from orders.audit import audit
from orders.tables import posts, reservations

SECRET = "whsec_e2e_test_secret"
FANS = ("ann", "ben", "cat")


def brand_text(base_url: str, opens: datetime) -> str:
    closes = opens + timedelta(hours=2)
    return f"""
[brand]
id = "shop"
name = "Shop"

[accounts.mastodon]
base_url = "{base_url}"
username = "shop"
token_env = "E2E_SHOP_TOKEN"

[[campaigns]]
id = "drop"
name = "Drop"
hashtag = "Drop"
currency = "USD"
opens_at = {opens.strftime("%Y-%m-%dT%H:%M:%SZ")}
closes_at = {closes.strftime("%Y-%m-%dT%H:%M:%SZ")}
hold_minutes = 10
reminder_minutes = 0

[[campaigns.products]]
sku = "ONE"
name = "The only one"
price = 5000
stock = 1
"""


class ShiftedClock:
    """The real clock, moved on by `shift` (so a ten-minute hold lapses without waiting)."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.shift

    def sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0))


@pytest.fixture
def mock() -> Iterator[MockServer]:
    seed = SeedConfig(
        accounts=[SeedAccount(username="shop", access_token="shop-token")]
        + [SeedAccount(username=f, access_token=f"{f}-token") for f in FANS]
    )
    with MockServer(seed=seed) as server:
        yield server


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


def signed(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
    return body.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


def paid_event(buyer: str, amount: int) -> dict[str, Any]:
    return {
        "id": "evt_e2e_1",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": "cs_test_e2e_1",
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "status": "complete",
                "amount_total": amount,
                "currency": "usd",
                "client_reference_id": buyer,
                "metadata": {"buyer": buyer, "campaign": "drop"},
                "payment_intent": "pi_e2e_1",
            }
        },
    }


def states(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as session:
        rows = session.execute(select(reservations.c.buyer, reservations.c.state)).all()
    return {buyer: state for buyer, state in rows}


def sent_kinds(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as session:
        rows = session.execute(
            select(outbox_messages.c.idempotency_key, outbox_messages.c.state)
        ).all()
    return dict(rows)


def test_orders_replies_top_up_lapse_and_promotion_end_to_end(
    mock: MockServer, pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2E_SHOP_TOKEN", "shop-token")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("FLASHTAG_LINK_SECRET", "e2e-link-secret-0123456789abcdef")
    get_settings.cache_clear()
    settings = Settings()  # type: ignore[call-arg]
    brand: Brand = parse_brand(brand_text(mock.base_url, datetime.now(UTC) - timedelta(minutes=1)))
    sessions = session_factory(pg_engine)
    clock = ShiftedClock()  # real time, until the test moves it on past ann's hold
    worker = Worker(sessions, [brand], clock=clock, max_wait_ms=20, sender_idle_seconds=0.05)
    worker.start()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, sessions, [brand], clock.now),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    web_thread = threading.Thread(target=server.run, daemon=True)
    web_thread.start()
    wait_for("the web server", lambda: server.started)
    web = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
    clients = {f: mock.client(f) for f in FANS}
    ids = {f: str(c.account_verify_credentials()["id"]) for f, c in clients.items()}
    buyer = {f: f"mastodon:{ids[f]}" for f in FANS}
    try:
        clients["ann"].status_post("@shop #Drop one please")
        wait_for("ann's order", lambda: buyer["ann"] in states(sessions))
        clients["ben"].status_post("@shop #Drop me too")
        clients["cat"].status_post("@shop #Drop 0 of them")  # a malformed quantity
        wait_for("three decisions", lambda: len(sent_kinds(sessions)) == 3)
        assert states(sessions) == {buyer["ann"]: "awaiting_payment", buyer["ben"]: "waitlisted"}

        # Replies went out over the API: ann got her payment link by direct message.
        wait_for("replies sent", lambda: set(sent_kinds(sessions).values()) == {"sent"})
        [mention] = clients["ann"].notifications(types=["mention"])
        assert mention["status"]["visibility"] == "direct"
        assert "/topup/" in mention["status"]["content"]

        # Ann never pays: the clock lapses her hold and ben moves up.
        ctx = JobContext(sessions=sessions, brands=[brand], settings=settings, clock=clock)
        clock.shift += timedelta(minutes=10, seconds=1)
        assert run_job("expire", ctx=ctx).startswith("ran:")
        assert states(sessions) == {buyer["ann"]: "expired", buyer["ben"]: "awaiting_payment"}

        # Ben tops up through Stripe: the signed webhook lands at the web app and settles him.
        body, headers = signed(paid_event(buyer["ben"], 5000))
        response = web.post("/stripe/webhook", content=body, headers=headers)
        assert response.status_code == 200 and response.json()["outcome"] == "credited"
        again = web.post("/stripe/webhook", content=body, headers=headers)
        assert again.json().get("duplicate") is True
        assert states(sessions)[buyer["ben"]] == "confirmed"

        wait_for(
            "every reply sent",
            lambda: (
                len(sent_kinds(sessions)) >= 6 and set(sent_kinds(sessions).values()) == {"sent"}
            ),
            show=lambda: sent_kinds(sessions),
        )
        kinds = sorted(key.split(":")[-1] for key in sent_kinds(sessions))
        assert kinds == [
            "confirmed",
            "expired",
            "payment_needed",
            "promoted",
            "rejected",
            "waitlisted",
        ]
        page = web.get("/c/drop")
        assert page.status_code == 200
    finally:
        worker.stop()
        web.close()
        server.should_exit = True
        web_thread.join(10)
        get_settings.cache_clear()
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(posts)) == 3
        assert audit(session, extra=(one_reply_per_kind,)) == []
