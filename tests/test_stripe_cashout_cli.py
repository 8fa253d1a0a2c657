"""`flashtag wallet refund BUYER AMOUNT`: unused credit back to the card, never twice."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from stripe_fake import Shop
from typer.testing import CliRunner

from bot.cli import app
from config.settings import get_settings

BUYER = "mastodon:109348"


@pytest.fixture
def shop(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Shop, str]]:
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_cli")
    get_settings.cache_clear()
    s = Shop(db_url, tmp_path, monkeypatch)
    yield s, db_url
    s.close()
    get_settings.cache_clear()


def _run(db_url: str, *args: str) -> tuple[int, dict[str, object] | str]:
    result = CliRunner().invoke(app, ["wallet", *args, "--db", db_url])
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        return result.exit_code, result.output


def test_refund_returns_credit_to_the_card_from_recent_top_ups(shop: tuple[Shop, str]) -> None:
    s, url = shop
    first = s.paid_checkout(BUYER, 2000)
    s.deliver(s.fake.event("checkout.session.completed", first))
    second = s.paid_checkout(BUYER, 1500)
    s.deliver(s.fake.event("checkout.session.completed", second))

    code, report = _run(url, "refund", BUYER, "2500")

    assert code == 0 and isinstance(report, dict)
    assert report["refunded"] == 2500 and report["balance"] == 1000 and report["pending"] == 0
    by_intent = {r["payment_intent"]: r["amount"] for r in s.fake.refunds.values()}
    assert by_intent == {second["payment_intent"]: 1500, first["payment_intent"]: 1000}
    code, shown = _run(url, "show", BUYER)
    assert code == 0 and isinstance(shown, dict) and shown["balance"] == 1000
    assert s.audit() == []


def test_refund_more_than_the_credit_is_refused(shop: tuple[Shop, str]) -> None:
    s, url = shop
    s.deliver(s.fake.event("checkout.session.completed", s.paid_checkout(BUYER, 2000)))
    code, output = _run(url, "refund", BUYER, "2001")
    assert code == 1 and "2000" in str(output)
    assert s.fake.refunds == {} and s.balance(BUYER) == 2000


def test_stripe_down_leaves_the_refund_pending_and_a_rerun_sends_it_once(
    shop: tuple[Shop, str],
) -> None:
    s, url = shop
    s.deliver(s.fake.event("checkout.session.completed", s.paid_checkout(BUYER, 2000)))
    s.fake.faults = ["lost", "timeout", "timeout"]  # Stripe refunds, the answer never comes

    code, report = _run(url, "refund", BUYER, "500")
    assert code == 2 and isinstance(report, dict) and report["pending"] == 500
    assert report["balance"] == 1500  # the credit is taken at once: it cannot be spent twice

    code, report = _run(url, "refund", BUYER, "0")
    assert code == 0 and isinstance(report, dict) and report["refunded"] == 500
    assert [r["amount"] for r in s.fake.refunds.values()] == [500]
    assert s.audit() == []
