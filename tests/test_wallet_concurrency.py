"""Several workers at one wallet at once: never overdrawn, nothing credited or settled twice."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from config.database import create_engine
from wallet import ledger
from wallet.errors import HoldNotPending, InsufficientFunds

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FAN = "mastodon:1"
WORKERS = 6


def _run(workers: int, work: Callable[[int, Session], None], url: str) -> list[BaseException]:
    """Run `work(worker, session)` in threads that start together; return what they raised."""
    engine = create_engine(url, pool_size=workers + 1)
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def body(worker: int) -> None:
        try:
            with Session(engine) as session:
                start.wait()
                work(worker, session)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    engine.dispose()
    return errors


def test_workers_holding_against_one_wallet_never_overdraw_it(db_url: str) -> None:
    """On PostgreSQL the row locks queue the workers; on SQLite, BEGIN IMMEDIATE does."""
    engine = create_engine(db_url)
    with Session(engine) as s:
        ledger.credit_topup(s, buyer=FAN, amount=10_000, currency="CNY", stripe_ref="cs", at=T0)
        s.commit()
    granted: list[int] = []
    lock = threading.Lock()

    def work(worker: int, session: Session) -> None:
        rng = random.Random(worker)
        for i in range(12):
            amount = rng.randint(200, 900)
            ref = f"w{worker}-{i}"
            if i % 3 == 0:  # the engine's batch path, several holds at once
                requests = [
                    ledger.HoldRequest(FAN, "mi2", amount, "CNY", f"{ref}-{k}", T0 + timedelta(1))
                    for k in range(3)
                ]
                held = ledger.hold_many(session, requests, post=worker % 2 == 0, at=T0)
                session.commit()
                with lock:
                    granted.extend(amount for _ in held)
                continue
            try:
                ledger.hold(
                    session,
                    buyer=FAN,
                    campaign_id="mi2",
                    amount=amount,
                    currency="CNY",
                    ref=ref,
                    expires_at=T0 + timedelta(1),
                    at=T0,
                )
            except InsufficientFunds:
                session.rollback()
                continue
            session.commit()
            with lock:
                granted.append(amount)

    assert _run(WORKERS, work, db_url) == []
    with Session(engine) as s:
        totals = ledger.balance(s, FAN, "CNY")
        assert totals.available >= 0
        # Everything granted is accounted for, and the requests did exceed the balance.
        assert 10_000 - totals.available == sum(granted)
        assert sum(granted) > 10_000 - 900
        assert ledger.audit(s) == []
    engine.dispose()


@pytest.mark.postgres
def test_the_same_stripe_payment_delivered_concurrently_credits_once(pg_url: str) -> None:
    results: list[bool] = []

    def work(worker: int, session: Session) -> None:
        credited = ledger.credit_topup(
            session, buyer=FAN, amount=2500, currency="CNY", stripe_ref="cs_dup", at=T0
        )
        session.commit()
        results.append(credited)

    assert _run(WORKERS, work, pg_url) == []
    assert sorted(results) == [False] * (WORKERS - 1) + [True]
    engine = create_engine(pg_url)
    with Session(engine) as s:
        assert ledger.available(s, FAN, "CNY") == 2500
        assert ledger.audit(s) == []
    engine.dispose()


@pytest.mark.postgres
def test_racing_post_and_void_settle_a_hold_exactly_once(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with Session(engine) as s:
        ledger.credit_topup(s, buyer=FAN, amount=5000, currency="CNY", stripe_ref="cs", at=T0)
        for n in range(10):
            ledger.hold(
                s,
                buyer=FAN,
                campaign_id="mi2",
                amount=500,
                currency="CNY",
                ref=f"h{n}",
                expires_at=T0 + timedelta(hours=1),
                at=T0,
            )
        s.commit()
    outcomes: list[tuple[str, str]] = []

    def work(worker: int, session: Session) -> None:
        act = ledger.post_many if worker % 2 == 0 else ledger.void_many
        for n in range(10):
            try:
                act(session, [f"h{n}"], at=T0)
                session.commit()
                outcomes.append((f"h{n}", "posted" if worker % 2 == 0 else "voided"))
            except HoldNotPending:
                session.rollback()

    assert _run(4, work, pg_url) == []
    assert sorted(ref for ref, _ in outcomes) == [f"h{n}" for n in range(10)]
    with Session(engine) as s:
        for ref, state in outcomes:
            assert ledger.hold_state(s, ref) == state
        posted = sum(1 for _, state in outcomes if state == "posted")
        assert ledger.balance(s, FAN, "CNY") == ledger.Balance(posted=5000 - 500 * posted, held=0)
        assert ledger.audit(s) == []
    engine.dispose()


@pytest.mark.postgres
def test_top_ups_settling_orders_and_batches_of_holds_do_not_deadlock(pg_url: str) -> None:
    """A webhook (credit a wallet, then pay that fan's orders) racing the engine's batches (hold
    for many fans of the campaign) locks in the same order: wallets, then sales, then clearing."""
    fans = [f"mastodon:{i}" for i in range(8)]

    def work(worker: int, session: Session) -> None:
        for n in range(8):
            if worker % 2 == 0:
                fan = fans[(worker + n) % len(fans)]
                ledger.credit_topup(
                    session,
                    buyer=fan,
                    amount=1000,
                    currency="CNY",
                    stripe_ref=f"cs-{worker}-{n}",
                    at=T0,
                )
                requests = [ledger.HoldRequest(fan, "mi2", 300, "CNY", f"s-{worker}-{n}", None)]
            else:
                requests = [
                    ledger.HoldRequest(fan, "mi2", 200, "CNY", f"b-{worker}-{n}-{fan}", None)
                    for fan in reversed(fans)
                ]
            ledger.hold_many(session, requests, post=True, at=T0)
            session.commit()

    assert _run(WORKERS, work, pg_url) == []
    engine = create_engine(pg_url)
    with Session(engine) as s:
        assert all(v >= 0 for v in ledger.available_many(s, fans, "CNY").values())
        assert ledger.audit(s) == []
    engine.dispose()
