"""The engine's hot path: thousands of holds, posts and voids for a handful of statements."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from wallet import ledger

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=30)
BUYERS = 200


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as s:
        yield s


def _fund(session: Session, buyers: int = BUYERS) -> None:
    for i in range(buyers):
        ledger.credit_topup(
            session,
            buyer=f"mastodon:{i}",
            amount=5000,
            currency="CNY",
            stripe_ref=f"cs_{i}",
            at=T0,
        )
    session.commit()


class Counter:
    def __init__(self, engine: Engine) -> None:
        self.n = 0
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE is not work
            self.n += 1


def test_thousands_of_holds_cost_a_handful_of_statements(engine: Engine, session: Session) -> None:
    _fund(session)
    # Each fan orders four phones at 19.99: only two fit in 50.00, served in the order given.
    requests = [
        ledger.HoldRequest(f"mastodon:{i % BUYERS}", "mi2", 1999, "CNY", f"r{n}", LATER)
        for n, i in enumerate(range(4 * BUYERS))
    ]
    counter = Counter(engine)
    held = ledger.hold_many(session, requests, at=T0)
    session.commit()
    assert counter.n <= 12
    assert set(held) == {f"r{n}" for n in range(2 * BUYERS)}
    assert ledger.available_many(session, ["mastodon:0", "mastodon:7", "x:none"], "CNY") == {
        "mastodon:0": 5000 - 2 * 1999,
        "mastodon:7": 5000 - 2 * 1999,
        "x:none": 0,
    }

    counter.n = 0
    refs = sorted(held)
    ledger.post_many(session, refs[:BUYERS], at=T0 + timedelta(minutes=1))
    ledger.void_many(session, refs[BUYERS:], at=T0 + timedelta(minutes=1))
    session.commit()
    assert counter.n <= 16
    counter.n = 0
    ledger.available_many(session, [f"mastodon:{i}" for i in range(BUYERS)], "CNY")
    assert counter.n == 1
    assert ledger.audit(session) == []


def test_a_retried_batch_does_not_hold_twice(session: Session) -> None:
    _fund(session, 10)
    requests = [
        ledger.HoldRequest(f"mastodon:{i}", "mi2", 3000, "CNY", f"r{i}", LATER) for i in range(10)
    ]
    first = ledger.hold_many(session, requests, at=T0)
    session.commit()
    again = ledger.hold_many(session, requests, at=T0 + timedelta(seconds=5))
    assert again == first
    assert ledger.available(session, "mastodon:3", "CNY") == 2000


def test_a_smaller_later_order_still_fits_when_a_bigger_one_did_not(session: Session) -> None:
    _fund(session, 2)
    fan = "mastodon:1"
    requests = [
        ledger.HoldRequest(fan, "mi2", 3000, "CNY", "big-1", None),
        ledger.HoldRequest(fan, "mi2", 3000, "CNY", "big-2", None),
        ledger.HoldRequest(fan, "mi2", 1500, "CNY", "case", None),
        ledger.HoldRequest("mastodon:never-topped-up", "mi2", 1, "CNY", "nothing", None),
    ]
    held = ledger.hold_many(session, requests, post=True, at=T0)
    assert sorted(held) == ["big-1", "case"]
    assert ledger.balance(session, fan, "CNY") == ledger.Balance(posted=500, held=0)


def test_one_batch_can_mix_currencies_and_campaigns(session: Session) -> None:
    ledger.credit_topup(session, buyer="x:1", amount=100, currency="EUR", stripe_ref="e", at=T0)
    ledger.credit_topup(session, buyer="x:1", amount=900, currency="JPY", stripe_ref="j", at=T0)
    held = ledger.hold_many(
        session,
        [
            ledger.HoldRequest("x:1", "paris", 100, "EUR", "p1", LATER),
            ledger.HoldRequest("x:1", "tokyo", 900, "JPY", "t1", LATER),
            ledger.HoldRequest("x:1", "tokyo", 1, "JPY", "t2", LATER),
        ],
        at=T0,
    )
    assert sorted(held) == ["p1", "t1"]
    assert ledger.currencies(session, "x:1") == ["EUR", "JPY"]
    assert ledger.available(session, "x:1", "EUR") == ledger.available(session, "x:1", "JPY") == 0
    assert ledger.audit(session) == []


def test_lock_wallets_reports_what_each_fan_can_spend(session: Session) -> None:
    _fund(session, 3)
    ledger.hold(
        session,
        buyer="mastodon:1",
        campaign_id="mi2",
        amount=1200,
        currency="CNY",
        ref="h",
        expires_at=LATER,
        at=T0,
    )
    assert ledger.lock_wallets(session, ["mastodon:0", "mastodon:1", "x:new"], "CNY") == {
        "mastodon:0": 5000,
        "mastodon:1": 3800,
        "x:new": 0,
    }
