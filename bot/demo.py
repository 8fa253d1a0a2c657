"""`flashtag demo`: a whole flash sale on one machine, with no network and no credentials.

1. A local mastodon-mock server starts in a child process, seeded with the brand's bot account
   and N fan accounts (tokens included).
2. `config/brands/demo.toml` is loaded and its window shifted to now: the sale opens a few
   seconds after the bot is up and closes once the crowd is through.
3. The real bot runs against it in this process: the streaming Mastodon connector, the pipeline
   and engine, the outbox sender, the clock's jobs (announcements, reminders, hold expiry and
   waitlist promotion, progress posts) and the web app with its Stripe webhook.
4. The crowd (`bot.demo_fans`) posts over HTTP like a flash-sale crowd; fans top up by having
   the demo post correctly signed `checkout.session.completed` webhooks to the web process.
5. A live view shows posts/s, stock left per SKU, reservations per state and outbox depth; at
   the end a summary and the audit are printed, and the campaign page stays up until Ctrl-C
   (`--exit` quits at once). The exit status is 0 only when the audit is clean.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from apscheduler.jobstores.base import JobLookupError
from apscheduler.triggers.date import DateTrigger
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import config
from bot.clock import build_context, start_background
from bot.commands.orders_cmd import one_reply_per_kind
from bot.commands.run_cmd import prepare_schema
from bot.demo_fans import Crowd, DemoStripe, Fan, plan_crowd
from bot.demo_mock import MockAccount, MockMastodon, free_port
from bot.schema import all_metadata
from bot.tables import outbox_bundles, outbox_messages
from bot.worker import Worker
from config.brand import Brand
from config.database import create_engine, session_factory
from config.loader import load_brand
from config.settings import get_settings
from orders.audit import audit
from orders.campaigns import load_campaigns
from orders.tables import products, reservations, transitions

log = logging.getLogger(__name__)

DEMO_BRAND = Path(config.__file__).parent / "brands" / "demo.toml"
BOT_TOKEN = "demo-bot-token"  # noqa: S105 - a token for the local mock server only
MOCK_POSTS_PER_SECOND = 45.0  # what mastodon-mock takes on one core, for the sale window


@dataclass
class DemoOptions:
    fans: int = 2000
    seed: int = 7
    db: str | None = None
    exit_at_end: bool = False
    json_summary: bool = False
    live: bool = True
    web_port: int | None = None
    max_seconds: float = 240.0
    spread_seconds: float = 4.0  # the crowd's mean delay before a fan's first post


@dataclass
class Snapshot:
    """What the live view and the summary show, read from the database and the parts."""

    at: float
    bot_posts: int
    stock: dict[str, tuple[int, int]]  # sku -> (stock, allocated)
    states: dict[str, int]
    outbox: dict[str, int]
    lapsed: int
    promoted: int
    crowd: Counter[str] = field(default_factory=Counter)


def shifted(brand: Brand, opens_at: datetime, closes_at: datetime, base_url: str) -> Brand:
    """The demo brand with its window moved to now and its account on the local server."""
    campaign = brand.campaigns[0].model_copy(update={"opens_at": opens_at, "closes_at": closes_at})
    accounts = brand.accounts
    assert accounts.mastodon is not None
    mastodon = accounts.mastodon.model_copy(update={"base_url": base_url})
    return brand.model_copy(
        update={
            "campaigns": [campaign],
            "accounts": accounts.model_copy(update={"mastodon": mastodon}),
        }
    )


def snapshot(sessions: sessionmaker[Session], worker: Worker, crowd: Crowd | None) -> Snapshot:
    with sessions() as session:
        stock = {
            row.sku: (row.stock, row.allocated)
            for row in session.execute(
                select(products.c.sku, products.c.stock, products.c.allocated)
            )
        }
        states: dict[str, int] = dict(
            session.execute(
                select(reservations.c.state, func.count()).group_by(reservations.c.state)
            ).all()
        )
        outbox: dict[str, int] = dict(
            session.execute(
                select(outbox_messages.c.state, func.count()).group_by(outbox_messages.c.state)
            ).all()
        )
        # Replies still in bundles are queued too.
        bundled = session.scalar(
            select(func.coalesce(func.sum(outbox_bundles.c.size), 0)).where(
                outbox_bundles.c.error.is_(None)
            )
        )
        if bundled:
            outbox["queued"] = outbox.get("queued", 0) + int(bundled)
        lapsed = session.scalar(
            select(func.count()).select_from(transitions).where(transitions.c.to_state == "expired")
        )
        promoted = session.scalar(
            select(func.count())
            .select_from(transitions)
            .where(transitions.c.from_state == "waitlisted")
            .where(transitions.c.to_state.in_(("awaiting_payment", "confirmed")))
        )
    return Snapshot(
        at=time.monotonic(),
        bot_posts=worker.pipeline.stats.signals,
        stock=stock,
        states={str(k): int(v) for k, v in states.items()},
        outbox={str(k): int(v) for k, v in outbox.items()},
        lapsed=int(lapsed or 0),
        promoted=int(promoted or 0),
        crowd=Counter(crowd.stats.posted) if crowd else Counter(),
    )


def render(snap: Snapshot, rate: float, phase: str, elapsed: float, stripe: DemoStripe) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[bold]flashtag demo[/bold]  {phase}",
        f"{elapsed:5.1f} s",
        f"posts decided: [bold]{snap.bot_posts:,}[/bold]",
        f"[bold]{rate:,.0f}[/bold] posts/s",
    )
    stock = Table(title="stock", title_justify="left")
    stock.add_column("SKU")
    stock.add_column("left", justify="right")
    stock.add_column("of", justify="right")
    for sku, (units, allocated) in sorted(snap.stock.items()):
        stock.add_row(sku, f"{units - allocated:,}", f"{units:,}")
    states = Table(title="reservations", title_justify="left")
    states.add_column("state")
    states.add_column("n", justify="right")
    for state in ("confirmed", "awaiting_payment", "waitlisted", "expired", "cancelled"):
        states.add_row(state, f"{snap.states.get(state, 0):,}")
    side = Table(title="flow", title_justify="left")
    side.add_column("what")
    side.add_column("n", justify="right")
    side.add_row("fan posts", f"{sum(v for k, v in snap.crowd.items() if k != 'topup'):,}")
    side.add_row("top-up webhooks", f"{stripe.sent:,}")
    side.add_row("holds lapsed", f"{snap.lapsed:,}")
    side.add_row("waitlist promoted", f"{snap.promoted:,}")
    side.add_row(
        "outbox queued", f"{snap.outbox.get('queued', 0) + snap.outbox.get('sending', 0):,}"
    )
    side.add_row("replies sent", f"{snap.outbox.get('sent', 0):,}")
    grid = Table.grid(padding=(0, 3))
    grid.add_row(stock, states, side)
    return Group(head, grid)


class Payers:
    """Fans who pay: when a fan's reservation awaits payment, they top up after a while."""

    def __init__(self, sessions: sessionmaker[Session], crowd: Crowd, fans: list[Fan]) -> None:
        self._sessions = sessions
        self._crowd = crowd
        self._by_buyer = {fan.buyer: fan for fan in fans}
        self._seen: set[int] = set()

    def poll(self) -> int:
        with self._sessions() as session:
            rows = session.execute(
                select(reservations.c.id, reservations.c.buyer, reservations.c.amount).where(
                    reservations.c.state == "awaiting_payment"
                )
            ).all()
        scheduled = 0
        now = time.monotonic()
        for row in rows:
            if row.id in self._seen:
                continue
            self._seen.add(row.id)
            fan = self._by_buyer.get(row.buyer)
            if fan is None or not fan.pays:
                continue
            self._crowd.pay_later(fan, int(row.amount), now + fan.pay_delay)
            scheduled += 1
        return scheduled


