"""Four worker processes apply overlapping batches of the same storm to one PostgreSQL
database at once: no unit is oversold, no post is decided or reserved twice, the ledger
balances, and nobody waits while a unit is free."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from multiprocessing.connection import Connection

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from test_engine_support import OPENS, Shop, batches, make_brand, storm

from config.database import create_engine, session_factory
from orders.commands import Command
from orders.engine import apply
from orders.tables import products, reservations

WORKERS = 4


def _worker(url: str, work: list[list[Command]], out: Connection) -> None:
    """Apply each batch in its own transaction, retrying when PostgreSQL picks us as a
    deadlock or serialization victim; report (post, first outcome kind) for every post."""
    engine = create_engine(url)
    sessions = session_factory(engine)
    decided: list[tuple[str, str]] = []
    retries = 0
    for batch in work:
        while True:
            try:
                with sessions.begin() as s:
                    outcomes = apply(s, batch, now=OPENS)
                break
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) not in ("40P01", "40001"):
                    raise
                retries += 1
        # The first outcome about each post of the batch (promotions of other posts aside).
        mine = {c.post_id for c in batch}
        seen: set[str] = set()
        for o in outcomes:
            if o.post_id in mine and o.kind != "promoted" and o.post_id not in seen:
                seen.add(o.post_id)
                decided.append((o.post_id, o.kind))
    engine.dispose()
    out.send((decided, retries))
    out.close()


@pytest.mark.postgres
def test_four_workers_on_one_storm(pg_url: str) -> None:
    shop = Shop(pg_url, make_brand(stock={"PHONE-BLACK": 120, "PHONE-WHITE": 60}))
    for i in range(0, 300, 7):  # some fans have credit, so holds and payments run too
        shop.topup(f"f{i}", 250_00)
    cmds = storm(3000, fans=300)
    work = batches(cmds, 150)
    ctx = multiprocessing.get_context("fork")
    pipes = []
    procs = []
    for k in range(WORKERS):
        # Every worker applies every batch, each starting at a different point: each post
        # reaches the database four times, at the same moment from different workers.
        start = k * len(work) // WORKERS
        mine = work[start:] + work[:start]
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(pg_url, mine, send))
        proc.start()
        send.close()
        pipes.append(recv)
        procs.append(proc)
    results = [pipe.recv() for pipe in pipes]
    for proc in procs:
        proc.join(timeout=300)
        assert proc.exitcode == 0

    # Each post was decided by exactly one worker; the other three saw a duplicate.
    decided: Counter[str] = Counter()
    for worker_decisions, _ in results:
        for post_id, kind in worker_decisions:
            if kind != "duplicate":
                decided[post_id] += 1
    unique_posts = {c.post_id for c in cmds}
    assert set(decided) == unique_posts
    assert max(decided.values()) == 1

    assert shop.audit() == []
    with shop.sessions() as s:
        for row in s.execute(select(products)):
            assert row.allocated == row.stock  # sold out exactly: demand is far above stock
        parts = s.execute(
            select(reservations.c.post_id, func.count())
            .where(reservations.c.part == 0)
            .group_by(reservations.c.post_id)
            .having(func.count() > 1)
        ).all()
        assert parts == []
    shop.close()
