"""The demo's crowd behaves like a flash-sale crowd, says what it means, and pays like Stripe."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from bot.demo import DemoOptions, run_demo
from bot.demo_fans import DemoStripe, Fan, plan_crowd
from config.loader import load_brand
from connectors.post import Post
from orders.parser import compile_grammar, parse
from wallet.stripe_payments import paid_session, verify_event

ROOT = Path(__file__).resolve().parent.parent
BRAND = load_brand(ROOT / "config" / "brands" / "demo.toml")
CAMPAIGN = BRAND.campaigns[0]


def crowd(n: int = 2000, seed: int = 7) -> list[Fan]:
    return plan_crowd(n, seed=seed, campaign=CAMPAIGN, bot_username="demophones")


def test_the_crowd_is_reproducible_and_shaped_like_a_flash_sale() -> None:
    fans = crowd()
    assert [f.actions for f in fans] == [f.actions for f in crowd()]
    firsts = [f.actions[0].at for f in fans if f.actions[0].kind != "prepay"]
    assert statistics.median(firsts) < 4.0  # most order in the first seconds
    langs = Counter(f.lang for f in fans)
    assert langs["ja"] > 150 and langs["zh"] > 150
    kinds = Counter(a.kind for f in fans for a in f.actions)
    assert kinds["again"] > 80  # some post twice
    assert kinds["malformed"] > 60
    assert kinds["prepay"] > 200  # some top up before the sale
    assert kinds["cancel"] > 20 and kinds["delete"] > 20
    assert 300 < sum(not f.pays for f in fans) < 800  # some never pay: their holds lapse


def test_what_the_fans_post_means_what_they_mean() -> None:
    grammar = compile_grammar(BRAND, CAMPAIGN)
    decided: Counter[tuple[str, str]] = Counter()
    for fan in crowd(600):
        for action in fan.actions:
            if not action.text:
                continue
            post = Post(
                platform="mastodon",
                post_id="1",
                author_id="2",
                author_handle=fan.username,
                created_at=datetime(2026, 6, 1, tzinfo=UTC),
                text=action.text,
                lang=fan.lang,
            )
            decision = parse(post, grammar)
            decided[(action.kind, decision.decision)] += 1
    for (kind, decision), _n in decided.items():
        if kind in ("order", "again"):
            assert decision == "order", decided
        elif kind == "cancel":
            assert decision == "cancel", decided
        else:
            assert decision in ("reject", "ignore"), decided


def test_top_ups_are_signed_the_way_the_webhook_verifies_them() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"received": True, "outcome": "credited"})

    stripe_side = DemoStripe("http://web.test", "whsec_test", currency="USD")
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        assert stripe_side.pay(client, buyer="mastodon:7", campaign_id="demo", amount=59800)
    [request] = seen
    event = verify_event(request.content, request.headers["stripe-signature"], "whsec_test")
    paid = paid_session(event["data"]["object"])
    assert paid is not None and (paid.buyer, paid.amount, paid.currency) == (
        "mastodon:7",
        59800,
        "USD",
    )
    assert stripe_side.credited == 1


@pytest.mark.slow
def test_a_small_demo_runs_the_real_bot_and_ends_with_a_clean_audit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = run_demo(DemoOptions(fans=60, seed=3, exit_at_end=True, json_summary=True, live=False))
    summary = json.loads(capsys.readouterr().out)
    assert status == 0 and summary["audit"] == "ok" and summary["errors"] == []
    assert summary["posts_decided"] >= 60
    assert summary["topups_credited"] > 0
    assert summary["reservations"].get("confirmed", 0) > 0
    assert summary["outbox"].get("sent", 0) > 0
