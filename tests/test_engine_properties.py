"""A state machine of fans ordering, cancelling, topping up, deleting and editing while holds
lapse: after every step, every invariant of docs/design.md holds (`orders.audit`), stock is
never left idle while someone waits for it, and every waitlist position is the place promotion
gives."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select
from test_engine_support import OPENS, Shop, make_brand

from orders.commands import Command
from orders.queue import campaign_queue, positions
from orders.tables import products

FANS = st.sampled_from(["ann", "ben", "cai", "dee", "eve"])
SKUS = st.sampled_from(["PHONE-BLACK", "PHONE-WHITE"])


def machine_for(shop: Shop, **rules: object) -> type[RuleBasedStateMachine]:
    """Each example is a new campaign with new fans in the same database: no tables to
    rebuild between examples (the ledger is append-only), and the audit sees them all."""
    examples = iter(range(1, 1_000_000))

    class FlashSale(RuleBasedStateMachine):
        orders = Bundle("orders")

        def __init__(self) -> None:
            super().__init__()
            n = next(examples)
            shop.now = OPENS + timedelta(minutes=1)
            shop.use(make_brand(campaign_id=f"sale{n}", **rules), fan_prefix=f"{n}-")  # type: ignore[arg-type]

        @rule(target=orders, fan=FANS, sku=SKUS, quantity=st.integers(1, 3))
        def order(self, fan: str, sku: str, quantity: int) -> Command:
            cmd = shop.post(fan, sku=sku, quantity=quantity)
            outs = shop.apply(cmd)
            assert outs and all(o.post_id == cmd.post_id for o in outs)
            return cmd

        @rule(cmd=orders)
        def redeliver(self, cmd: Command) -> None:
            assert [o.kind for o in shop.apply(cmd)] == ["duplicate"]

        @rule(cmd=orders)
        def delete(self, cmd: Command) -> None:
            shop.apply(shop.delete(cmd))

        @rule(cmd=orders, sku=SKUS)
        def edit(self, cmd: Command, sku: str) -> None:
            shop.advance(seconds=1)
            before = shop.states(cmd.buyer.split(":")[1])
            edited = shop.post(cmd.buyer.split(":")[1], sku=sku, post_id=cmd.post_id, event="edit")
            outs = shop.apply(edited)
            if outs[0].reason == "edit_ignored":
                assert shop.states(cmd.buyer.split(":")[1]) == before

        @rule(fan=FANS, sku=st.none() | SKUS)
        def cancel(self, fan: str, sku: str | None) -> None:
            shop.apply(shop.post(fan, "cancel", sku=sku))

        @rule(fan=FANS, amount=st.sampled_from([50_00, 100_00, 250_00]))
        def top_up(self, fan: str, amount: int) -> None:
            before = shop.balance(fan)
            confirmed = shop.topup(fan, amount)
            spent = sum(o.quantity or 0 for o in confirmed) * 100_00
            assert shop.balance(fan) == before + amount - spent

        @rule(minutes=st.integers(1, 40))
        def time_passes(self, minutes: int) -> None:
            shop.advance(minutes=minutes)
            shop.reminders()
            shop.expire()

        @rule(fan=FANS)
        def status(self, fan: str) -> None:
            assert [o.kind for o in shop.apply(shop.post(fan, "status"))] == ["status"]

        @invariant()
        def every_invariant_holds(self) -> None:
            assert shop.audit() == []

        @invariant()
        def positions_match_the_queue_promotion_follows(self) -> None:
            # The few-probe count (tickets minus units that left) against a window over the
            # whole waitlist in promotion order: splits, cancels and promotions included.
            with shop.sessions() as s:
                queue = campaign_queue(shop.campaign_id)
                window = {
                    int(i): int(p) for i, p in s.execute(select(queue.c.id, queue.c.position))
                }
                assert positions(s, window) == window

        @invariant()
        def nobody_waits_for_free_stock(self) -> None:
            with shop.sessions() as s:
                for row in s.execute(
                    select(products).where(products.c.campaign_id == shop.campaign_id)
                ):
                    if row.waitlisted:
                        assert row.allocated == row.stock, row

    return FlashSale


@pytest.mark.parametrize("cancel_until", [None, OPENS + timedelta(minutes=20)])
def test_the_sale_keeps_its_invariants(db_url: str, cancel_until: object) -> None:
    shop = Shop(db_url)
    examples = 15 if db_url.startswith("sqlite") else 8
    try:
        run_state_machine_as_test(
            machine_for(shop, cancel_until=cancel_until, hold_minutes=15),
            settings=settings(
                max_examples=examples,
                stateful_step_count=15,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            ),
        )
    finally:
        shop.close()
