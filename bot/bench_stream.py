"""The live-path benchmark: the storm as Mastodon notifications over SSE, into the worker's path.

A local HTTP server, in a process of its own (the second core), plays a Mastodon server: the
few REST endpoints a client touches while connecting (instance, verify_credentials, an empty
notifications page for the backfill) and `/api/v1/streaming/user`, which streams the storm as
`notification` events shaped exactly like the recorded ones in
fixtures/real/mastodon/stream_user_events_local.json (the recorded event is the template; only
ids, times, account, content, mentions, tags and language change). Each post's structured
fields are what Mastodon would derive: a mention only for an ASCII `@account`, tags for `#tag`
and `＃tag`, content as Mastodon's HTML.

On the client side the real `connectors.mastodon.MastodonConnector` (Mastodon.py's streaming
call and listener) hands each post to the real `bot.pipeline.Pipeline`, which batches by size
or time, parses, applies the engine, queues replies and commits. The result is posts per second
from the first event received to the commit of the last post.
"""

from __future__ import annotations

import copy
import html
import json
import multiprocessing
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from config.brand import Brand, normalize_hashtag

FIXTURE = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "fixtures"
    / "real"
    / "mastodon"
    / "stream_user_events_local.json"
)
BOT_ACCOUNT_ID = "117020617404561855"
_TAG_RE = re.compile(r"[#＃](\w+)")


def _template() -> dict[str, Any]:
    recorded = json.loads(FIXTURE.read_text(encoding="utf-8"))
    for event in recorded["events"]:
        if event["event"] == "notification":
            note: dict[str, Any] = event["data"]
            return note
    raise LookupError("no notification event in the recorded stream")