def _fan_ids(base_url: str) -> dict[str, str]:
    response = httpx.get(f"{base_url}/api/v1/_mock/dev_users", timeout=60.0)
    response.raise_for_status()
    return {str(u["username"]): str(u["id"]) for u in response.json()}


def run_demo(options: DemoOptions) -> int:
    """Run the demo; returns the exit status (0 only when the audit is clean)."""
    console = Console(stderr=options.json_summary)
    show_live = options.live and console.is_terminal and not options.json_summary
    workdir = Path(tempfile.mkdtemp(prefix="flashtag-demo-"))
    logging.basicConfig(
        filename=str(workdir / "demo.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        force=True,
    )
    base = load_brand(DEMO_BRAND)
    campaign0 = base.campaigns[0]
    assert base.accounts.mastodon is not None
    bot_name = base.accounts.mastodon.username
    fans = plan_crowd(
        options.fans,
        seed=options.seed,
        campaign=campaign0,
        bot_username=bot_name,
        spread_seconds=options.spread_seconds,
    )
    accounts = [MockAccount(bot_name, BOT_TOKEN)] + [MockAccount(f.username, f.token) for f in fans]
    follows = [(bot_name, f.username) for f in fans if f.deletes]
    started = time.monotonic()

    console.print(
        f"[dim]starting mastodon-mock with {len(fans):,} fans (logs: {workdir / 'demo.log'})[/dim]"
    )
    timings: dict[str, float] = {}
    mock = MockMastodon(workdir, accounts, follows=follows)
    mock.start()
    try:
        ids = _fan_ids(mock.base_url)
        for fan in fans:
            fan.account_id = ids[fan.username]

        web_port = options.web_port or free_port()
        web_url = f"http://127.0.0.1:{web_port}"
        webhook_secret = "whsec_demo_" + secrets.token_hex(16)
        db_url = options.db or f"sqlite:///{workdir / 'flashtag.db'}"
        os.environ.update(
            {
                "DATABASE_URL": db_url,
                "PUBLIC_URL": web_url,
                "STRIPE_WEBHOOK_SECRET": webhook_secret,
                "FLASHTAG_LINK_SECRET": secrets.token_hex(32),
                base.accounts.mastodon.token_env: BOT_TOKEN,
            }
        )
        os.environ.pop("STRIPE_SECRET_KEY", None)
        get_settings.cache_clear()
        settings = get_settings()

        engine = create_engine(db_url)
        if options.db:  # a database of the caller's: start it clean
            for metadata in reversed(all_metadata()):
                metadata.drop_all(engine)
        prepare_schema(db_url)
        sessions = session_factory(engine)

        # The sale closes once the crowd is through, or at the latest when mastodon-mock at its
        # usual pace would have taken every post, plus a margin: on a busy machine the sale
        # ends with fans still queueing (they are told it closed) instead of running long.
        posts_planned = sum(1 for f in fans for a in f.actions if a.kind != "prepay")
        sale_seconds = posts_planned / MOCK_POSTS_PER_SECOND + 15.0
        opens_at = datetime.now(UTC) + timedelta(seconds=4)
        closes_at = opens_at + timedelta(seconds=sale_seconds)
        brand = shifted(base, opens_at, closes_at, mock.base_url)

        from bot.web import create_app

        app = create_app(settings, sessions, [brand], lambda: datetime.now(UTC))
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=web_port, log_level="error", access_log=False
            )
        )
        web_thread = threading.Thread(target=server.run, name="web", daemon=True)
        web_thread.start()

        worker = Worker(
            sessions,
            [brand],
            max_posts=500,
            max_wait_ms=50,
            sender_idle_seconds=0.2,
            public_url=web_url,
        )
        worker.start()
        ctx = build_context(
            sessions, engine, [brand], settings, expire_seconds=1.0, remind_seconds=1.0
        )
        scheduler = start_background(ctx)
        while not server.started:
            time.sleep(0.05)

        stripe_side = DemoStripe(web_url, webhook_secret, currency=campaign0.currency)
        crowd = Crowd(fans, mock.base_url, stripe_side=stripe_side, campaign_id=campaign0.id)
        timings["setup"] = time.monotonic() - started
        crowd.prepay()
        crowd.schedule(time.monotonic() + max((opens_at - datetime.now(UTC)).total_seconds(), 0.0))
        crowd_thread = threading.Thread(target=crowd.run, name="crowd", daemon=True)
        crowd_thread.start()
        payers = Payers(sessions, crowd, fans)

        rates: list[tuple[float, int]] = []
        peak_rate = 0.0
        closed_at: datetime | None = None
        hold = timedelta(minutes=campaign0.hold_minutes)

        def frame() -> tuple[Snapshot, float]:
            nonlocal peak_rate
            snap = snapshot(sessions, worker, crowd)
            rates.append((snap.at, snap.bot_posts))
            while len(rates) > 2 and rates[0][0] < snap.at - 1.0:
                rates.pop(0)
            span = rates[-1][0] - rates[0][0]
            rate = (rates[-1][1] - rates[0][1]) / span if span > 0 else 0.0
            peak_rate = max(peak_rate, rate)
            return snap, rate

        def phase() -> str:
            now = datetime.now(UTC)
            if now < opens_at:
                return "[yellow]opening soon[/yellow]"
            if closed_at is None:
                return "[green]sale open[/green]"
            return "[red]closed[/red]: holds lapse, the waitlist moves, payments land"

        def close_sale() -> datetime:
            """The crowd is through (or time is up): close the sale now, as the brand would."""
            now = datetime.now(UTC)
            if now < closes_at:
                early = shifted(base, opens_at, now, mock.base_url)
                with sessions.begin() as session:
                    load_campaigns(session, [early], now=now)
                ctx.brands = [early]
                with contextlib.suppress(JobLookupError):
                    scheduler.remove_job(f"progress:{campaign0.id}")
                scheduler.reschedule_job(
                    f"announce:{campaign0.id}:close",
                    trigger=DateTrigger(run_date=now, timezone=UTC),
                )
            crowd.stop_posting()
            return now

        live = Live(console=console, refresh_per_second=4, transient=False) if show_live else None
        last_line = 0.0
        with live if live is not None else contextlib.nullcontext():
            while True:
                payers.poll()
                snap, rate = frame()
                elapsed = time.monotonic() - started
                if live is not None:
                    live.update(render(snap, rate, phase(), elapsed, stripe_side))
                elif not options.json_summary and time.monotonic() - last_line > 5:
                    last_line = time.monotonic()
                    console.print(
                        f"{elapsed:5.1f}s decided={snap.bot_posts} states={snap.states} "
                        f"outbox={snap.outbox}"
                    )
                now = datetime.now(UTC)
                if closed_at is None and (now >= closes_at or crowd.posts_left() == 0):
                    closed_at = close_sale()
                    timings["sale"] = (closed_at - opens_at).total_seconds()
                if closed_at is not None and worker.pipeline.depth() == 0:
                    waiting = snap.states.get("awaiting_payment", 0)
                    # Long enough after the close for the last holds to lapse or be paid and the
                    # waitlist to move once more, but no longer: holds still running are reported.
                    if now >= closed_at + timedelta(seconds=2) and (
                        waiting == 0 or now >= closed_at + hold / 2
                    ):
                        break
                if worker.wait(0) or elapsed > options.max_seconds:
                    break
                time.sleep(0.25)

        crowd.stop()
        crowd_thread.join(timeout=30)
        scheduler.shutdown(wait=True)
        if ctx.leadership is not None:
            ctx.leadership.release()
        worker.stop()
        final = snapshot(sessions, worker, crowd)
        with sessions() as session:
            problems = audit(session, extra=(one_reply_per_kind,))  # what `flashtag audit` runs
        timings["total"] = time.monotonic() - started
        summary = _summary(
            final,
            timings,
            options,
            fans,
            stripe_side,
            peak_rate,
            time.monotonic() - started,
            problems,
            worker.health.errors,
            web_url,
            campaign0.id,
        )
        if options.json_summary:
            sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
        else:
            _print_summary(console, summary)
        status = 0 if not problems and not worker.health.errors else 1

        if not options.exit_at_end:
            console.print(
                f"\nThe campaign page stays up at [bold]{web_url}/c/{campaign0.id}[/bold]; "
                "press Ctrl-C to quit."
            )
            with contextlib.suppress(KeyboardInterrupt):
                while web_thread.is_alive():
                    time.sleep(0.5)
        server.should_exit = True
        web_thread.join(timeout=10)
        engine.dispose()
        return status
    finally:
        mock.stop()


