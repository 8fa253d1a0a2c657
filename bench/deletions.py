"""A batch full of deletions: how long it holds its campaign's lock.

    .venv/bin/python bench/deletions.py [--db URL] [--posts 4000]

`--posts` fans each reserve a phone of the demo brand (its stock raised so that every order
is allocated), one batch through the pipeline; then every one of those posts is deleted, the
next batch. Both go through `bot.pipeline.Pipeline` in batches of `--posts` (the worker's
4,000 by default), as a worker catching up after a gap would commit them. Prints one JSON
object: each batch's signals, milliseconds and outcomes by kind. The deletions' batch is the
one to read: it cancels every reservation, releases the units and writes the transitions
under the campaign's lock.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot.bench import drop_tables, reset_tables
from bot.pipeline import BatchReport, Pipeline, Source
from bot.storm import scaled_brand
from config.database import create_engine, session_factory
from config.loader import load_brand
from connectors.pacing import FakeClock
from connectors.post import Deletion, Post
from orders.campaigns import load_campaigns

ROOT = Path(__file__).resolve().parent.parent


def run(url: str, fans: int) -> dict[str, Any]:
    """Reserve for `fans` fans in one batch, delete every post in the next; time both."""
    brand = scaled_brand(load_brand(ROOT / "config" / "brands" / "demo.toml"), fans * 2)
    campaign = brand.campaigns[0]
    account = brand.accounts.mastodon
    assert account is not None
    opened = campaign.opens_at + timedelta(minutes=1)
    reset_tables(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    try:
        with sessions.begin() as session:
            load_campaigns(session, [brand], now=opened)
        reports: list[BatchReport] = []
        clock = FakeClock(opened)
        pipeline = Pipeline(
            sessions, [brand], clock=clock, max_posts=fans, on_commit=reports.append
        )
        source = Source(brand.brand.id, "mastodon")
        for n in range(fans):
            pipeline.submit(
                Post(
                    platform="mastodon",
                    post_id=str(10**6 + n),
                    author_id=str(5 * 10**6 + n),
                    author_handle=f"fan{n}",
                    created_at=opened,
                    text=f"@{account.username} #{campaign.hashtag} 64gb black",
                    hashtags=(campaign.hashtag.lower(),),
                    mentions=(account.username,),
                    lang="en",
                ),
                source,
            )
        pipeline.pump(timeout=0)
        clock.advance(60)
        for n in range(fans):
            pipeline.submit(
                Deletion(platform="mastodon", post_id=str(10**6 + n), deleted_at=clock.now()),
                source,
            )
        pipeline.pump(timeout=0)
    finally:
        engine.dispose()
        drop_tables(url)
    return {
        "database": "postgresql" if url.startswith("postgres") else "sqlite",
        "batches": [
            {
                "signals": report.signals,
                "ms": round(report.seconds * 1000, 1),
                "outcomes": dict(Counter(o.kind for o in report.outcomes)),
            }
            for report in reports
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--posts", type=int, default=4000, help="fans, posts and deletions")
    args = parser.parse_args()
    if args.posts < 1:
        raise SystemExit("--posts takes a positive number")
    with tempfile.TemporaryDirectory() as scratch:
        url = args.db or f"sqlite:///{Path(scratch) / 'deletions.db'}"
        sys.stdout.write(json.dumps(run(url, args.posts), indent=2) + "\n")


if __name__ == "__main__":
    main()
