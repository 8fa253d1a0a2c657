"""The engine: apply a batch of decided posts in the caller's one transaction.

`apply(session, batch, now=...)` does, set-based, for thousands of posts at a time:

1. lock the stock rows of the batch's campaigns (fixed order: campaign, SKU);
2. record every new post, dropping those already seen by unique (platform, post_id), within
   the batch and against the database;
3. place orders (`orders.placing`): window judged on post time, per-buyer limit over all of
   the buyer's live reservations in the campaign, first come first served by (post time, post
   id), partial fills with the remainder waitlisted, payment from the wallet;
4. edits: an accepted post never changes; a post that was rejected or ignored is decided again
   as a new attempt stamped with its edit time;
5. cancels and deletes (`orders.lifecycle.cancel`), then the waitlist takes any freed units;
6. status, balance, top-up and help answers (a status reply's waitlist position is exact, in
   promotion order: one `orders.queue.positions` query for the whole batch);

and returns the outcomes in batch order. It flushes and never commits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from config.database import is_postgres
from orders.book import Book
from orders.bulk import insert_new, matching, update_rows
from orders.commands import Command
from orders.lifecycle import (
    Cancellation,
    cancel,
    capture_held,
    due_reminders,
    expire_holds,
    joined,
    lock_for_settlement,
    promote,
    settle_buyer,
)
from orders.outcomes import Outcome
from orders.payments import balances
from orders.placing import outcome_for, place_orders
from orders.queue import positions
from orders.tables import LIVE_STATES, posts, reservations

__all__ = [
    "apply",
    "capture_held",
    "due_reminders",
    "expire_holds",
    "lock_for_settlement",
    "settle_buyer",
]

POST_COLUMNS = (
    "platform",
    "post_id",
    "campaign_id",
    "buyer",
    "posted_at",
    "decision",
    "reason",
    "quantity",
)

Key = tuple[str, str]
Indexed = tuple[int, Command]


def apply(session: Session, batch: Sequence[Command], *, now: datetime) -> list[Outcome]:
    """Apply `batch` and return one or more outcomes per post, in batch order."""
    if not batch:
        return []
    campaign_ids = {c.campaign_id for c in batch}
    deleted = [(c.platform, c.post_id) for c in batch if c.event == "delete"]
    if deleted:
        # A deletion does not say which campaign its post was for: lock those too, up front.
        campaign_ids |= _campaigns_of(session, deleted)
    book = Book.open(session, campaign_ids, now)

    new: list[Indexed] = []
    edits: dict[Key, Indexed] = {}
    deletes: list[Indexed] = []
    seen: set[Key] = set()
    for i, cmd in enumerate(batch):
        key = (cmd.platform, cmd.post_id)
        if cmd.event == "post":
            if key in seen:
                book.emit(outcome_for(cmd, "duplicate"), i)
                continue
            seen.add(key)
            new.append((i, cmd))
        elif cmd.event == "edit":
            # Only the latest edit of a post in a batch counts; earlier ones are superseded.
            earlier = edits.get(key)
            if earlier is None or earlier[1].posted_at <= cmd.posted_at:
                if earlier is not None:
                    book.emit(outcome_for(earlier[1], "duplicate"), earlier[0])
                edits[key] = (i, cmd)
            else:
                book.emit(outcome_for(cmd, "duplicate"), i)
        else:
            deletes.append((i, cmd))

    fresh = _record(book, new)
    commands = _decide(book, fresh, cause="order")
    if edits:
        commands += _apply_edits(book, sorted(edits.values()))
    _apply_cancels(book, [(i, c) for i, c in commands if c.decision.decision == "cancel"])
    if deletes:
        _apply_deletes(book, deletes)
    promote(book)
    _answer(book, [(i, c) for i, c in commands if c.decision.decision != "cancel"])
    return book.close()


def _campaigns_of(session: Session, keys: Sequence[Key]) -> set[str]:
    """The campaigns of the reservations of these posts."""
    found: set[str] = set()
    by_platform: dict[str, list[str]] = defaultdict(list)
    for platform, post_id in keys:
        by_platform[platform].append(post_id)
    for platform, ids in by_platform.items():
        found.update(
            row.campaign_id
            for row in session.execute(
                matching(
                    session,
                    select(reservations.c.campaign_id).where(reservations.c.platform == platform),
                    reservations.c.post_id,
                    ids,
                )
            )
        )
    return found


def existing_posts(session: Session, keys: Sequence[Key], *columns: Any) -> dict[Key, Row[Any]]:
    """Rows of `order_posts` for these keys (one query per platform, on the primary key)."""
    by_platform: dict[str, list[str]] = defaultdict(list)
    for platform, post_id in keys:
        by_platform[platform].append(post_id)
    found: dict[Key, Row[Any]] = {}
    for platform, ids in sorted(by_platform.items()):
        rows = session.execute(
            matching(
                session,
                select(posts.c.platform, posts.c.post_id, *columns).where(
                    posts.c.platform == platform
                ),
                posts.c.post_id,
                ids,
            )
        )
        found.update({(r.platform, r.post_id): r for r in rows})
    return found


def _record(book: Book, items: list[Indexed], *, deleted: bool = False) -> list[Indexed]:
    """Insert post rows; returns the items that are new, emitting `duplicate` for the rest.
    Items must be distinct posts.

    A post already recorded is skipped (`orders.bulk.insert_new`: the keys are probed, then
    the new rows inserted). The stock lock taken by `Book.open` serialises every batch of the
    campaign, so a worker that recorded the same post for the same campaign earlier makes it a
    duplicate here; one that recorded it under another campaign's lock at the same moment
    makes the insert fail with `IntegrityError`, and `bot.pipeline` tries the batch again.
    """
    if not items:
        return []
    session = book.session
    encode = book.encode_time
    columns: tuple[str, ...] = POST_COLUMNS
    rows: list[tuple[Any, ...]] = [
        (
            c.platform,
            c.post_id,
            c.campaign_id,
            c.buyer,
            encode(c.posted_at),
            c.decision.decision,
            c.decision.reason,
            c.decision.quantity,
        )
        for _, c in items
    ]
    if deleted:
        columns = (*POST_COLUMNS, "deleted_at")
        rows = [(*row, row[4]) for row in rows]
    skipped = insert_new(
        session,
        posts,
        columns,
        rows,
        key=("platform", "post_id"),
        constants={"attempts": 1, "seen_at": book.now},
    )
    if not skipped:
        return items
    fresh: list[Indexed] = []
    for n, item in enumerate(items):
        if n in skipped:
            book.emit(outcome_for(item[1], "duplicate"), item[0])
        else:
            fresh.append(item)
    return fresh


def _decide(
    book: Book, items: list[Indexed], *, cause: str, parts: dict[Key, int] | None = None
) -> list[Indexed]:
    """Place the orders among `items`, answer ignores and rejects; return the other commands."""
    orders: list[Indexed] = []
    rest: list[Indexed] = []
    rules = book.rules
    for item in items:
        cmd = item[1]
        kind = cmd.decision.decision
        if kind == "order" and cmd.campaign_id in rules:
            orders.append(item)
        elif cmd.campaign_id not in rules:
            book.emit(outcome_for(cmd, "ignored", reason="unknown_campaign"), item[0])
        elif kind == "ignore":
            book.emit(outcome_for(cmd, "ignored", reason=cmd.decision.reason), item[0])
        elif kind == "reject":
            book.emit(outcome_for(cmd, "rejected", reason=cmd.decision.reason), item[0])
        else:
            rest.append(item)
    place_orders(book, orders, cause=cause, parts=parts)
    return rest


def _apply_edits(book: Book, items: list[Indexed]) -> list[Indexed]:
    """Re-decide edited posts that were rejected or ignored; never touch accepted ones."""
    session = book.session
    keys = [(c.platform, c.post_id) for _, c in items]
    known = existing_posts(
        session, keys, posts.c.decision, posts.c.posted_at, posts.c.deleted_at, posts.c.attempts
    )
    unseen = [(i, c) for i, c in items if (c.platform, c.post_id) not in known]
    # Parts already used per post, and whether any of them was accepted.
    parts: dict[Key, int] = {}
    accepted: set[Key] = set()
    by_platform: dict[str, list[str]] = defaultdict(list)
    for platform, post_id in known:
        by_platform[platform].append(post_id)
    for platform, ids in by_platform.items():
        for used in session.execute(
            matching(
                session,
                select(reservations.c.post_id, reservations.c.part, reservations.c.state).where(
                    reservations.c.platform == platform
                ),
                reservations.c.post_id,
                ids,
            )
        ):
            key = (platform, used.post_id)
            parts[key] = max(parts.get(key, 0), used.part + 1)
            if used.state != "rejected":
                accepted.add(key)

    again: list[Indexed] = []
    updates: list[tuple[Any, ...]] = []
    for i, cmd in items:
        key = (cmd.platform, cmd.post_id)
        found = known.get(key)
        if found is None:
            continue
        row = found
        if row.deleted_at is not None:
            book.emit(outcome_for(cmd, "ignored", reason="deleted"), i)
        elif row.posted_at >= cmd.posted_at:
            book.emit(outcome_for(cmd, "duplicate"), i)
        elif key in accepted or row.decision not in ("order", "ignore", "reject"):
            book.emit(outcome_for(cmd, "ignored", reason="edit_ignored"), i)
        else:
            d = cmd.decision
            updates.append(
                (
                    cmd.platform,
                    cmd.post_id,
                    cmd.posted_at,
                    d.decision,
                    d.reason,
                    d.quantity,
                    row.attempts + 1,
                )
            )
            again.append((i, cmd))
    update_rows(
        session,
        posts,
        ("platform", "post_id"),
        ("posted_at", "decision", "reason", "quantity", "attempts"),
        updates,
    )
    # A never-seen post arrives first as an edit: it is a new post, stamped with its edit time.
    commands = _decide(book, _record(book, unseen), cause="order")
    commands += _decide(book, again, cause="edit", parts=parts)
    return commands


def _apply_cancels(book: Book, items: list[Indexed]) -> None:
    """Cancel each buyer's live reservations in the campaign (of the named SKU, if any) that
    were posted before the cancel."""
    if not items:
        return
    session = book.session
    campaign_ids = sorted({c.campaign_id for _, c in items})
    buyers = sorted({c.buyer for _, c in items})
    rows = sorted(
        session.execute(
            matching(
                session,
                joined(
                    reservations.c.campaign_id.in_(campaign_ids),
                    reservations.c.state.in_(LIVE_STATES),
                ),
                reservations.c.buyer,
                buyers,
            )
        ),
        key=lambda r: (r.posted_at, r.post_id, r.part),
    )
    # Each buyer's rows apart, in post order: a batch full of cancels looks at each buyer's
    # own reservations, not at every row fetched for the batch.
    by_buyer: defaultdict[tuple[str, str], list[Row[Any]]] = defaultdict(list)
    for row in rows:
        by_buyer[row.campaign_id, row.buyer].append(row)
    done: set[int] = set()
    chosen: list[Cancellation] = []
    for i, cmd in sorted(items, key=lambda item: (item[1].posted_at, item[1].post_id)):
        sku = cmd.decision.sku
        mine = [
            row
            for row in by_buyer.get((cmd.campaign_id, cmd.buyer), ())
            if row.posted_at <= cmd.posted_at
            and (sku is None or row.sku == sku)
            and row.id not in done
        ]
        if not mine:
            book.emit(outcome_for(cmd, "rejected", reason="nothing_to_cancel", sku=sku), i)
            continue
        done.update(row.id for row in mine)
        chosen.extend((row, i, cmd.posted_at, cmd) for row in mine)
    cancel(book, chosen, cause="cancelled_by_buyer")


def _apply_deletes(book: Book, items: list[Indexed]) -> None:
    """A deleted order post cancels its reservations; an unseen post is remembered as deleted
    so that a late delivery of it is dropped."""
    session = book.session
    keys = [(c.platform, c.post_id) for _, c in items]
    known = existing_posts(session, keys, posts.c.deleted_at)
    unseen: dict[Key, Indexed] = {}
    for i, cmd in items:
        key = (cmd.platform, cmd.post_id)
        if key in known:
            continue
        if key in unseen:
            # The same unseen post deleted twice in one batch: remembered once.
            book.emit(outcome_for(cmd, "duplicate"), i)
        else:
            unseen[key] = (i, cmd)
    for i, cmd in _record(book, list(unseen.values()), deleted=True):
        book.emit(outcome_for(cmd, "ignored", reason="deleted"), i)
    targets: dict[Key, Indexed] = {}
    for i, cmd in items:
        key = (cmd.platform, cmd.post_id)
        found = known.get(key)
        if found is None:
            continue
        row = found
        if row.deleted_at is not None or key in targets:
            book.emit(outcome_for(cmd, "duplicate"), i)
        else:
            targets[key] = (i, cmd)
    if not targets:
        return
    update_rows(
        session,
        posts,
        ("platform", "post_id"),
        ("deleted_at",),
        [(k[0], k[1], c.posted_at) for k, (_, c) in targets.items()],
    )
    by_platform: dict[str, list[str]] = defaultdict(list)
    for platform, post_id in targets:
        by_platform[platform].append(post_id)
    live: dict[Key, list[Row[Any]]] = defaultdict(list)
    for platform, ids in by_platform.items():
        parts = session.execute(
            matching(
                session,
                joined(reservations.c.platform == platform, reservations.c.state.in_(LIVE_STATES)),
                reservations.c.post_id,
                ids,
            )
        )
        for row in sorted(parts, key=lambda r: r.part):
            live[(platform, row.post_id)].append(row)
    book.extend({row.campaign_id for rows in live.values() for row in rows})
    chosen: list[Cancellation] = []
    for key, (i, cmd) in sorted(targets.items(), key=lambda kv: kv[1][0]):
        rows = live.get(key)
        if not rows:
            book.emit(outcome_for(cmd, "ignored", reason="deleted"), i)
            continue
        chosen.extend((row, i, cmd.posted_at, None) for row in rows)
    # One update for every deleted post's reservations, not one per post.
    cancel(book, chosen, cause="deleted")


def _answer(book: Book, items: list[Indexed]) -> None:
    """Status, balance, top-up and help answers (after every change in the batch)."""
    if not items:
        return
    session = book.session
    wanted = {
        (book.rules[c.campaign_id].currency, c.buyer)
        for _, c in items
        if c.decision.decision in ("balance", "status")
    }
    credit = balances(session, wanted)
    status = [(i, c) for i, c in items if c.decision.decision == "status"]
    mine: dict[tuple[str, str], list[Row[Any]]] = defaultdict(list)
    if status:
        found = _live_parts(
            session,
            sorted({c.campaign_id for _, c in status}),
            sorted({c.buyer for _, c in status}),
        )
        # Ties broken by id, the order of the (campaign_id, buyer) index the query reads.
        for row in sorted(found, key=lambda r: (r.posted_at, r.part, r.id)):
            mine[(row.campaign_id, row.buyer)].append(row)
    # The one reservation each status reply is about: unpaid, then waiting, then paid.
    rank = {"awaiting_payment": 0, "waitlisted": 1, "confirmed": 2}
    tops = {key: min(rows, key=lambda r: rank[r.state]) for key, rows in mine.items()}
    # Exact places in promotion order, for the whole batch in one query.
    places = positions(session, [r.id for r in tops.values() if r.state == "waitlisted"])
    for i, cmd in items:
        d = cmd.decision
        rules = book.rules[cmd.campaign_id]
        balance = credit.get((rules.currency, cmd.buyer))
        if d.decision == "balance":
            book.emit(outcome_for(cmd, "balance", balance=balance), i)
        elif d.decision == "topup":
            book.emit(outcome_for(cmd, "topup", amount=d.amount), i)
        elif d.decision == "help":
            book.emit(outcome_for(cmd, "help"), i)
        elif d.decision == "status":
            top = tops.get((cmd.campaign_id, cmd.buyer))
            if top is None:
                book.emit(outcome_for(cmd, "status", balance=balance), i)
                continue
            book.emit(
                outcome_for(
                    cmd,
                    "status",
                    sku=top.sku,
                    quantity=top.quantity,
                    state=top.state,
                    hold_expires_at=top.hold_expires_at,
                    amount_due=top.amount if top.state == "awaiting_payment" else None,
                    queue_position=places.get(top.id),
                    balance=balance,
                ),
                i,
            )
        else:
            book.emit(outcome_for(cmd, "ignored", reason="unknown_command"), i)


# What a status reply may be about: the live reservations of some buyers in some campaigns.
# Fixed text (the keys travel as JSON arrays, see `orders.bulk.matching` for the PostgreSQL
# plan), so SQLAlchemy compiles it once; typed columns read times as `UtcDateTime`.
_PART_COLUMNS = (
    "id",
    "campaign_id",
    "buyer",
    "sku",
    "quantity",
    "state",
    "posted_at",
    "part",
    "hold_expires_at",
    "amount",
)
_LIVE = ", ".join(f"'{state}'" for state in LIVE_STATES)
_PARTS = ", ".join(_PART_COLUMNS)
_LIVE_PARTS_POSTGRES = text(
    f"SELECT {_PARTS} FROM jsonb_array_elements_text(CAST(:buyers AS JSONB)) AS k(value) "
    f"JOIN LATERAL (SELECT {_PARTS} FROM order_reservations "
    "WHERE campaign_id = ANY(CAST(:campaigns AS VARCHAR[])) "
    f"AND state IN ({_LIVE}) AND buyer = k.value OFFSET 0) AS r ON true"
).columns(*(reservations.c[name] for name in _PART_COLUMNS))
_LIVE_PARTS_SQLITE = text(
    f"SELECT {_PARTS} FROM order_reservations "
    "WHERE campaign_id IN (SELECT value FROM json_each(:campaigns)) "
    f"AND state IN ({_LIVE}) AND buyer IN (SELECT value FROM json_each(:buyers))"
).columns(*(reservations.c[name] for name in _PART_COLUMNS))


def _live_parts(session: Session, campaign_ids: list[str], buyers: list[str]) -> Sequence[Row[Any]]:
    """The live reservations of these buyers in these campaigns, in one query."""
    keys = orjson.dumps(buyers).decode()
    if is_postgres(session):
        return session.execute(
            _LIVE_PARTS_POSTGRES, {"buyers": keys, "campaigns": campaign_ids}
        ).all()
    return session.execute(
        _LIVE_PARTS_SQLITE, {"buyers": keys, "campaigns": orjson.dumps(campaign_ids).decode()}
    ).all()
