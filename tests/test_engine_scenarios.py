"""Worked scenarios a brand or a fan would notice, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Table, event
from sqlalchemy.orm import Session
from test_engine_support import CLOSES, OPENS, Shop, kinds, make_brand

from orders import bulk_copy
from orders.engine import capture_held

PRICE = 100_00


@pytest.fixture
def shop(db_url: str) -> Iterator[Shop]:
    s = Shop(db_url)
    yield s
    assert s.audit() == []
    s.close()


def test_fan_tops_up_orders_two_hold_lapses_waitlist_moves_up_and_a_refund(shop: Shop) -> None:
    # Alice tops up 200.00 and orders two phones: paid from her wallet at once.
    shop.topup("alice", 2 * PRICE)
    alice_post = shop.post("alice", quantity=2)
    [out] = shop.apply(alice_post)
    assert (out.kind, out.state, out.quantity) == ("confirmed", "confirmed", 2)
    assert shop.balance("alice") == 0

    # Bob takes the last unit without credit; Carol and Dave queue behind him.
    bob, carol, dave = (shop.post(f) for f in ("bob", "carol", "dave"))
    outs = shop.apply(bob, carol, dave)
    assert kinds(outs) == ["payment_needed", "waitlisted", "waitlisted"]
    assert outs[0].amount_due == PRICE and outs[0].hold_expires_at == shop.now + timedelta(
        minutes=30
    )
    assert [o.queue_position for o in outs[1:]] == [1, 2]
    assert shop.stock() == {"stock": 3, "allocated": 3, "released": 0, "waitlisted": 2}
    assert shop.audit() == []

    # Bob's hold lapses: his unit goes to Carol, who has no credit yet.
    shop.advance(minutes=29)
    assert shop.expire() == []
    shop.advance(minutes=2)
    outs = shop.expire()
    assert [(o.kind, o.buyer, o.state) for o in outs] == [
        ("expired", "mastodon:bob", "expired"),
        ("promoted", "mastodon:carol", "awaiting_payment"),
    ]
    assert shop.audit() == []

    # Carol tops up: her reservation is confirmed and paid.
    [confirmed] = shop.topup("carol", PRICE)
    assert (confirmed.kind, confirmed.buyer) == ("confirmed", "mastodon:carol")
    assert shop.balance("carol") == 0

    # Alice deletes her order post while cancellation is open: refunded, two units free,
    # Dave moves up.
    outs = shop.apply(shop.delete(alice_post))
    assert [(o.kind, o.buyer) for o in outs] == [
        ("cancelled", "mastodon:alice"),
        ("promoted", "mastodon:dave"),
    ]
    assert shop.balance("alice") == 2 * PRICE
    assert shop.stock() == {"stock": 3, "allocated": 2, "released": 3, "waitlisted": 0}
    # The freed unit nobody waits for goes to the next order.
    [eve] = shop.apply(shop.post("eve"))
    assert eve.kind == "payment_needed"


def test_the_same_post_is_reserved_once(shop: Shop) -> None:
    order = shop.post("alice")
    outs = shop.apply(order, order)
    assert kinds(outs) == ["payment_needed", "duplicate"]
    assert kinds(shop.apply(order)) == ["duplicate"]
    assert len(shop.reservations()) == 1


def test_windows_are_judged_on_post_time(shop: Shop) -> None:
    early = shop.post("alice", at=OPENS - timedelta(seconds=1))
    at_close = shop.post("bob", at=CLOSES)
    inside = shop.post("carol", at=CLOSES - timedelta(seconds=1))
    shop.now = CLOSES + timedelta(minutes=5)  # delivered late, posted inside: still accepted
    outs = shop.apply(early, at_close, inside)
    assert [(o.kind, o.reason) for o in outs] == [
        ("rejected", "campaign_not_open"),
        ("rejected", "campaign_closed"),
        ("payment_needed", None),
    ]


def test_per_buyer_limit_counts_every_live_reservation(shop: Shop) -> None:
    outs = shop.apply(shop.post("alice"), shop.post("alice"), shop.post("alice"))
    assert [(o.kind, o.reason) for o in outs] == [
        ("payment_needed", None),
        ("payment_needed", None),
        ("rejected", "over_limit"),
    ]
    [big] = shop.apply(shop.post("bob", quantity=3))
    assert (big.kind, big.reason) == ("rejected", "over_limit")
    # Waitlisted units count too.
    assert kinds(shop.apply(shop.post("bob"), shop.post("carol", quantity=2))) == [
        "payment_needed",
        "waitlisted",
    ]
    [more] = shop.apply(shop.post("carol"))
    assert (more.kind, more.reason) == ("rejected", "over_limit")
    # Cancelled units do not: Alice may order again, and queues behind Carol.
    outs = shop.apply(shop.post("alice", "cancel", sku=None))
    assert kinds(outs) == ["cancelled", "cancelled", "promoted"]
    assert [(o.kind, o.queue_position) for o in shop.apply(shop.post("alice"))] == [
        ("waitlisted", 1)
    ]


def test_partial_fill_takes_what_is_left_and_waits_for_the_rest(shop: Shop) -> None:
    shop.apply(shop.post("alice", quantity=2))
    outs = shop.apply(shop.post("bob", quantity=2))
    assert [(o.kind, o.quantity, o.queue_position) for o in outs] == [
        ("payment_needed", 1, None),
        ("waitlisted", 1, 1),
    ]
    assert shop.stock()["allocated"] == 3  # sold out exactly
    outs = shop.apply(shop.post("alice", "cancel", sku="PHONE-BLACK"))
    assert [(o.kind, o.buyer, o.quantity) for o in outs] == [
        ("cancelled", "mastodon:alice", 2),
        ("promoted", "mastodon:bob", 1),
    ]
    assert shop.stock() == {"stock": 3, "allocated": 2, "released": 2, "waitlisted": 0}


def test_promotion_splits_a_waiting_order_bigger_than_what_is_free(shop: Shop) -> None:
    shop.apply(shop.post("alice", quantity=2), shop.post("bob"))
    [waiting] = shop.apply(shop.post("carol", quantity=2))
    assert (waiting.kind, waiting.quantity) == ("waitlisted", 2)
    outs = shop.apply(shop.post("bob", "cancel", sku=None))
    assert [(o.kind, o.buyer, o.quantity) for o in outs] == [
        ("cancelled", "mastodon:bob", 1),
        ("promoted", "mastodon:carol", 1),
    ]
    carol = shop.states("carol")
    assert sorted(s for _, s, _ in carol) == ["awaiting_payment", "waitlisted"]
    assert shop.stock()["waitlisted"] == 1


def test_stock_goes_in_post_time_order_with_post_id_breaking_ties(shop: Shop) -> None:
    t = shop.now
    late = shop.post("zed", at=t + timedelta(seconds=5), post_id="50")
    tie_b = shop.post("bob", at=t, post_id="20")
    tie_a = shop.post("amy", at=t, post_id="10")
    mid = shop.post("cat", at=t + timedelta(seconds=1), post_id="30")
    outs = shop.apply(late, tie_b, tie_a, mid)
    got = {o.buyer: o.kind for o in outs}
    assert got == {
        "mastodon:amy": "payment_needed",
        "mastodon:bob": "payment_needed",
        "mastodon:cat": "payment_needed",
        "mastodon:zed": "waitlisted",
    }
    assert [o.buyer for o in outs] == [
        "mastodon:zed",
        "mastodon:bob",
        "mastodon:amy",
        "mastodon:cat",
    ]


def test_an_edit_never_changes_an_accepted_reservation(shop: Shop) -> None:
    order = shop.post("alice", post_id="7")
    shop.apply(order)
    edit = shop.post(
        "alice",
        quantity=2,
        sku="PHONE-WHITE",
        post_id="7",
        event="edit",
        at=shop.now + timedelta(seconds=30),
    )
    [out] = shop.apply(edit)
    assert (out.kind, out.reason) == ("ignored", "edit_ignored")
    assert shop.states("alice") == [("7", "awaiting_payment", 1)]
    assert shop.reservations("alice")[0]["sku"] == "PHONE-BLACK"


def test_a_rejected_post_edited_is_a_new_attempt_at_its_edit_time(shop: Shop) -> None:
    shop.apply(shop.post("alice", "reject", reason="unknown_variant", post_id="7"))
    # Others order in the meantime and take the stock.
    shop.advance(seconds=10)
    shop.apply(shop.post("bob", quantity=2), shop.post("carol"))
    # Alice fixes her post; she queues behind them, not ahead.
    shop.advance(seconds=10)
    edit = shop.post("alice", post_id="7", event="edit")
    [out] = shop.apply(edit)
    assert (out.kind, out.queue_position) == ("waitlisted", 1)
    assert shop.reservations("alice")[0]["posted_at"] == shop.now
    # The same edit delivered again is a duplicate.
    assert kinds(shop.apply(edit)) == ["duplicate"]


def test_an_order_rejected_before_opening_can_be_edited_after(shop: Shop) -> None:
    early = shop.post("alice", at=OPENS - timedelta(minutes=1), post_id="7")
    assert shop.apply(early)[0].reason == "campaign_not_open"
    edit = shop.post("alice", post_id="7", event="edit", at=OPENS + timedelta(seconds=5))
    [out] = shop.apply(edit)
    assert out.kind == "payment_needed"
    assert [(s, q) for _, s, q in shop.states("alice")] == [
        ("rejected", 1),
        ("awaiting_payment", 1),
    ]


def test_delete_of_a_waitlisted_order_leaves_the_queue(shop: Shop) -> None:
    shop.apply(shop.post("alice", quantity=2), shop.post("bob"))
    queued = shop.post("carol")
    shop.apply(queued)
    [out] = shop.apply(shop.delete(queued))
    assert (out.kind, out.reason) == ("cancelled", "deleted")
    assert shop.stock()["waitlisted"] == 0
    # A second delivery of the delete changes nothing.
    assert kinds(shop.apply(shop.delete(queued))) == ["duplicate"]


def test_a_post_deleted_before_it_arrives_is_never_reserved(shop: Shop) -> None:
    order = shop.post("alice")
    [out] = shop.apply(shop.delete(order))
    assert (out.kind, out.reason) == ("ignored", "deleted")
    assert kinds(shop.apply(order)) == ["duplicate"]
    assert shop.reservations() == []


def test_confirmed_orders_are_not_refunded_after_cancel_until(db_url: str) -> None:
    shop = Shop(db_url, make_brand(cancel_until=OPENS + timedelta(minutes=10)))
    shop.topup("alice", PRICE)
    order = shop.post("alice")
    assert kinds(shop.apply(order)) == ["confirmed"]
    shop.advance(minutes=20)
    [out] = shop.apply(shop.delete(order))
    assert (out.kind, out.reason, out.state) == ("rejected", "cancel_closed", "confirmed")
    assert shop.balance("alice") == 0
    assert shop.audit() == []
    shop.close()


def test_cancel_command_refunds_to_the_wallet(shop: Shop) -> None:
    shop.topup("alice", 3 * PRICE)
    shop.apply(shop.post("alice", quantity=2))
    assert shop.balance("alice") == PRICE
    [out] = shop.apply(shop.post("alice", "cancel", sku=None))
    assert (out.kind, out.state, out.quantity) == ("cancelled", "cancelled", 2)
    assert shop.balance("alice") == 3 * PRICE
    [nothing] = shop.apply(shop.post("alice", "cancel", sku=None))
    assert (nothing.kind, nothing.reason) == ("rejected", "nothing_to_cancel")


def test_a_cancel_does_not_reach_an_order_posted_after_it(shop: Shop) -> None:
    t = shop.now
    cancel = shop.post("alice", "cancel", sku=None, at=t)
    order = shop.post("alice", at=t + timedelta(seconds=1))
    outs = shop.apply(order, cancel)
    assert [(o.kind, o.reason) for o in outs] == [
        ("payment_needed", None),
        ("rejected", "nothing_to_cancel"),
    ]


def test_status_balance_topup_and_help_answers(shop: Shop) -> None:
    shop.topup("alice", 50_00)
    shop.apply(shop.post("alice", quantity=2), shop.post("bob"), shop.post("bob"))
    outs = shop.apply(
        shop.post("alice", "status"),
        shop.post("bob", "status"),
        shop.post("alice", "balance"),
        shop.post("alice", "topup", amount=150_00),
        shop.post("carol", "help"),
        shop.post("carol", "status"),
    )
    assert kinds(outs) == ["status", "status", "balance", "topup", "help", "status"]
    alice, bob, balance, topup, _, carol = outs
    assert (alice.state, alice.quantity, alice.amount_due) == ("awaiting_payment", 2, 2 * PRICE)
    assert (bob.state, bob.queue_position) == ("awaiting_payment", None)
    assert balance.balance == 50_00
    assert topup.amount == 150_00
    assert carol.state is None


def test_reminders_come_once_before_a_hold_lapses(shop: Shop) -> None:
    shop.apply(shop.post("alice"))
    assert shop.reminders() == []
    shop.advance(minutes=26)
    [out] = shop.reminders()
    assert (out.kind, out.buyer, out.amount_due) == ("reminder", "mastodon:alice", PRICE)
    assert shop.reminders() == []


def test_a_confirmation_step_holds_credit_without_taking_it(db_url: str) -> None:
    shop = Shop(db_url, make_brand(confirmation_step=True))
    shop.topup("alice", PRICE)
    order = shop.post("alice")
    [out] = shop.apply(order)
    assert out.kind == "confirmed"
    assert shop.reservations("alice")[0]["payment"] == "held"
    assert shop.balance("alice") == 0
    shop.apply(shop.delete(order))
    assert shop.balance("alice") == PRICE
    # The brand confirms the sale of another order: only then is the money taken.
    shop.apply(shop.post("alice"))
    assert shop.balance("alice") == 0
    with shop.sessions.begin() as s:
        [out] = capture_held(s, shop.campaign_id, now=shop.now)
    assert (out.kind, out.reason) == ("confirmed", "captured")
    assert shop.reservations("alice")[-1]["payment"] == "posted"
    with shop.sessions.begin() as s:
        assert capture_held(s, shop.campaign_id, now=shop.now) == []
    assert shop.audit() == []
    shop.close()


def test_top_up_confirms_oldest_first_while_credit_lasts(shop: Shop) -> None:
    first = shop.post("alice", sku="PHONE-WHITE")
    shop.advance(seconds=1)
    second = shop.post("alice")
    shop.apply(first, second)
    outs = shop.topup("alice", PRICE + 50_00)
    assert [(o.kind, o.sku) for o in outs] == [("confirmed", "PHONE-WHITE")]
    assert shop.balance("alice") == 50_00
    # A lapsed hold is not settled by a late top-up.
    shop.advance(minutes=31)
    assert shop.topup("alice", PRICE) == []


def test_a_batch_of_thousands_costs_a_handful_of_statements(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = Shop(db_url, make_brand(stock={"PHONE-BLACK": 500, "PHONE-WHITE": 500}))
    shop.topup("fan1", 10 * PRICE)
    batch = [
        shop.post(f"fan{i % 1500}", sku=("PHONE-BLACK", "PHONE-WHITE")[i % 2]) for i in range(3000)
    ]
    batch += batch[:100]  # redeliveries
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    copy_rows = bulk_copy.copy_rows

    def count_copy(session: Session, table: Table, *args: Any) -> int:
        statements.append(f"COPY {table.name}")  # PostgreSQL's, which cursor events miss
        return copy_rows(session, table, *args)

    monkeypatch.setattr(bulk_copy, "copy_rows", count_copy)
    event.listen(shop.engine, "before_cursor_execute", count)
    outs = shop.apply(*batch)
    event.remove(shop.engine, "before_cursor_execute", count)
    assert len(outs) == 3100
    assert shop.stock()["allocated"] == 500
    assert len(statements) <= 25, statements
    copies = [s for s in statements if s.startswith("COPY")]
    if shop.engine.dialect.name == "postgresql":
        assert copies == ["COPY order_posts", "COPY order_reservations"], statements
    assert shop.audit() == []
    shop.close()


def test_a_batch_of_deletions_and_cancels_costs_a_handful_of_statements(db_url: str) -> None:
    shop = Shop(db_url, make_brand(stock={"PHONE-BLACK": 500, "PHONE-WHITE": 500}))
    orders = [shop.post(f"fan{i}") for i in range(600)]
    shop.apply(*orders)
    shop.advance(minutes=1)
    deletions = [shop.delete(cmd) for cmd in orders[:300]]
    cancels = [shop.post(f"fan{i}", "cancel", sku=None) for i in range(300, 400)]
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(shop.engine, "before_cursor_execute", count)
    outs = shop.apply(*deletions, *cancels)
    event.remove(shop.engine, "before_cursor_execute", count)
    assert [o.kind for o in outs].count("cancelled") == 400
    # The whole waitlist (fans 500..599) took 100 of the 400 freed units.
    assert [o.kind for o in outs].count("promoted") == 100
    assert shop.stock()["allocated"] == 500 - 400 + 100
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE ORDER_RESERVATIONS")]
    # One update for the deleted posts' reservations, one for the cancelled, one for the
    # promoted: not one per post.
    assert len(updates) == 3, updates
    assert len(statements) <= 30, statements
    assert shop.audit() == []
    shop.close()
