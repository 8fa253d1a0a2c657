"""`flashtag wallet ...`: look into buyers' credit wallets."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import typer

from config.database import create_engine, session_factory
from config.settings import get_settings
from wallet import ledger
from wallet.errors import LedgerError

wallet_app = typer.Typer(help="Buyers' credit wallets.", no_args_is_help=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {value!r}")


def wallet_report(session: Any, buyer: str, currency: str | None) -> dict[str, Any]:
    """The JSON `wallet show` prints: balances in minor units and the statement lines."""
    if currency is None:
        held_in = ledger.currencies(session, buyer)
        if len(held_in) > 1:
            raise LedgerError(f"{buyer} has wallets in {', '.join(held_in)}: pick --currency")
        currency = held_in[0] if held_in else None
    if currency is None:
        return {
            "buyer": buyer,
            "currency": None,
            "balance": 0,
            "posted": 0,
            "held": 0,
            "statement": [],
        }
    totals = ledger.balance(session, buyer, currency)
    return {
        "buyer": buyer,
        "currency": currency,
        "balance": totals.available,
        "posted": totals.posted,
        "held": totals.held,
        "statement": [asdict(e) for e in ledger.statement(session, buyer, currency)],
    }


@wallet_app.command("show")
def wallet_show(
    buyer: str = typer.Argument(..., help="Buyer key, platform:account_id (mastodon:109348)"),
    currency: str | None = typer.Option(
        None, "--currency", help="ISO currency (default: the buyer's only wallet)"
    ),
    db: str | None = typer.Option(None, "--db", help="Database URL (default: DATABASE_URL)"),
) -> None:
    """Print a buyer's available balance (key `balance`, minor units) and statement as JSON."""
    engine = create_engine(db or get_settings().database_url)
    try:
        with session_factory(engine)() as session:
            report = wallet_report(session, buyer, currency.upper() if currency else None)
    except LedgerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(json.dumps(report, indent=2, default=_json_default, ensure_ascii=False))


@wallet_app.command("refund")
def wallet_refund(
    buyer: str = typer.Argument(..., help="Buyer key, platform:account_id"),
    amount: int = typer.Argument(
        ..., min=0, help="Minor units to refund to the card (0: only resend pending refunds)"
    ),
    currency: str | None = typer.Option(
        None, "--currency", help="ISO currency (default: the buyer's only wallet)"
    ),
    db: str | None = typer.Option(None, "--db", help="Database URL (default: DATABASE_URL)"),
) -> None:
    """Refund unused credit through Stripe, from the buyer's most recent top-ups (never more than
    they paid in). Prints the refunds as JSON. If Stripe cannot be reached the credit stays
    taken and the refunds pending: run again (AMOUNT 0 sends only what is pending)."""
    from bot.jobs_payments import cash_out
    from wallet.stripe_payments import PaymentError, make_client

    settings = get_settings()
    if settings.stripe_secret_key is None:
        typer.echo("error: STRIPE_SECRET_KEY is not set", err=True)
        raise typer.Exit(1)
    engine = create_engine(db or settings.database_url)
    try:
        report = cash_out(
            session_factory(engine),
            make_client(settings.stripe_secret_key.get_secret_value()),
            buyer=buyer,
            amount=amount,
            currency=currency.upper() if currency else None,
            now=datetime.now(UTC),
        )
    except (LedgerError, PaymentError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
    if report["pending"]:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.add_typer(wallet_app, name="wallet")