class NotificationMaker:
    """Turns storm posts into Mastodon notification payloads shaped like the recorded one."""

    def __init__(self, base_url: str, bot_username: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.bot = bot_username
        self.template = _template()
        self._bot_re = re.compile(r"(?<![\w@])@" + re.escape(bot_username) + r"\b", re.IGNORECASE)

    def bot_account(self) -> dict[str, Any]:
        full: dict[str, Any] = copy.deepcopy(self.template["account"])
        full.update(
            id=BOT_ACCOUNT_ID,
            username=self.bot,
            acct=self.bot,
            url=f"{self.base_url}/@{self.bot}",
            uri=f"{self.base_url}/ap/users/{BOT_ACCOUNT_ID}",
        )
        return full

    def _account(self, author: str, handle: str) -> dict[str, Any]:
        account = dict(self.template["account"])
        account.update(
            id=author,
            username=handle,
            acct=handle,
            url=f"{self.base_url}/@{handle}",
            uri=f"{self.base_url}/ap/users/{author}",
            roles=[],
        )
        return account

    def _content(self, text: str) -> tuple[str, bool, list[dict[str, str]]]:
        escaped = html.escape(text, quote=True).replace("&#x27;", "&#39;")
        mentioned = bool(self._bot_re.search(escaped))
        if mentioned:
            card = (
                f'<span class="h-card" translate="no"><a href="{self.base_url}/@{self.bot}" '
                f'class="u-url mention">@<span>{self.bot}</span></a></span>'
            )
            escaped = self._bot_re.sub(lambda _: card, escaped)
        tags: list[dict[str, str]] = []
        names: list[str] = []

        def tag_link(match: re.Match[str]) -> str:
            name = normalize_hashtag(match.group(1))
            if name and name not in names:
                names.append(name)
                tags.append({"name": name, "url": f"{self.base_url}/tags/{name}"})
            return (
                f'<a href="{self.base_url}/tags/{match.group(1)}" class="mention hashtag" '
                f'rel="tag">#<span>{match.group(1)}</span></a>'
            )

        escaped = _TAG_RE.sub(tag_link, escaped)
        return f"<p>{escaped}</p>", mentioned, tags

    def notification(
        self,
        notification_id: int,
        *,
        post_id: str,
        author: str,
        handle: str,
        text: str,
        lang: str,
        created_at: str,
    ) -> dict[str, Any]:
        account = self._account(author, handle)
        content, mentioned, tags = self._content(text)
        status = dict(self.template["status"])
        status.update(
            id=post_id,
            created_at=created_at,
            language=lang,
            uri=f"{self.base_url}/ap/users/{author}/statuses/{post_id}",
            url=f"{self.base_url}/@{handle}/{post_id}",
            content=content,
            account=account,
            mentions=(
                [
                    {
                        "id": BOT_ACCOUNT_ID,
                        "username": self.bot,
                        "url": f"{self.base_url}/@{self.bot}",
                        "acct": self.bot,
                    }
                ]
                if mentioned
                else []
            ),
            tags=tags,
        )
        note = dict(self.template)
        note.update(
            id=str(notification_id),
            created_at=created_at,
            group_key=f"ungrouped-{notification_id}",
            account=account,
            status=status,
        )
        return note


def _instance(base_url: str) -> dict[str, Any]:
    host = base_url.split("://", 1)[1]
    return {
        "uri": host,
        "title": "flashtag bench",
        "version": "4.6.4",
        "urls": {"streaming_api": base_url.replace("http://", "ws://")},
    }


def _instance_v2(base_url: str) -> dict[str, Any]:
    feeds = {"local": "public", "remote": "public"}
    return {
        "domain": base_url.split("://", 1)[1],
        "title": "flashtag bench",
        "version": "4.6.4",
        "configuration": {
            "urls": {"streaming": base_url.replace("http://", "ws://")},
            "timelines_access": {
                "live_feeds": feeds,
                "hashtag_feeds": feeds,
                "trending_link_feeds": feeds,
            },
        },
    }


def serve(conn: Connection, brand_json: str, posts: int, seed: int, heartbeat_s: float) -> None:
    """The server process: answers the connect-time REST calls and streams the storm once."""
    from bot.storm import StormSpec, storm

    brand = Brand.model_validate_json(brand_json)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    base_url = f"http://127.0.0.1:{port}"
    account = brand.accounts.mastodon
    maker = NotificationMaker(base_url, account.username if account else brand.brand.id)
    streamed = threading.Event()
    totals: dict[str, int] = {}

    def events() -> Iterator[bytes]:
        ids: dict[str, int] = {}
        next_id = 0
        for post in storm(brand, StormSpec(posts=posts, seed=seed)):
            record = post.record()
            notification_id = ids.pop(post.post_id, None) if post.redelivery else None
            if notification_id is None:
                next_id += 1
                notification_id = next_id
                ids[post.post_id] = notification_id
                if len(ids) > 50_000:  # redeliveries come soon after; keep the map bounded
                    ids.pop(next(iter(ids)))
            note = maker.notification(
                notification_id,
                post_id=record["post_id"],
                author=record["author"],
                handle=record["handle"],
                text=record["text"],
                lang=record["lang"],
                created_at=record["created_at"],
            )
            yield b"event: notification\ndata: " + orjson.dumps(note) + b"\n\n"
        totals["unique"] = next_id

    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 with chunked transfer, as Mastodon's streaming server answers: a client
        # reading chunk by chunk sees each event as soon as it is written.
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _json(self, body: Any, status: int = 200) -> None:
            data = orjson.dumps(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/api/v1/instance":
                self._json(_instance(base_url))
            elif path == "/api/v2/instance":
                self._json(_instance_v2(base_url))
            elif path == "/api/v1/accounts/verify_credentials":
                self._json(maker.bot_account())
            elif path == "/api/v1/notifications":
                self._json([])
            elif path == "/api/v1/streaming/user" and not streamed.is_set():
                streamed.set()
                self._stream()
            elif path == "/api/v1/streaming/user":
                self._heartbeats()
            else:
                self._json({"error": "Record not found"}, 404)

        def _start_stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _stream(self) -> None:
            self._start_stream()
            self._chunk(b":)\n")
            buffer: list[bytes] = []
            size = 0
            for event in events():
                buffer.append(event)
                size += len(event)
                if size >= 32_768:
                    self._chunk(b"".join(buffer))
                    buffer, size = [], 0
            if buffer:
                self._chunk(b"".join(buffer))
            conn.send(("streamed", totals["unique"], posts))
            self._beat()

        def _heartbeats(self) -> None:
            self._start_stream()
            self._beat()

        def _beat(self) -> None:
            try:
                while True:
                    time.sleep(heartbeat_s)
                    self._chunk(b":thump\n")
            except OSError:
                return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    conn.send(("ready", base_url))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conn.recv()  # anything means: stop
    server.shutdown()


def run_stream(
    *,
    posts: int,
    brand: Brand,
    stock: int | None = None,
    seed: int = 0,
    db: str | None = None,
    max_posts: int | None = None,
    max_wait_ms: float = 50.0,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Stream `posts` storm posts through the connector and pipeline; report posts per second.
    `max_posts` is the pipeline's batch size, the worker's default unless given."""
    from bot.bench import peak_rss_mb, percentile, reset_tables, run_audit
    from bot.feed import database_summary
    from bot.pipeline import DEFAULT_MAX_POSTS, BatchReport, Pipeline, Source
    from bot.storm import scaled_brand
    from config.database import create_engine, session_factory
    from connectors.mastodon import MastodonConnector
    from orders.campaigns import load_campaigns

    max_posts = max_posts or DEFAULT_MAX_POSTS
    stock = stock if stock is not None else max(4, posts // 26)
    now = datetime.now(UTC).replace(microsecond=0)
    opens_at = now - timedelta(minutes=10)
    bench_brand = scaled_brand(brand, stock)
    campaign = bench_brand.campaigns[0].model_copy(
        update={"opens_at": opens_at, "closes_at": now + timedelta(hours=2), "cancel_until": None}
    )
    bench_brand = bench_brand.model_copy(update={"campaigns": [campaign]})

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(
        target=serve,
        args=(child, bench_brand.model_dump_json(), posts, seed, 0.2),
        daemon=True,
    )
    server.start()
    with tempfile.TemporaryDirectory(prefix="flashtag-stream-") as tmp:
        url = db or f"sqlite:///{Path(tmp) / 'stream.db'}"
        reset_tables(url)
        engine = create_engine(url)
        connector: MastodonConnector | None = None
        try:
            kind, base_url = parent.recv()
            assert kind == "ready"
            sessions = session_factory(engine)
            with sessions() as session, session.begin():
                load_campaigns(session, [bench_brand])
            latencies: list[float] = []
            first_at: list[float] = []
            first_cpu: list[float] = []
            done_at: list[float] = []
            committed = [0]
            expected: list[int] = []
            finished = threading.Event()

            def on_commit(report: BatchReport) -> None:
                latencies.append(report.seconds)
                committed[0] += report.signals
                if expected and committed[0] >= expected[0]:
                    done_at.append(time.perf_counter())
                    finished.set()

            pipeline = Pipeline(
                sessions,
                [bench_brand],
                max_posts=max_posts,
                max_wait_ms=max_wait_ms,
                on_commit=on_commit,
            )
            source = Source(bench_brand.brand.id, "mastodon")
            sink = pipeline.sink(source)

            backlog = max_posts * 4

            def counting_sink(signal: Any, cursor: str | None = None) -> None:
                if not first_at:
                    first_at.append(time.perf_counter())
                    first_cpu.append(time.process_time())
                # Flow control: the pipeline's queue is unbounded, so a connector that reads
                # faster than the engine commits would hold the whole storm in memory. Waiting
                # here stops reading the socket, and TCP slows the server down.
                while pipeline.depth() > backlog:
                    time.sleep(0.002)
                sink(signal, cursor)

            connector = MastodonConnector(
                account_key=f"{bench_brand.brand.id}:mastodon",
                base_url=base_url,
                access_token="bench-token",  # noqa: S106 - the local bench server takes any token
                stream_timeout=30.0,
            )
            connector.initialize()
            worker = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
            worker.start()
            streamer = threading.Thread(
                target=connector.stream, args=(counting_sink,), name="stream", daemon=True
            )
            streamer.start()
            _, unique, lines = parent.recv()  # the server wrote the whole storm
            expected.append(unique)
            if committed[0] >= unique:
                finished.set()
                done_at.append(time.perf_counter())
            finished.wait(timeout_s)
            connector.shutdown()
            pipeline.stop()
            worker.join(timeout=30)
            elapsed = (done_at[0] if done_at else time.perf_counter()) - first_at[0]
            cpu = time.process_time() - first_cpu[0]
            with sessions() as session:
                database = database_summary(session, [campaign.id])
            problems = run_audit(url)
        finally:
            parent.send("stop")
            server.join(timeout=10)
            if connector is not None:
                connector.shutdown()
            engine.dispose()
    return {
        "database": "postgresql" if db and db.startswith("postgres") else "sqlite",
        "lines": lines,
        "notifications": unique,
        "committed": committed[0],
        "complete": committed[0] >= unique,
        "stock": stock,
        "elapsed": round(elapsed, 3),
        "posts_per_s": round(committed[0] / elapsed, 1) if elapsed > 0 else 0.0,
        # CPU seconds of the client process (connector, pipeline, engine, outbox, SQLite), which
        # on a shared machine says more than the wall clock; the server process is not counted.
        "cpu_s": round(cpu, 3),
        "posts_per_cpu_s": round(committed[0] / cpu, 1) if cpu > 0 else None,
        "batches": len(latencies),
        "batch_p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "batch_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "units_allocated": database["units_allocated"],
        "decisions": database["decisions"],
        "audit": "ok" if not problems else problems[:20],
    }
