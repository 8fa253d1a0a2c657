"""The naive baseline and the engine agree on who gets a phone, so the ratio compares like work."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from bot.bench import run_baseline
from bot.feed import replay
from bot.storm import StormSpec, scaled_brand, storm, write_jsonl
from config.database import create_engine, session_factory
from config.loader import load_brand
from orders.tables import ALLOCATED_STATES, reservations

ROOT = Path(__file__).resolve().parent.parent


def test_baseline_and_engine_allocate_the_same_units(db_url: str, tmp_path: Path) -> None:
    brand = scaled_brand(load_brand(ROOT / "config" / "brands" / "xiaomi.toml"), 30)
    path = tmp_path / "storm.jsonl"
    posts = write_jsonl(storm(brand, StormSpec(posts=800, seed=5)), path)

    result = replay(path, brand, url=db_url, batch_size=100)
    engine = create_engine(db_url)
    try:
        with session_factory(engine)() as session:
            engine_by_post = {
                post_id: int(units)
                for post_id, units in session.execute(
                    select(reservations.c.post_id, func.sum(reservations.c.quantity))
                    .where(reservations.c.state.in_(ALLOCATED_STATES))
                    .group_by(reservations.c.post_id)
                )
            }
    finally:
        engine.dispose()
    baseline = run_baseline(db_url, path, brand, posts, posts, by_post=True)

    # The storm oversubscribes 26:1, so both sell out exactly, SKU by SKU ...
    stock = {p.sku: p.stock for p in brand.campaign().products}
    assert result.database["units_allocated"] == stock
    assert baseline.allocated == stock
    # ... and to the very same posts: first come, first served, partial fills included.
    assert baseline.by_post == engine_by_post
    assert baseline.posts == posts