def _summary(
    snap: Snapshot,
    timings: dict[str, float],
    options: DemoOptions,
    fans: list[Fan],
    stripe_side: DemoStripe,
    peak_rate: float,
    seconds: float,
    problems: list[str],
    errors: list[str],
    web_url: str,
    campaign_id: str,
) -> dict[str, Any]:
    sold = {sku: allocated for sku, (_stock, allocated) in snap.stock.items()}
    return {
        "fans": len(fans),
        "seed": options.seed,
        "seconds": round(seconds, 1),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "fan_actions": dict(snap.crowd),
        "posts_decided": snap.bot_posts,
        "peak_posts_per_s": round(peak_rate, 1),
        "reservations": snap.states,
        "units_allocated": sold,
        "stock_left": {sku: stock - alloc for sku, (stock, alloc) in snap.stock.items()},
        "holds_lapsed": snap.lapsed,
        "waitlist_promoted": snap.promoted,
        "topup_webhooks": stripe_side.sent,
        "topups_credited": stripe_side.credited,
        "outbox": snap.outbox,
        "campaign_page": f"{web_url}/c/{campaign_id}",
        "errors": errors,
        "audit": problems or "ok",
    }


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="flashtag demo: summary", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key in (
        "fans",
        "seconds",
        "timings",
        "fan_actions",
        "posts_decided",
        "peak_posts_per_s",
        "reservations",
        "units_allocated",
        "stock_left",
        "holds_lapsed",
        "waitlist_promoted",
        "topup_webhooks",
        "topups_credited",
        "outbox",
    ):
        table.add_row(key.replace("_", " "), str(summary[key]))
    console.print(table)
    if summary["audit"] == "ok":
        console.print("[bold green]audit: ok[/bold green] (every invariant holds)")
    else:
        console.print("[bold red]audit failed:[/bold red]")
        for problem in summary["audit"]:
            console.print(f"  - {problem}")
    for error in summary["errors"]:
        console.print(f"[red]error:[/red] {error}")
