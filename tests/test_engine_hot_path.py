"""The engine's per-post shortcuts say exactly what the plain steps say, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, timedelta

import pytest
from sqlalchemy import select
from test_engine_support import OPENS, Shop, kinds

from orders.book import Stock
from orders.bulk import insert_new, insert_rows, sqlite_literal, time_encoder
from orders.outcomes import Outcome
from orders.placing import outcome_for
from orders.tables import posts


@pytest.fixture
def shop(db_url: str) -> Iterator[Shop]:
    s = Shop(db_url)
    yield s
    assert s.audit() == []
    s.close()


@pytest.mark.parametrize(
    ("counters", "units", "placed"),
    [
        ((10, 0, 0, 0, 0), 3, (3, None, None)),  # all free
        ((10, 8, 0, 0, 0), 3, (2, 1, 1)),  # partly free: the rest waits, first in line
        ((10, 10, 0, 0, 0), 2, (0, 1, 1)),  # sold out, nobody waiting yet
        ((10, 10, 2, 4, 9), 1, (0, 10, 5)),  # sold out, four units wait ahead, nine ever joined
        ((10, 6, 0, 3, 3), 2, (0, 4, 4)),  # free units, but someone waits: nobody jumps the queue
        ((10, 7, 0, 0, 0), 3, (3, None, None)),  # exactly what is free
    ],
)
def test_an_order_takes_what_is_free_unless_someone_waits_and_queues_the_rest(
    counters: tuple[int, int, int, int, int],
    units: int,
    placed: tuple[int, int | None, int | None],
) -> None:
    stock = Stock(*counters)
    assert stock.place(units) == placed
    taken = placed[0]
    assert (stock.d_allocated, stock.d_waitlisted, stock.d_enqueued) == (
        taken,
        units - taken,
        units - taken,
    )
    assert stock.free >= 0


def test_every_outcome_field_is_as_the_constructor_makes_it(shop: Shop) -> None:
    shop.topup("alice", 100_00)
    first = shop.post("alice")
    outs = shop.apply(
        first,
        shop.post("bob", quantity=2),
        shop.post("carol", sku="PHONE-WHITE"),
        first,
        shop.post("dave", sku="PHONE-RED"),
        shop.post("erin", "ignore", reason="not_addressed"),
        shop.post("bob", "status"),
    )
    assert kinds(outs) == [
        "confirmed",
        "payment_needed",
        "payment_needed",
        "duplicate",
        "rejected",
        "ignored",
        "status",
    ]
    for out in outs:
        rebuilt = Outcome(**{f.name: getattr(out, f.name) for f in fields(Outcome)})
        assert out == rebuilt
        assert vars(out) == vars(rebuilt)


def test_an_outcome_is_not_made_with_a_field_it_does_not_have(shop: Shop) -> None:
    with pytest.raises(TypeError, match="queue_place"):
        outcome_for(shop.post("alice"), "status", queue_place=3)


def test_an_unseen_post_deleted_twice_in_one_batch_is_remembered_once(shop: Shop) -> None:
    order = shop.post("alice")
    first, second = shop.apply(shop.delete(order), shop.delete(order))
    assert (first.kind, first.reason) == ("ignored", "deleted")
    assert second.kind == "duplicate"
    assert kinds(shop.apply(order)) == ["duplicate"]
    assert shop.reservations() == []


def test_a_post_seen_in_an_earlier_batch_is_a_duplicate_among_new_ones(shop: Shop) -> None:
    old = shop.post("alice")
    shop.apply(old)
    outs = shop.apply(shop.post("bob"), old, shop.post("carol"))
    assert kinds(outs) == ["payment_needed", "duplicate", "payment_needed"]
    assert [r["buyer"] for r in shop.reservations()] == [
        "mastodon:alice",
        "mastodon:bob",
        "mastodon:carol",
    ]


def test_insert_new_inserts_only_unseen_keys_and_says_which_it_skipped(shop: Shop) -> None:
    columns = ("platform", "post_id", "campaign_id", "buyer", "posted_at", "decision")
    with shop.sessions.begin() as session:
        encode = time_encoder(session)
        at = encode(OPENS)

        def row(post_id: str) -> tuple[object, ...]:
            return ("mastodon", post_id, shop.campaign_id, "mastodon:x", at, "ignore")

        constants = {"attempts": 1, "seen_at": OPENS + timedelta(seconds=1)}
        key = ("platform", "post_id")
        assert insert_new(session, posts, columns, [], key=key, constants=constants) == set()
        first = [row("1"), row("2")]
        assert insert_new(session, posts, columns, first, key=key, constants=constants) == set()
        again = [row("2"), row("3"), row("1"), row("4")]
        assert insert_new(session, posts, columns, again, key=key, constants=constants) == {0, 2}
        stored = session.execute(select(posts.c.post_id, posts.c.attempts)).all()
        assert sorted(stored) == [("1", 1), ("2", 1), ("3", 1), ("4", 1)]
        with pytest.raises(ValueError, match="first columns"):
            insert_new(session, posts, columns[1:], [row("5")[1:]], key=key, constants=constants)

        # Keys of two platforms in one batch: the same post id is another post on X.
        mixed = [("x", "1", *row("1")[2:]), row("4"), row("5"), ("x", "4", *row("4")[2:])]
        assert insert_new(session, posts, columns, mixed, key=key, constants=constants) == {1}
        stored = session.execute(select(posts.c.platform, posts.c.post_id)).all()
        assert sorted(stored) == [
            ("mastodon", "1"),
            ("mastodon", "2"),
            ("mastodon", "3"),
            ("mastodon", "4"),
            ("mastodon", "5"),
            ("x", "1"),
            ("x", "4"),
        ]
        # A key given as a number matches the same key stored as text, as a bound one would.
        as_number = [("mastodon", 3, *row("3")[2:])]
        assert insert_new(session, posts, columns, as_number, key=key, constants=constants) == {0}


def test_a_batch_constant_is_stored_as_the_same_value_bound_in_each_row(shop: Shop) -> None:
    columns = ("platform", "post_id", "campaign_id", "buyer", "posted_at", "decision")
    facts = {
        "reason": "can't parse",
        "quantity": 2,
        "attempts": 1,
        "seen_at": OPENS + timedelta(seconds=1, microseconds=5),
        "deleted_at": None,
    }
    first = ("mastodon", "1", shop.campaign_id, "mastodon:x", OPENS, "reject")
    with shop.sessions.begin() as session:
        insert_rows(session, posts, columns, [first], constants=facts)
        bound = (*columns, *facts)
        insert_rows(session, posts, bound, [("mastodon", "2", *first[2:], *facts.values())])
        one, two = (
            session.execute(select(posts).where(posts.c.post_id == n)).one()._asdict()
            for n in ("1", "2")
        )
        assert one == {**two, "post_id": "1"}
        assert one["reason"] == "can't parse"
        if shop.engine.dialect.name == "sqlite":
            typed = "SELECT typeof(reason), typeof(quantity), typeof(seen_at), typeof(deleted_at)"
            types = session.connection().exec_driver_sql(f"{typed} FROM order_posts").all()
            assert types == [("text", "integer", "text", "null")] * 2


def test_sqlite_literals_quote_text_and_refuse_what_sqlite_cannot_store() -> None:
    assert sqlite_literal("it's") == "'it''s'"
    assert sqlite_literal(True) == "1"
    assert sqlite_literal(7) == "7"
    assert sqlite_literal(None) == "NULL"
    assert sqlite_literal(OPENS) == f"'{OPENS.astimezone(UTC).isoformat(' ', 'microseconds')[:26]}'"
    for value in ("nul\x00", 1.5, b"bytes", 2**63):
        with pytest.raises(TypeError):
            sqlite_literal(value)
