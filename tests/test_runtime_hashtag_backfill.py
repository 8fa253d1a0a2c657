"""A campaign without `require_mention`: posts that only carry the hashtag, made while the worker
is down, are decided exactly once after it starts again, and the hashtag feed's cursor is saved
beside the mentions' cursor, each under its own key.

The worker runs in-process against mastodon-mock (HTTP + SSE, the real Mastodon.py client on
both sides) and a database: once on SQLite, once on PostgreSQL.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from mastodon import Mastodon
from mastodon_mock.config import SeedAccount, SeedConfig
from mastodon_mock.testing import MockServer
from sqlalchemy import select
from sqlalchemy.engine import Engine
from waiting import wait_for

from bot import cursors
from bot.pipeline import Pipeline, Source
from bot.worker import Worker
from config.database import session_factory
from config.loader import parse_brand
from connectors.post import Signal
from orders.tables import posts

FANS = ("ann", "ben")


def brand_text(base_url: str, opens: datetime) -> str:
    return f"""
[brand]
id = "shop"
name = "Shop"

[accounts.mastodon]
base_url = "{base_url}"
username = "shop"
token_env = "TAG_SHOP_TOKEN"
hashtag_stream = true

[[campaigns]]
id = "drop"
name = "Drop"
hashtag = "Drop"
currency = "USD"
opens_at = {opens.strftime("%Y-%m-%dT%H:%M:%SZ")}
closes_at = {(opens + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}
require_mention = false

[[campaigns.products]]
sku = "ONE"
name = "Phone"
price = 5000
stock = 100
"""


@pytest.fixture
def mock() -> Iterator[MockServer]:
    seed = SeedConfig(
        accounts=[SeedAccount(username="shop", access_token="shop-token")]
        + [SeedAccount(username=f, access_token=f"{f}-token") for f in FANS]
    )
    with MockServer(seed=seed) as server:
        yield server


def decided(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [str(row.post_id) for row in conn.execute(select(posts.c.post_id))]


def test_hashtag_only_posts_made_while_the_worker_is_down_are_decided_once(
    mock: MockServer, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAG_SHOP_TOKEN", "shop-token")
    ann, ben = (Mastodon(access_token=f"{f}-token", api_base_url=mock.base_url) for f in FANS)
    brand = parse_brand(brand_text(mock.base_url, datetime.now(UTC) - timedelta(minutes=1)))
    sessions = session_factory(engine)

    first = Worker(sessions, [brand], max_wait_ms=20, send=False)
    first.start()
    try:
        # A mention without the hashtag, one with it (on both feeds), a hashtag-only post.
        live = [
            str(ben.status_post("@shop hello")["id"]),
            str(ben.status_post("@shop #Drop 1")["id"]),
            str(ann.status_post("#Drop 1")["id"]),
        ]
        wait_for("the live posts", lambda: set(live) <= set(decided(engine)))
    finally:
        first.stop()
    with sessions() as session:
        tag_cursor = cursors.load(session, "shop:mastodon#drop")
        mention_cursor = cursors.load(session, "shop:mastodon")
    assert tag_cursor == max(live, key=int)
    assert mention_cursor is not None and mention_cursor != tag_cursor  # a notification id

    # Down: nothing listens. None of these mention the shop, so no notification remembers them.
    down = [str(fan.status_post(f"#Drop 1 ({n})")["id"]) for n in range(3) for fan in (ann, ben)]

    offered: Counter[str] = Counter()
    submit = Pipeline.submit

    def counting(self: Pipeline, signal: Signal, source: Source, cursor: str | None = None) -> None:
        offered[signal.post_id] += 1
        submit(self, signal, source, cursor)

    monkeypatch.setattr(Pipeline, "submit", counting)
    second = Worker(sessions, [brand], max_wait_ms=20, send=False)
    second.start()
    try:
        wait_for("the posts made while down", lambda: set(down) <= set(decided(engine)))
        time.sleep(0.3)  # anything offered twice would be offered by now
    finally:
        second.stop()
    assert {post_id: offered[post_id] for post_id in down} == dict.fromkeys(down, 1)  # each once
    assert sorted(decided(engine), key=int) == sorted(live + down, key=int)  # and nothing else
    with sessions() as session:
        assert cursors.load(session, "shop:mastodon#drop") == max(down, key=int)
        # Never behind: it moves on only if a mention was offered again (the one also on the
        # hashtag feed, when that feed delivered it first), which the engine dropped above.
        again = cursors.load(session, "shop:mastodon")
        assert again is not None and int(again) >= int(mention_cursor)
