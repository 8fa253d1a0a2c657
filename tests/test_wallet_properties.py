"""Random sequences of top-ups, holds, posts, voids, lapses, refunds and cash-outs keep the books.

A hypothesis state machine drives the ledger and a plain-Python model side by side. After every
step: each wallet's posted and held totals match the model, nothing is overdrawn, and the audit
(legs sum to zero, totals equal legs, books balance) is clean.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy.orm import Session

from config.database import create_engine
from wallet import ledger
from wallet.errors import HoldExpired, HoldNotPending, InsufficientFunds, TransferConflict

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CUR = "CNY"
BUYERS = st.integers(0, 2)
AMOUNTS = st.integers(1, 4000)


class LedgerMachine(RuleBasedStateMachine):
    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.engine = create_engine(self.url)
        self.session = Session(self.engine)
        self.ns = uuid.uuid4().hex[:8]  # examples share one database; keys never collide
        self.now = T0
        self.posted = [0, 0, 0]
        self.held = [0, 0, 0]
        self.sales = 0
        self.topups: dict[str, tuple[int, int]] = {}
        self.holds: dict[str, dict[str, Any]] = {}
        self.counter = 0

    def teardown(self) -> None:
        self.session.close()
        self.engine.dispose()

    def buyer(self, index: int) -> str:
        return f"mastodon:{self.ns}{index}"

    def ref(self, prefix: str) -> str:
        self.counter += 1
        return f"{self.ns}:{prefix}{self.counter}"

    def available(self, index: int) -> int:
        return self.posted[index] - self.held[index]

    # -- rules ---------------------------------------------------------------------------------

    @rule(b=BUYERS, amount=AMOUNTS, slot=st.integers(0, 4))
    def top_up(self, b: int, amount: int, slot: int) -> None:
        ref = f"{self.ns}:cs{slot}"
        before = self.topups.get(ref)
        if before is not None and before != (b, amount):
            with pytest.raises(TransferConflict):
                ledger.credit_topup(
                    self.session,
                    buyer=self.buyer(b),
                    amount=amount,
                    currency=CUR,
                    stripe_ref=ref,
                    at=self.now,
                )
            self.session.rollback()
            return
        credited = ledger.credit_topup(
            self.session,
            buyer=self.buyer(b),
            amount=amount,
            currency=CUR,
            stripe_ref=ref,
            at=self.now,
        )
        self.session.commit()
        assert credited is (before is None)
        if credited:
            self.topups[ref] = (b, amount)
            self.posted[b] += amount

    @rule(b=BUYERS, amount=AMOUNTS, ttl=st.integers(1, 60))
    def hold(self, b: int, amount: int, ttl: int) -> None:
        ref = self.ref("h")
        expires = self.now + timedelta(minutes=ttl)
        if self.available(b) < amount:
            with pytest.raises(InsufficientFunds):
                ledger.hold(
                    self.session,
                    buyer=self.buyer(b),
                    campaign_id=f"c{self.ns}",
                    amount=amount,
                    currency=CUR,
                    ref=ref,
                    expires_at=expires,
                    at=self.now,
                )
            self.session.rollback()
            return
        ledger.hold(
            self.session,
            buyer=self.buyer(b),
            campaign_id=f"c{self.ns}",
            amount=amount,
            currency=CUR,
            ref=ref,
            expires_at=expires,
            at=self.now,
        )
        self.session.commit()
        self.held[b] += amount
        self.holds[ref] = {"b": b, "amount": amount, "state": "pending", "expires": expires}

    @rule(
        orders=st.lists(st.tuples(BUYERS, st.integers(1, 1500)), min_size=1, max_size=8),
        post=st.booleans(),
    )
    def hold_batch(self, orders: list[tuple[int, int]], post: bool) -> None:
        expires = self.now + timedelta(minutes=15)
        requests = [
            ledger.HoldRequest(self.buyer(b), f"c{self.ns}", amount, CUR, self.ref("m"), expires)
            for b, amount in orders
        ]
        held = ledger.hold_many(self.session, requests, post=post, at=self.now)
        self.session.commit()
        left = [self.available(i) for i in range(3)]
        for (b, amount), request in zip(orders, requests, strict=True):
            fits = left[b] >= amount
            assert (request.ref in held) is fits, (request, left)
            if not fits:
                continue
            left[b] -= amount
            if post:
                self.posted[b] -= amount
                self.sales += amount
                state = "posted"
            else:
                self.held[b] += amount
                state = "pending"
            self.holds[request.ref] = {"b": b, "amount": amount, "state": state, "expires": expires}

    @rule(data=st.data(), post=st.booleans())
    def settle(self, data: st.DataObject, post: bool) -> None:
        if not self.holds:
            return
        ref = data.draw(st.sampled_from(sorted(self.holds)))
        hold = self.holds[ref]
        act = ledger.post_hold if post else ledger.void_hold
        if hold["state"] != "pending":
            with pytest.raises(HoldNotPending):
                act(self.session, ref, at=self.now)
            self.session.rollback()
            return
        if post and self.now >= hold["expires"]:
            with pytest.raises(HoldExpired):
                act(self.session, ref, at=self.now)
            self.session.rollback()
            return
        act(self.session, ref, at=self.now)
        self.session.commit()
        self.held[hold["b"]] -= hold["amount"]
        if post:
            self.posted[hold["b"]] -= hold["amount"]
            self.sales += hold["amount"]
        hold["state"] = "posted" if post else "voided"

    @rule(minutes=st.integers(0, 40))
    def time_passes_and_lapsed_holds_are_voided(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        lapsed = [r for r in ledger.lapsed_holds(self.session, self.now) if r.startswith(self.ns)]
        expected = sorted(
            r for r, h in self.holds.items() if h["state"] == "pending" and h["expires"] <= self.now
        )
        assert sorted(lapsed) == expected
        ledger.void_many(self.session, lapsed, at=self.now)
        self.session.commit()
        for ref in lapsed:
            self.held[self.holds[ref]["b"]] -= self.holds[ref]["amount"]
            self.holds[ref]["state"] = "voided"

    @rule(b=BUYERS, amount=AMOUNTS)
    def refund_to_wallet(self, b: int, amount: int) -> None:
        args = {
            "buyer": self.buyer(b),
            "campaign_id": f"c{self.ns}",
            "amount": amount,
            "currency": CUR,
            "ref": self.ref("r"),
            "at": self.now,
        }
        if self.sales < amount:
            with pytest.raises(InsufficientFunds):
                ledger.refund_to_wallet(self.session, **args)
            self.session.rollback()
            return
        assert ledger.refund_to_wallet(self.session, **args)
        self.session.commit()
        self.sales -= amount
        self.posted[b] += amount

    @rule(b=BUYERS, amount=AMOUNTS)
    def stripe_refund(self, b: int, amount: int) -> None:
        ref = self.ref("re")
        take = min(amount, self.available(b))
        assert ledger.debit_refund(
            self.session, buyer=self.buyer(b), amount=amount, currency=CUR, ref=ref, at=self.now
        )
        self.session.commit()
        self.posted[b] -= take

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def wallets_match_the_model_and_never_go_below_zero(self) -> None:
        buyers = [self.buyer(i) for i in range(3)]
        many = ledger.available_many(self.session, buyers, CUR)
        for i, buyer in enumerate(buyers):
            assert ledger.balance(self.session, buyer, CUR) == ledger.Balance(
                self.posted[i], self.held[i]
            )
            assert many[buyer] == self.available(i) >= 0
            lines = ledger.statement(self.session, buyer, CUR)
            posted_lines = [e for e in lines if e.state == "posted"]
            assert sum(e.amount for e in posted_lines) == self.posted[i]
            assert -sum(e.amount for e in lines if e.state == "pending") == self.held[i]

    @invariant()
    def books_balance(self) -> None:
        assert ledger.audit(self.session) == []


def test_random_operation_sequences_keep_the_books(db_url: str) -> None:
    LedgerMachine.url = db_url
    examples = 20 if db_url.startswith("sqlite") else 8  # PostgreSQL steps cost more
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )
