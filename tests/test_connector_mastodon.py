"""The Mastodon connector against mastodon-mock: real HTTP, real SSE, the real Mastodon.py client.

Between the connector and the server sits a loopback TCP proxy the test can cut, so a
"disconnect" is a real dropped connection, not a mocked exception. The connector's clock is fake:
its reconnect backoff never sleeps; the test only waits for events to arrive.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from mastodon import Mastodon
from mastodon_mock.config import (
    DatabaseConfig,
    MastodonMockConfig,
    SeedAccount,
    SeedConfig,
    SeedFollow,
    StreamingConfig,
)
from mastodon_mock.db.models import Account
from mastodon_mock.routers.statuses import _create_status_from_params
from mastodon_mock.streaming_events import flush_stream_notifications
from mastodon_mock.testing import MockServer
from sqlalchemy import select

from connectors.base import OutgoingMessage
from connectors.mastodon import MastodonConnector
from connectors.pacing import FakeClock
from connectors.post import Deletion, Post, Signal

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real"
FANS = 500
BOT_TOKEN = "shop_token"  # a mock server's fixture token, not a credential


class CuttableProxy:
    """A loopback TCP proxy. `cut()` drops every open connection and holds new ones (as a
    network outage would) until `restore()`."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._up.wait()
            if self._closed:
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._sockets.update((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            open_sockets = list(self._sockets)
        for s in open_sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._up.set()
        self._listener.close()


class Collector:
    """The sink: remembers every signal and, like the pipeline's commit, each feed's last
    cursor (the mentions' under "", a hashtag's under "#tag")."""

    def __init__(self) -> None:
        self.signals: list[Signal] = []
        self.cursors: dict[str, str] = {}
        self._cond = threading.Condition()

    def __call__(self, signal: Signal, cursor: str | None, feed: str = "") -> None:
        with self._cond:
            self.signals.append(signal)
            if cursor is not None:
                self.cursors[feed] = cursor
            self._cond.notify_all()

    @property
    def cursor(self) -> str | None:
        """The mentions' cursor."""
        return self.cursors.get("")

    def posts(self) -> list[Post]:
        with self._cond:
            return [s for s in self.signals if isinstance(s, Post)]

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.signals) >= count, timeout=timeout)
        assert ok, f"only {len(self.signals)} of {count} signals arrived"


def _serve(fans: int) -> MockServer:
    accounts = [SeedAccount(username="shop", access_token=BOT_TOKEN)]
    accounts += [
        SeedAccount(username=f"fan{i:03d}", access_token=f"fan{i:03d}_token") for i in range(fans)
    ]
    config = MastodonMockConfig(
        database=DatabaseConfig(path=":memory:"),
        # The shop follows fan001, so that fan's edits and deletes reach its user stream.
        seed=SeedConfig(
            accounts=accounts, follows=[SeedFollow(follower="shop", following="fan001")]
        ),
        streaming=StreamingConfig(heartbeat_seconds=0.2, queue_maxsize=20_000),
    )
    return MockServer(config=config)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[MockServer]:
    """A fresh server: 500 fans for the crowd test, a handful otherwise (seeding takes time)."""
    fans = FANS if "slow" in request.keywords else 10
    with _serve(fans) as mock:
        yield mock


