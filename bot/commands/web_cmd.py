"""`flashtag web`: the web process (top-up links, Stripe webhook, status pages)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import typer

from config.settings import get_settings


def web(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8000, help="Port to listen on"),
    brand: list[Path] | None = typer.Option(  # noqa: B008
        None, "--brand", help="Brand file(s); default FLASHTAG_BRANDS"
    ),
    db: str | None = typer.Option(None, "--db", help="Database URL (default: DATABASE_URL)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve top-up links, the Stripe webhook and the status pages (Procfile: web)."""
    import uvicorn

    from bot.web import create_app
    from config.database import create_engine, session_factory
    from config.loader import BrandFileError, load_brands

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = get_settings()
    try:
        brands = load_brands(list(brand or settings.brand_paths()))
    except BrandFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not brands:
        typer.echo("error: no brand files (set FLASHTAG_BRANDS or pass --brand)", err=True)
        raise typer.Exit(1)
    if settings.stripe_secret_key is None:
        logging.getLogger(__name__).warning("STRIPE_SECRET_KEY is not set: top-ups answer 503")
    engine = create_engine(db or settings.database_url)
    app = create_app(settings, session_factory(engine), brands, lambda: datetime.now(UTC))
    try:
        # No access log, even with --verbose: it prints every request path, and `/me/<token>`
        # and `/topup/<token>` paths are the buyers' bearer links (tokens are never logged).
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info" if verbose else "warning",
            access_log=False,
        )
    finally:
        engine.dispose()


def register(app: typer.Typer) -> None:
    app.command("web")(web)
