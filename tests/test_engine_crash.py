"""A worker killed with SIGKILL in the middle of a batch, then restarted from the start of
its input, ends in exactly the state of a run that was never interrupted."""

from __future__ import annotations

import multiprocessing
import os
import signal
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import select
from test_engine_support import Shop, batches, make_brand, storm

from bot.schema import all_metadata
from config.database import create_engine, session_factory
from orders.commands import Command
from orders.engine import apply, expire_holds
from orders.tables import products, reservations
from wallet import ledger

BRAND = make_brand(stock={"PHONE-BLACK": 40, "PHONE-WHITE": 25}, hold_minutes=0.05)
CMDS = storm(1200, fans=150, seed=11)
WORK = batches(CMDS, 100)
KILL_AT = 6


def run_worker(url: str, work: list[list[Command]], stall_at: int | None, tell: Any) -> None:
    """What a worker does: per batch, apply it and lapse due holds, then commit. With
    `stall_at`, it stops inside that batch's transaction (work done, not committed)."""
    engine = create_engine(url)
    sessions = session_factory(engine)
    for n, batch in enumerate(work):
        now = batch[-1].posted_at + timedelta(seconds=1)
        with sessions.begin() as s:
            apply(s, batch, now=now)
            expire_holds(s, now)
            s.flush()
            if n == stall_at:
                tell.send("mid-batch")
                tell.recv()  # never answered: the parent kills us here
    engine.dispose()


def _stalling(url: str, tell: Connection) -> None:
    run_worker(url, WORK, KILL_AT, tell)


def _fresh(url: str) -> Shop:
    engine = create_engine(url)
    for metadata in reversed(all_metadata()):
        metadata.drop_all(engine)
    for metadata in all_metadata():
        metadata.create_all(engine)
    engine.dispose()
    shop = Shop(url, BRAND)
    for i in range(0, 150, 5):
        shop.topup(f"f{i}", 300_00, ref=f"cs_f{i}")
    return shop


def state(shop: Shop) -> dict[str, Any]:
    """What a brand and its fans see, by natural keys (ids may differ between runs)."""
    with shop.sessions() as s:
        return {
            "reservations": shop.snapshot(),
            "stock": sorted(tuple(r) for r in s.execute(select(products))),
            "wallets": {f"f{i}": ledger.available(s, f"mastodon:f{i}", "EUR") for i in range(150)},
            "states": sorted((r.post_id, r.part, r.state) for r in s.execute(select(reservations))),
        }


def test_a_worker_killed_mid_batch_and_restarted_ends_like_an_uninterrupted_run(
    db_url: str, tmp_path: Path
) -> None:
    reference = _fresh(f"sqlite:///{tmp_path / 'reference.db'}")
    run_worker(f"sqlite:///{tmp_path / 'reference.db'}", WORK, None, None)
    expected = state(reference)
    reference.close()

    shop = _fresh(db_url)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    worker = ctx.Process(target=_stalling, args=(db_url, child))
    worker.start()
    assert parent.recv() == "mid-batch"
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(timeout=60)
    assert worker.exitcode == -signal.SIGKILL

    # Batches before the kill are committed; the one in flight left nothing behind.
    killed = state(shop)
    assert killed != expected
    assert {p for p, _, _ in killed["states"]} <= {c.post_id for b in WORK[:KILL_AT] for c in b}

    # The restarted worker reads its input from the start (the connectors backfill from the
    # last saved cursor, which is at or before the lost batch).
    run_worker(db_url, WORK, None, None)
    assert state(shop) == expected
    assert shop.audit() == []
    shop.close()