@pytest.fixture(autouse=True)
def _quick_thread_handoffs() -> Iterator[None]:
    """The mock server, the proxy and the connector share one interpreter here: hand the GIL
    over quickly so each event does not wait out the default 5 ms switch interval."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def proxy(server: MockServer) -> Iterator[CuttableProxy]:
    port = int(server.base_url.rsplit(":", 1)[1])
    relay = CuttableProxy(port)
    yield relay
    relay.close()


@pytest.fixture
def started() -> Iterator[list[MastodonConnector]]:
    """Connectors a test starts; shut down even when the test fails."""
    running: list[MastodonConnector] = []
    yield running
    for c in running:
        c.shutdown()


class Fans:
    """Posts mentions the way the server's own write path does (status, notification, stream
    event), skipping the HTTP round trip per fan post so 2,000 of them take seconds."""

    def __init__(self, server: MockServer) -> None:
        self._app = server._server.config.app
        self._config = self._app.state.config
        with self._app.state.session_factory() as db:
            self._ids = {a.username: a.id for a in db.scalars(select(Account))}
        self.posted = 0

    def mention(self, count: int, text: str = "@shop #DemoPhone 1 black 64GB") -> None:
        with self._app.state.session_factory() as db:
            for _ in range(count):
                fan = db.get(Account, self._ids[f"fan{self.posted % FANS:03d}"])
                assert fan is not None
                _create_status_from_params(db, fan, {"status": f"{text} #{self.posted}"})
                db.commit()
                flush_stream_notifications(self._app, db, self._config)
                self.posted += 1


def connector(
    base_url: str,
    clock: FakeClock,
    cursor: str | None = None,
    hashtag_cursor: str | None = None,
    **kw: Any,
) -> Any:
    c = MastodonConnector(
        account_key="demo:mastodon",
        base_url=base_url,
        access_token=BOT_TOKEN,
        clock=clock,
        stream_timeout=5.0,
        request_timeout=10.0,
        initial_cursor=cursor,
        initial_hashtag_cursor=hashtag_cursor,
        **kw,
    )
    c.initialize()
    return c


def run(c: MastodonConnector, sink: Collector) -> threading.Thread:
    thread = threading.Thread(target=c.stream, args=(sink,), daemon=True)
    thread.start()
    return thread


def stop(c: MastodonConnector, thread: threading.Thread) -> None:
    c.shutdown()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_constructing_a_connector_opens_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: object, **kwargs: object) -> None:
        raise AssertionError("the constructor touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_socket)
    MastodonConnector(account_key="a:mastodon", base_url="http://127.0.0.1:9", access_token="t")


@pytest.mark.slow
def test_2000_mentions_survive_a_disconnect_and_a_restart_exactly_once(
    server: MockServer, proxy: CuttableProxy, started: list[MastodonConnector]
) -> None:
    fans = Fans(server)
    fans.mention(50)  # already waiting before the bot starts: the first backfill finds them
    clock = FakeClock()
    sink = Collector()
    first = connector(proxy.url, clock)
    started.append(first)
    thread = run(first, sink)
    sink.wait_for(50)

    fans.mention(650)  # live, over the stream
    sink.wait_for(700)

    proxy.cut()  # the network drops mid-sale; fans keep posting
    fans.mention(150)
    proxy.restore()  # the connector reconnects and backfills the gap
    sink.wait_for(850)
    fans.mention(350)
    sink.wait_for(1200)
    assert first.reconnects >= 1
    assert clock.sleeps, "the reconnect backed off on the (fake) clock"

    stop(first, thread)  # a restart: only the committed cursor survives
    fans.mention(150)
    second = connector(proxy.url, FakeClock(), cursor=sink.cursor)
    started.append(second)
    thread = run(second, sink)
    sink.wait_for(1350)
    fans.mention(650)
    sink.wait_for(2000)
    stop(second, thread)

    posts = sink.posts()
    assert len(posts) == 2000 == len(sink.signals)
    assert len({p.post_id for p in posts}) == 2000
    assert len({p.author_id for p in posts}) == FANS
    assert all(isinstance(p.post_id, str) and "demophone" in (p.hashtags or ()) for p in posts)
    assert sorted(int(p.text.rsplit("#", 1)[1]) for p in posts) == list(range(2000))


def test_hashtag_stream_turns_edits_and_deletes_into_signals(
    server: MockServer, proxy: CuttableProxy, started: list[MastodonConnector]
) -> None:
    sink = Collector()
    c = connector(proxy.url, FakeClock(), hashtag="DemoPhone")
    started.append(c)
    thread = run(c, sink)
    fan = requests.Session()
    fan.headers["Authorization"] = "Bearer fan007_token"
    # The hashtag stream subscribes on its own thread; post until it hears one.
    for _ in range(50):
        status = fan.post(
            f"{server.base_url}/api/v1/statuses", data={"status": "#DemoPhone 1 white"}, timeout=5
        ).json()
        with contextlib.suppress(AssertionError):
            sink.wait_for(1, timeout=0.5)
            break
    status_id = sink.posts()[-1].post_id
    heard = len(sink.signals)
    edited = fan.put(
        f"{server.base_url}/api/v1/statuses/{status_id}",
        data={"status": "#DemoPhone 2 white"},
        timeout=5,
    )
    assert edited.status_code == 200
    fan.delete(f"{server.base_url}/api/v1/statuses/{status_id}", timeout=5)
    sink.wait_for(heard + 2)
    stop(c, thread)
    edit = next(s for s in sink.signals if isinstance(s, Post) and s.edited_at is not None)
    assert edit.post_id == status_id and "2 white" in edit.text
    deletion = sink.signals[-1]
    assert isinstance(deletion, Deletion)
    assert deletion.post_id == status_id and isinstance(deletion.post_id, str)
    assert status["id"] in {p.post_id for p in sink.posts()}


def test_replies_carry_an_idempotency_key_so_a_retry_posts_once(
    server: MockServer, proxy: CuttableProxy, started: list[MastodonConnector]
) -> None:
    c = connector(proxy.url, FakeClock())
    message = OutgoingMessage(
        text="Confirmed: 1 × Demo phone is yours.",
        visibility="unlisted",
        idempotency_key="demo:mastodon:7:confirmed",
        recipient_handle="fan001",
    )
    first = c.send(message)
    again = c.send(message)
    assert first == again
    status = requests.get(f"{server.base_url}/api/v1/statuses/{first}", timeout=5).json()
    assert status["visibility"] == "unlisted"
    assert "@fan001" in status["content"] or any(m["acct"] == "fan001" for m in status["mentions"])


def test_user_stream_edits_and_deletes_of_a_mention_become_signals(
    server: MockServer, proxy: CuttableProxy, started: list[MastodonConnector]
) -> None:
    sink = Collector()
    c = connector(proxy.url, FakeClock())
    started.append(c)
    thread = run(c, sink)
    fan = requests.Session()
    fan.headers["Authorization"] = "Bearer fan001_token"
    status = fan.post(
        f"{server.base_url}/api/v1/statuses",
        data={"status": "@shop #DemoPhone 1 black 64GB"},
        timeout=5,
    ).json()
    sink.wait_for(1)
    fan.put(
        f"{server.base_url}/api/v1/statuses/{status['id']}",
        data={"status": "@shop #DemoPhone 2 black 64GB"},
        timeout=5,
    )
    fan.delete(f"{server.base_url}/api/v1/statuses/{status['id']}", timeout=5)
    sink.wait_for(3)
    stop(c, thread)
    order, edit, deletion = sink.signals[:3]
    assert isinstance(order, Post) and order.edited_at is None
    assert isinstance(edit, Post) and edit.edited_at is not None
    assert edit.post_id == order.post_id == status["id"] and "2 black" in edit.text
    assert deletion == Deletion(
        platform="mastodon", post_id=status["id"], deleted_at=deletion.deleted_at
    )


def test_a_failing_sink_stops_the_stream_and_its_mention_is_offered_again(
    server: MockServer, proxy: CuttableProxy, started: list[MastodonConnector]
) -> None:
    Fans(server).mention(5)
    c = connector(proxy.url, FakeClock())
    started.append(c)
    seen: list[str] = []

    def broken_pipeline(signal: Signal, cursor: str | None, feed: str = "") -> None:
        if len(seen) == 2:
            raise RuntimeError("database is down")
        seen.append(signal.post_id)

    with pytest.raises(RuntimeError, match="database is down"):
        c.stream(broken_pipeline)  # not a network problem: no reconnect loop, the caller decides
    assert c.reconnects == 0
    sink = Collector()
    c.initialize()
    thread = run(c, sink)
    sink.wait_for(3)
    stop(c, thread)
    again = [p.post_id for p in sink.posts()]
    assert len(again) == 3 and not set(again) & set(seen)  # the third is offered again, once


@responses.activate
def test_poll_skips_notifications_whose_status_is_null() -> None:
    # mastodon.social: 39 of 40 mention notifications came back with "status": null.
    recorded = json.loads(
        (FIXTURES / "mastodon" / "notifications_mastodon_social_status_null.json").read_text()
    )
    base = "https://mastodon.example"
    responses.get(f"{base}/api/v1/accounts/verify_credentials", json={"id": "1", "acct": "shop"})
    responses.get(
        f"{base}/api/v1/notifications", json=recorded["body"], headers=recorded["headers"]
    )
    responses.get(f"{base}/api/v1/notifications", json=[])
    c = MastodonConnector(
        account_key="a:mastodon", base_url=base, access_token="t", clock=FakeClock()
    )
    c.initialize()
    posts, cursor = c.poll("100")
    assert len(posts) == 1
    assert cursor == max((n["id"] for n in recorded["body"]), key=lambda i: (len(i), i))
    first_request = responses.calls[1].request
    assert "min_id=100" in str(first_request.url) and "mention" in str(first_request.url)
    assert c.read_pacer.window is not None and c.read_pacer.window.limit == 300
    assert c.pacer.window is None  # reading says nothing about the posting budget


# -- the hashtag feed: posts that carry the campaign hashtag but do not mention the bot --------


def fan_client(server: MockServer, fan: str) -> Mastodon:
    return Mastodon(access_token=f"{fan}_token", api_base_url=server.base_url)


def tagged(*statuses: Any) -> list[str]:
    return [str(s["id"]) for s in statuses]


def delivered(sink: Collector) -> list[str]:
    return [p.post_id for p in sink.posts() if p.edited_at is None]


def wait_for_ids(sink: Collector, ids: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(ids) <= set(delivered(sink)):
            return
        time.sleep(0.02)
    missing = set(ids) - set(delivered(sink))
    raise AssertionError(f"{len(missing)} of {len(ids)} posts never arrived: {sorted(missing)}")


def opening_after(status: Any) -> datetime:
    """A campaign opening just after `status` was made (the server keeps milliseconds)."""
    made: datetime = status["created_at"]
    time.sleep(0.05)  # every later status is made after the opening
    return made + timedelta(milliseconds=1)


def test_hashtag_posts_made_while_down_or_cut_off_are_delivered_once_after_restart(
    server: MockServer, proxy: CuttableProxy, started: list[MastodonConnector]
) -> None:
    ann, ben = fan_client(server, "fan002"), fan_client(server, "fan003")
    before = ann.status_post("#DemoPhone 1 white, before the sale")
    opening = opening_after(before)
    # Made after the opening, before the bot's first start: found by the first backfill.
    early = tagged(ann.status_post("#DemoPhone 1 white"), ben.status_post("#DemoPhone 1 black"))
    sink = Collector()
    first = connector(proxy.url, FakeClock(), hashtag="DemoPhone", hashtag_since=opening)
    started.append(first)
    assert first.hashtag_feed == "#demophone"
    thread = run(first, sink)
    wait_for_ids(sink, early)

    # Live: a mention without the hashtag, a post on both feeds, then a hashtag-only post.
    both = tagged(ben.status_post("@shop how much is it?"), ann.status_post("@shop #DemoPhone 2"))
    live = tagged(ben.status_post("#DemoPhone 2 black"))
    wait_for_ids(sink, both + live)

    proxy.cut()  # the network drops; fans keep posting; the streams come back and backfill
    cut = tagged(*(ann.status_post(f"#DemoPhone 1 white, cut {n}") for n in range(3)))
    proxy.restore()
    wait_for_ids(sink, cut)
    assert first.reconnects >= 1
    stop(first, thread)
    saved = dict(sink.cursors)  # what the pipeline committed: one cursor per feed
    assert saved["#demophone"] == max(early + both + live + cut, key=int)
    assert saved[""] != saved["#demophone"]  # the mentions' cursor is a notification id

    # The worker is down: hashtag-only posts (and one mention) pile up, on no stream at all.
    down = tagged(ann.status_post("@shop #DemoPhone 3 white, down"))
    down += tagged(*(ben.status_post(f"#DemoPhone 1 black, down {n}") for n in range(45)))
    second = connector(
        proxy.url,
        FakeClock(),
        cursor=saved[""],
        hashtag="DemoPhone",
        hashtag_cursor=saved["#demophone"],
        hashtag_since=opening,
    )
    started.append(second)
    thread = run(second, sink)
    wait_for_ids(sink, down)  # 46 posts: more than one page of 40
    stop(second, thread)

    ids = delivered(sink)
    made = early + both + live + cut + down
    assert set(ids) == set(made)
    # Each exactly once, across the cut and the restart; except that the post on both feeds,
    # delivered before the restart by whichever feed heard it first, may be offered again by
    # the other (whose saved cursor is behind it): the engine's unique (platform, post id)
    # keeps one (tests/test_runtime_hashtag_backfill.py).
    assert all(ids.count(i) == 1 for i in made if i != both[1])
    assert 1 <= ids.count(both[1]) <= 2
    assert str(before["id"]) not in ids  # made before the sale opened: never fetched
    assert sink.cursors["#demophone"] == max(down, key=int) == second.hashtag_cursor


def test_a_hashtag_cursor_moves_only_with_the_post_the_sink_applied(
    server: MockServer, proxy: CuttableProxy, started: list[MastodonConnector]
) -> None:
    fan = fan_client(server, "fan004")
    opening = opening_after(fan.status_post("#DemoPhone before"))
    posts = tagged(*(fan.status_post(f"#DemoPhone 1 white #{n}") for n in range(3)))
    c = connector(proxy.url, FakeClock(), hashtag="DemoPhone", hashtag_since=opening)
    started.append(c)
    committed: dict[str, str] = {}

    def pipeline_whose_second_commit_fails(
        signal: Signal, cursor: str | None, feed: str = ""
    ) -> None:
        if signal.post_id == posts[1]:
            raise RuntimeError("database is down")
        if cursor is not None:
            committed[feed] = cursor

    failures: list[BaseException] = []

    def stream() -> None:
        try:
            c.stream(pipeline_whose_second_commit_fails)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and len(failures) == 1, "the failing commit did not stop it"
    assert "database is down" in str(failures[0])  # not a network problem: no reconnect
    assert committed == {"#demophone": posts[0]}

    sink = Collector()
    again = connector(
        proxy.url,
        FakeClock(),
        hashtag="DemoPhone",
        hashtag_cursor=committed["#demophone"],
        hashtag_since=opening,
    )
    started.append(again)
    thread = run(again, sink)
    wait_for_ids(sink, posts[1:])
    stop(again, thread)
    assert delivered(sink) == posts[1:]  # the unapplied post is offered again, the applied not
    assert sink.cursors == {"#demophone": posts[2]}


def test_with_no_opening_a_first_start_takes_the_hashtag_from_now_on(
    server: MockServer, proxy: CuttableProxy, started: list[MastodonConnector]
) -> None:
    fan = fan_client(server, "fan005")
    old = tagged(fan.status_post("#DemoPhone an old post"))
    time.sleep(0.05)
    c = connector(proxy.url, FakeClock(datetime.now(UTC)), hashtag="DemoPhone")
    assert c.hashtag_start() == old[0]  # right after the newest post made before now
