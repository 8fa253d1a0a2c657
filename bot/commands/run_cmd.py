"""`flashtag worker`, `flashtag clock`, `flashtag run` and `flashtag demo`: the running bot."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import typer

from bot.pipeline import DEFAULT_MAX_POSTS
from bot.worker import Worker
from config.brand import Brand
from config.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _brands(settings: Settings, files: list[Path] | None) -> list[Brand]:
    from config.loader import load_brands

    paths = files or settings.brand_paths()
    brands = load_brands(list(paths))
    if not brands:
        raise typer.BadParameter("no brand files (set FLASHTAG_BRANDS or pass --brand)")
    return brands


def prepare_schema(url: str) -> None:
    """Bring a one-machine database up to date (see `bot.schema.prepare`)."""
    from bot.schema import prepare

    prepare(url)


def _start(the_worker: Worker) -> None:
    """Start a worker; a missing or refused token is a one-line error, not a traceback."""
    from bot.worker import MissingTokenError
    from connectors.base import ConnectorError

    try:
        the_worker.start()
    except (MissingTokenError, ConnectorError) as exc:
        the_worker.stop()
        typer.echo(f"flashtag: cannot start the worker: {exc}", err=True)
        raise typer.Exit(1) from exc


BrandOption = typer.Option(None, "--brand", help="Brand file(s); default FLASHTAG_BRANDS")
DbOption = typer.Option(None, "--db", help="Database URL (default: DATABASE_URL)")


def worker(
    brand: list[Path] | None = BrandOption,
    db: str | None = DbOption,
    batch: int = typer.Option(DEFAULT_MAX_POSTS, min=1, help="Flush a batch at this many posts"),
    wait_ms: float = typer.Option(50.0, help="... or this long after its first post"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Stream every brand account into the engine and send the replies (Procfile: worker)."""
    from bot.worker import install_stop_signals
    from config.database import WalCheckpointer, create_engine, session_factory

    _logging(verbose)
    settings = get_settings()
    url = db or settings.database_url
    engine = create_engine(url)
    the_worker = Worker(
        session_factory(engine), _brands(settings, brand), max_posts=batch, max_wait_ms=wait_ms
    )
    install_stop_signals(the_worker.request_stop)
    with WalCheckpointer(url):  # SQLite: checkpoints beside the batches' commits
        _start(the_worker)
        the_worker.wait()
        the_worker.stop()
    engine.dispose()
    if the_worker.health.errors:
        raise typer.Exit(1)


def clock(
    brand: list[Path] | None = BrandOption,
    db: str | None = DbOption,
    expire_seconds: float = typer.Option(5.0, help="Expire holds and promote every N seconds"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the scheduled jobs; only one clock acts at a time (Procfile: clock)."""
    from bot.clock import build_context, run_blocking
    from config.database import create_engine, session_factory

    _logging(verbose)
    settings = get_settings()
    engine = create_engine(db or settings.database_url)
    ctx = build_context(
        session_factory(engine),
        engine,
        _brands(settings, brand),
        settings,
        expire_seconds=expire_seconds,
    )
    run_blocking(ctx)
    engine.dispose()


def run(
    brand: list[Path] | None = BrandOption,
    db: str | None = DbOption,
    host: str = typer.Option("127.0.0.1", help="Web host"),
    port: int = typer.Option(8000, help="Web port"),
    create: bool = typer.Option(True, help="Create missing tables first"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Web, worker and clock in one process (SQLite by default): one machine, one command."""
    import uvicorn

    from bot.clock import build_context, start_background
    from bot.web import create_app
    from bot.worker import install_stop_signals
    from config.database import WalCheckpointer, create_engine, session_factory

    _logging(verbose)
    settings = get_settings()
    brands = _brands(settings, brand)
    url = db or settings.database_url
    engine = create_engine(url)
    checkpointer = WalCheckpointer(url)
    if create:
        prepare_schema(url)
    sessions = session_factory(engine)
    the_worker = Worker(sessions, brands)
    _start(the_worker)
    ctx = build_context(sessions, engine, brands, settings)
    scheduler = start_background(ctx)
    app = create_app(settings, sessions, brands, lambda: datetime.now(UTC))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    # The web server runs in a thread (so it installs no signal handlers of its own); the main
    # thread waits for SIGTERM/SIGINT or a failed part, then stops everything gracefully.
    web = threading.Thread(target=server.run, name="web", daemon=True)
    web.start()
    install_stop_signals(the_worker.request_stop)
    try:
        checkpointer.start()  # SQLite: checkpoints beside the batches' commits
        while not the_worker.wait(0.5):
            if not web.is_alive():  # the port was taken, or the server failed
                the_worker.health.errors.append("the web server stopped")
                break
    finally:
        server.should_exit = True
        web.join(timeout=10)
        scheduler.shutdown(wait=True)
        if ctx.leadership is not None:
            ctx.leadership.release()
        the_worker.stop()
        checkpointer.stop()
        engine.dispose()
    if the_worker.health.errors:
        raise typer.Exit(1)


def demo(
    fans: int = typer.Option(2000, help="How many fan accounts take part"),
    seed: int = typer.Option(7, help="The crowd's random seed"),
    db: str | None = typer.Option(None, "--db", help="Database URL (default: a fresh SQLite file)"),
    exit_at_end: bool = typer.Option(False, "--exit", help="Quit at the end (for scripts)"),
    json_summary: bool = typer.Option(False, "--json", help="Print the summary as one JSON object"),
    live: bool = typer.Option(True, help="Show the live view (on a terminal)"),
) -> None:
    """A whole flash sale on a local Mastodon: fans, the real bot, top-ups, lapses, the audit."""
    from bot.demo import DemoOptions, run_demo

    status = run_demo(
        DemoOptions(
            fans=fans,
            seed=seed,
            db=db,
            exit_at_end=exit_at_end,
            json_summary=json_summary,
            live=live,
        )
    )
    raise typer.Exit(status)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("clock")(clock)
    app.command("run")(run)
    app.command("demo")(demo)
