"""`flashtag audit` and `flashtag export` as a brand runs them."""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy import select, update
from test_engine_support import Shop
from typer.testing import CliRunner

from bot.cli import app
from orders.export import FIELDS
from orders.tables import products, reservations
from wallet.stripe_tables import stripe_checkout_sessions

runner = CliRunner()


def _sale(url: str) -> Shop:
    shop = Shop(url)
    shop.topup("alice", 100_00)
    shop.apply(
        shop.post("alice"),
        shop.post("bob", quantity=2),
        shop.post("carol", quantity=2),
        shop.post("dave"),
    )
    return shop


def test_audit_passes_on_a_clean_sale_and_names_what_broke(db_url: str) -> None:
    shop = _sale(db_url)
    result = runner.invoke(app, ["audit", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "every invariant holds" in result.output

    with shop.sessions.begin() as s:  # someone "fixes" a counter by hand
        s.execute(update(products).where(products.c.sku == "PHONE-BLACK").values(allocated=2))
    result = runner.invoke(app, ["audit", "--db", db_url])
    assert result.exit_code == 1
    assert "drop/PHONE-BLACK: stock row says 2 allocated, reservations hold 3" in result.output
    shop.close()


def test_audit_catches_a_buyer_over_the_limit(db_url: str) -> None:
    shop = _sale(db_url)
    with shop.sessions.begin() as s:
        s.execute(
            update(reservations)
            .where(reservations.c.buyer == "mastodon:dave")
            .values(buyer="mastodon:bob")
        )
    result = runner.invoke(app, ["audit", "--db", db_url])
    assert result.exit_code == 1
    assert "buyer mastodon:bob holds 3 units, limit 2" in result.output
    shop.close()


def test_audit_checks_stripe_and_names_a_hand_edited_top_up_once(db_url: str) -> None:
    shop = _sale(db_url)
    t = stripe_checkout_sessions.c
    with shop.sessions.begin() as s:  # the paid session now claims more than was credited
        session_id = s.execute(select(t.session_id).where(t.state == "paid")).scalar_one()
        s.execute(update(stripe_checkout_sessions).values(amount_total=150_00))
    result = runner.invoke(app, ["audit", "--db", db_url])
    assert result.exit_code == 1
    problem = f"paid session {session_id} (15000) credited as topup of 10000"
    assert result.output.count(problem) == 1, result.output
    shop.close()


def test_export_writes_one_line_per_reservation_with_queue_positions(db_url: str) -> None:
    shop = _sale(db_url)
    result = runner.invoke(app, ["export", "--campaign", "drop", "--db", db_url])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [tuple(line) for line in lines] == [FIELDS] * len(lines)
    by_buyer = {(line["buyer"], line["state"]): line for line in lines}
    assert by_buyer[("mastodon:alice", "confirmed")]["queue_position"] is None
    assert by_buyer[("mastodon:carol", "waitlisted")]["quantity"] == 2
    assert by_buyer[("mastodon:carol", "waitlisted")]["queue_position"] == 1
    assert by_buyer[("mastodon:dave", "waitlisted")]["queue_position"] == 3
    assert by_buyer[("mastodon:bob", "awaiting_payment")]["hold_expires_at"].endswith("+00:00")

    result = runner.invoke(app, ["export", "--campaign", "drop", "--format", "csv", "--db", db_url])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(lines)
    assert rows[0]["reservation_id"] == str(lines[0]["reservation_id"])

    result = runner.invoke(app, ["export", "--campaign", "nope", "--db", db_url])
    assert result.exit_code == 1
    shop.close()
