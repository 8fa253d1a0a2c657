"""The worker: connectors for every account, signals committed in batches, a graceful stop."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from bot import cursors
from bot.tables import outbox_messages
from bot.worker import MissingTokenError, Worker, connectors_for
from config.brand import Brand
from config.database import session_factory
from config.loader import load_brand
from connectors.base import Connector, OutgoingMessage, Sink
from connectors.mastodon import MastodonConnector
from connectors.pacing import Clock, FakeClock, Pacer
from connectors.post import Post, Signal
from connectors.twitter import XConnector
from orders.tables import posts

ROOT = Path(__file__).resolve().parent.parent


class ScriptedConnector(Connector):
    """Streams a fixed list of posts (each with its cursor), then waits for `shutdown()`."""

    platform = "mastodon"

    def __init__(self, account_key: str, signals: list[Signal], clock: Clock) -> None:
        self.account_key = account_key
        self.pacer = Pacer(clock)
        self._signals = signals
        self._stop = threading.Event()
        self.delivered = threading.Event()
        self.sent: list[OutgoingMessage] = []
        self.initial_cursor: str | None = None

    def initialize(self) -> None:
        self._stop.clear()

    def shutdown(self) -> None:
        self._stop.set()

    def poll(self, cursor: str | None) -> tuple[list[Signal], str | None]:
        return [], cursor

    def stream(self, sink: Sink) -> None:
        start = int(self.initial_cursor or 0)
        for n, signal in enumerate(self._signals[start:], start=start + 1):
            sink(signal, str(n))
        self.delivered.set()
        self._stop.wait()

    def send(self, message: OutgoingMessage) -> str:
        self.sent.append(message)
        return f"sent-{len(self.sent)}"


def fan_post(n: int) -> Post:
    return Post(
        platform="mastodon",
        post_id=str(9000 + n),
        author_id=str(n),
        author_handle=f"fan{n}",
        created_at=datetime.now(UTC) - timedelta(seconds=1),
        text="@demophones #DemoPhone 64gb black",
        hashtags=("demophone",),
        mentions=("demophones",),
        lang="en",
    )


@pytest.fixture
def brand() -> Brand:
    return load_brand(ROOT / "config" / "brands" / "demo.toml")


def test_a_stopped_worker_has_committed_every_signal_and_saved_its_cursor(
    engine: Engine, brand: Brand
) -> None:
    sessions = session_factory(engine)
    clock = FakeClock(datetime.now(UTC))
    made: list[ScriptedConnector] = []

    def factory(b: Brand, c: Clock, initial: dict[str, str | None]) -> list[Connector]:
        connector = ScriptedConnector("demo:mastodon", [fan_post(n) for n in range(25)], c)
        connector.initial_cursor = initial.get("demo:mastodon")
        made.append(connector)
        return [connector]

    # A batch that would wait ten seconds: only the graceful stop can flush it.
    worker = Worker(
        sessions,
        [brand],
        clock=clock,
        max_posts=10,
        max_wait_ms=10_000,
        connector_factory=factory,
        send=False,
    )
    worker.start()
    assert made[0].delivered.wait(10)
    worker.stop()
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(posts)) == 25
        assert cursors.load(session, "demo:mastodon") == "25"
        assert session.scalar(select(func.count()).select_from(outbox_messages)) == 25
    assert worker.pipeline.stats.batches == 3  # 10 + 10 by size, the last 5 at the stop

    # Started again, the connector resumes after the saved cursor: nothing is decided twice.
    again = Worker(sessions, [brand], clock=clock, connector_factory=factory, send=False)
    again.start()
    assert made[1].initial_cursor == "25"
    again.stop()
    assert again.pipeline.stats.signals == 0


def test_senders_deliver_the_queued_replies_through_the_accounts_connector(
    engine: Engine, brand: Brand
) -> None:
    sessions = session_factory(engine)
    made: list[ScriptedConnector] = []

    def factory(b: Brand, c: Clock, initial: dict[str, str | None]) -> list[Connector]:
        made.append(ScriptedConnector("demo:mastodon", [fan_post(n) for n in range(3)], c))
        return list(made)

    worker = Worker(
        sessions, [brand], max_wait_ms=5, connector_factory=factory, sender_idle_seconds=0.01
    )
    worker.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while len(made[0].sent) < 3 and datetime.now(UTC) < deadline:
            threading.Event().wait(0.02)
    finally:
        worker.stop()
    assert sorted(m.in_reply_to or "" for m in made[0].sent) == ["9000", "9001", "9002"]
    assert all(m.visibility == "direct" for m in made[0].sent)  # payment links go by DM


def test_every_account_of_a_brand_gets_a_connector_without_any_io(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    xiaomi = load_brand(ROOT / "config" / "brands" / "xiaomi.toml")
    for name in ("XIAOMI_MASTODON_TOKEN", "XIAOMI_X_BEARER_TOKEN"):
        monkeypatch.setenv(name, "not-a-real-token")
    found = connectors_for(xiaomi, clock=FakeClock(), initial={"xiaomi:x": "1500"})
    assert [type(c) for c in found] == [MastodonConnector, XConnector]
    assert [c.account_key for c in found] == ["xiaomi:mastodon", "xiaomi:x"]

    monkeypatch.delenv("XIAOMI_MASTODON_TOKEN")
    with pytest.raises(MissingTokenError, match="XIAOMI_MASTODON_TOKEN"):
        connectors_for(xiaomi, clock=FakeClock(), initial={})
