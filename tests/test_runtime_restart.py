"""A worker killed with SIGKILL in the middle of a storm, then started again, loses nothing and
doubles nothing: every post ends up decided exactly once.

The worker runs as a real `flashtag worker` process against mastodon-mock (HTTP + SSE) and a
database; fans keep posting while it is dead, and the restarted worker backfills from its cursor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mastodon import Mastodon
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from waiting import wait_for

from bot import cursors
from bot.commands.orders_cmd import one_reply_per_kind
from bot.demo_mock import MockAccount, MockMastodon
from bot.tables import outbox_messages
from config.database import create_engine, session_factory
from orders.audit import audit
from orders.tables import posts, reservations

FANS = 20
POSTS_EACH = 4
FLASHTAG = str(Path(sys.executable).parent / "flashtag")


def brand_file(tmp_path: Path, base_url: str) -> Path:
    opens = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    closes = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = tmp_path / "storm.toml"
    path.write_text(
        f"""
[brand]
id = "storm"
name = "Storm"

[accounts.mastodon]
base_url = "{base_url}"
username = "shop"
token_env = "RESTART_SHOP_TOKEN"

[[campaigns]]
id = "storm"
name = "Storm"
hashtag = "Storm"
currency = "USD"
opens_at = {opens}
closes_at = {closes}
per_buyer_limit = 2

[[campaigns.products]]
sku = "A"
name = "Phone"
price = 1000
stock = 25
"""
    )
    return path


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[MockMastodon]:
    """mastodon-mock in a process of its own, so it and the test each get a core."""
    accounts = [MockAccount("shop", "shop-token")] + [
        MockAccount(f"fan{i}", f"fan{i}-token") for i in range(FANS)
    ]
    server = MockMastodon(tmp_path, accounts)
    server.start()
    yield server
    server.stop()


def start_worker(brand: Path, db_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RESTART_SHOP_TOKEN="shop-token", FLASHTAG_BRANDS=str(brand))
    with log.open("ab") as out:
        return subprocess.Popen(
            [FLASHTAG, "worker", "--db", db_url, "--wait-ms", "20", "--batch", "50"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def decided(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(posts)).scalar_one())


def test_a_killed_worker_restarts_and_every_post_is_decided_exactly_once(
    mock: MockMastodon, db_url: str, tmp_path: Path
) -> None:
    brand = brand_file(tmp_path, mock.base_url)
    log = tmp_path / "worker.log"
    engine = create_engine(db_url)
    posted: list[str] = []
    lock = threading.Lock()

    clients = [
        Mastodon(access_token=f"fan{i}-token", api_base_url=mock.base_url) for i in range(FANS)
    ]

    def fans(first_fan: int) -> None:  # a few clients, as the mock serves one write at a time
        for n in range(POSTS_EACH):
            for i in range(first_fan, FANS, 5):
                text = "@shop #Storm" if n % 2 == 0 else f"@shop #Storm status {n}"
                status = clients[i].status_post(text)
                with lock:
                    posted.append(str(status["id"]))

    first = start_worker(brand, db_url, log)
    try:
        wait_for("the first worker to connect", lambda: "worker started" in log.read_text())
        storm = [threading.Thread(target=fans, args=(i,)) for i in range(5)]
        for thread in storm:
            thread.start()
        wait_for("the first batches", lambda: decided(engine) >= 10)
        first.send_signal(signal.SIGKILL)  # mid-storm: no goodbye, no final batch
        first.wait(10)
        killed_at = decided(engine)
        for thread in storm:
            thread.join()
        assert killed_at < FANS * POSTS_EACH, "the storm ended before the kill; nothing tested"

        second = start_worker(brand, db_url, log)
        try:
            wait_for("every post decided", lambda: decided(engine) >= len(posted))
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()

    sessions = session_factory(engine)
    with sessions() as session:
        rows = session.execute(select(posts.c.post_id, posts.c.attempts)).all()
        assert sorted(r.post_id for r in rows) == sorted(posted)  # each once, none missing
        assert all(r.attempts == 1 for r in rows)
        per_post = session.execute(
            select(reservations.c.post_id, func.count()).group_by(reservations.c.post_id)
        ).all()
        assert all(n == 1 for _, n in per_post)
        replies = session.execute(
            select(outbox_messages.c.idempotency_key, func.count()).group_by(
                outbox_messages.c.idempotency_key
            )
        ).all()
        assert all(n == 1 for _, n in replies)
        assert cursors.load(session, "storm:mastodon") is not None
        assert audit(session, extra=(one_reply_per_kind,)) == []
    engine.dispose()
