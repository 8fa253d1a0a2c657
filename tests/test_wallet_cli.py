"""`flashtag wallet show`: what a brand's support desk sees for a fan's wallet."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from bot.cli import app
from wallet import ledger

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FAN = "mastodon:109348"


def test_wallet_show_prints_available_balance_and_statement(db_url: str, engine: Engine) -> None:
    with Session(engine) as s:
        ledger.credit_topup(s, buyer=FAN, amount=5000, currency="CNY", stripe_ref="cs_1", at=T0)
        ledger.hold(
            s,
            buyer=FAN,
            campaign_id="mi2",
            amount=1999,
            currency="CNY",
            ref="reservation:1",
            expires_at=T0 + timedelta(minutes=30),
            at=T0 + timedelta(minutes=1),
        )
        s.commit()
    result = CliRunner().invoke(app, ["wallet", "show", FAN, "--db", db_url])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["balance"], shown["posted"], shown["held"]) == (3001, 5000, 1999)
    assert shown["currency"] == "CNY"
    assert [(e["ref"], e["state"], e["amount"]) for e in shown["statement"]] == [
        ("cs_1", "posted", 5000),
        ("reservation:1", "pending", -1999),
    ]
    assert shown["statement"][1]["expires_at"] == "2026-11-25T12:30:00+00:00"
    assert shown["statement"][1]["counterparty"] == "sales:mi2"

    other = CliRunner().invoke(app, ["wallet", "show", FAN, "--currency", "eur", "--db", db_url])
    assert json.loads(other.output)["balance"] == 0


def test_wallet_show_for_unknown_fan_is_zero_and_bad_key_fails(db_url: str) -> None:
    result = CliRunner().invoke(app, ["wallet", "show", "x:404", "--db", db_url])
    assert result.exit_code == 0
    assert json.loads(result.output) == {
        "buyer": "x:404",
        "currency": None,
        "balance": 0,
        "posted": 0,
        "held": 0,
        "statement": [],
    }
    bad = CliRunner().invoke(app, ["wallet", "show", "no-platform", "--db", db_url])
    assert bad.exit_code == 1
    assert "platform:account_id" in bad.output


def test_wallet_show_asks_for_a_currency_when_the_fan_has_several(
    db_url: str, engine: Engine
) -> None:
    with Session(engine) as s:
        ledger.credit_topup(s, buyer=FAN, amount=1, currency="CNY", stripe_ref="a", at=T0)
        ledger.credit_topup(s, buyer=FAN, amount=2, currency="EUR", stripe_ref="b", at=T0)
        s.commit()
    result = CliRunner().invoke(app, ["wallet", "show", FAN, "--db", db_url])
    assert result.exit_code == 1
    assert "CNY, EUR" in result.output
    eur = CliRunner().invoke(app, ["wallet", "show", FAN, "--currency", "EUR", "--db", db_url])
    assert json.loads(eur.output)["balance"] == 2
