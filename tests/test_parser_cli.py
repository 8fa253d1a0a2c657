"""`flashtag parse`: one JSON line out per line in, in order, whatever the lines hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from bot.cli import app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "real"
XIAOMI = str(ROOT / "config" / "brands" / "xiaomi.toml")


def run(lines: list[str], *args: str) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    stdin = "".join(line + "\n" for line in lines).encode("utf-8")
    result = CliRunner().invoke(app, ["parse", "--brand", XIAOMI, *args], input=stdin)
    out = [json.loads(line) for line in result.stdout.splitlines()]
    summary = json.loads(result.stderr.strip().splitlines()[-1]) if result.stderr.strip() else {}
    return out, summary, result.exit_code


def record(post_id: str, text: str, lang: str | None = None) -> str:
    return json.dumps(
        {
            "post_id": post_id,
            "author": "7",
            "text": text,
            "lang": lang,
            "created_at": "2012-10-30T04:00:01.000Z",
        },
        ensure_ascii=False,
    )


def test_text_lines_in_order_with_a_malformed_line_in_the_middle() -> None:
    out, summary, code = run(
        [
            record("a", "@xiaomi #MI2# 32G黑色 两台", "zh"),
            '{"post_id": "b", "text": ',
            record("c", "@xiaomi #MI2 32GB black x3"),
            record("d", "@xiaomi #MI2 topup 500"),
            "[1, 2]",
            '{"post_id": "f"}',
            "",
            record("h", "#MI2 32GB black"),
        ]
    )
    assert code == 0
    assert out == [
        {
            "post_id": "a",
            "decision": "order",
            "sku": "MI2-32GB-BLACK",
            "quantity": 2,
            "amount": None,
            "reason": None,
            "lang": "zh",
        },
        {"line": 2, "decision": "reject", "reason": "malformed_input"},
        {
            "post_id": "c",
            "decision": "reject",
            "sku": None,
            "quantity": None,
            "amount": None,
            "reason": "over_limit",
            "lang": "en",
        },
        {
            "post_id": "d",
            "decision": "topup",
            "sku": None,
            "quantity": None,
            "amount": 50000,
            "reason": None,
            "lang": "en",
        },
        {"line": 5, "decision": "reject", "reason": "malformed_input"},
        {"line": 6, "decision": "reject", "reason": "malformed_input"},
        {"line": 7, "decision": "reject", "reason": "malformed_input"},
        {
            "post_id": "h",
            "decision": "ignore",
            "sku": None,
            "quantity": None,
            "amount": None,
            "reason": "not_addressed",
            "lang": "en",
        },
    ]
    assert summary == {
        "lines": 8,
        "decisions": {"reject": 5, "order": 1, "topup": 1, "ignore": 1},
        "reasons": {"malformed_input": 4, "over_limit": 1, "not_addressed": 1},
    }


def test_invalid_utf8_is_a_malformed_line_not_a_crash() -> None:
    stdin = b'\xff\xfe{"post_id": 1}\n' + record("ok", "@xiaomi #MI2 help").encode() + b"\n"
    result = CliRunner().invoke(app, ["parse", "--brand", XIAOMI], input=stdin)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"line": 1, "decision": "reject", "reason": "malformed_input"}
    assert lines[1]["decision"] == "help"


def _bodies(name: str) -> list[Any]:
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    body = data["body"]
    return body if isinstance(body, list) else [body]


def test_mastodon_notifications_with_null_status() -> None:
    notifications = _bodies("mastodon/notifications_mastodon_social_status_null.json")
    out, summary, _ = run([json.dumps(n) for n in notifications], "--format", "mastodon")
    assert len(out) == 40
    assert summary["reasons"] == {"no_status": 39, "not_addressed": 1}
    assert out[0]["post_id"] == notifications[0]["id"]


def test_mastodon_status_addressed_by_structured_fields() -> None:
    status = _bodies("mastodon/notifications_mentions_local.json")[0]["status"]
    order = {
        **status,
        "content": '<p><span class="h-card"><a href="https://mastodon.social/@xiaomi" '
        'class="u-url mention">@<span>xiaomi</span></a></span> '
        '<a href="https://mastodon.social/tags/MI2" class="mention hashtag">#<span>MI2</span>'
        "</a> 32GB ブラック&nbsp;2台</p>",
        "tags": [{"name": "mi2"}],
        "mentions": [{"id": "1", "acct": "xiaomi", "username": "xiaomi"}],
        "language": "ja",
    }
    out, _, _ = run(
        [json.dumps(order), json.dumps({"type": "mention", "status": order})],
        "--format",
        "mastodon",
    )
    assert [(o["decision"], o["sku"], o["quantity"], o["lang"]) for o in out] == [
        ("order", "MI2-32GB-BLACK", 2, "ja")
    ] * 2


def test_twitter_page_gives_one_line_per_tweet() -> None:
    pages = [
        *_bodies("twitter/v2_users_mentions_page_tweepy.json"),
        *_bodies("twitter/v2_partial_errors_excerpt_twarc.json"),
        *_bodies("twitter/v2_tweet_reply_hashtags_html_escaped_excerpt_twarc.json"),
    ]
    out, summary, _ = run([json.dumps(p, ensure_ascii=False) for p in pages], "--format", "twitter")
    tweets = len(pages[0]["data"]) + 1 + 1
    assert len(out) == tweets
    assert out[len(pages[0]["data"])]["reason"] == "no_status"
    assert summary["lines"] == tweets


def test_twitter_single_tweet_object() -> None:
    tweet = {
        "id": "1440716673485447171",
        "author_id": "9",
        "text": "@xiaomi #MI2 32GB white &amp; fast x2",
        "entities": {
            "hashtags": [{"start": 8, "end": 12, "tag": "MI2"}],
            "mentions": [{"start": 0, "end": 7, "username": "xiaomi"}],
        },
        "lang": "en",
    }
    out, _, _ = run([json.dumps(tweet)], "--format", "twitter")
    assert out == [
        {
            "post_id": "1440716673485447171",
            "decision": "order",
            "sku": "MI2-32GB-WHITE",
            "quantity": 2,
            "amount": None,
            "reason": None,
            "lang": "en",
        }
    ]


def test_unknown_campaign_and_broken_brand_file_exit_non_zero(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["parse", "--brand", XIAOMI, "--campaign", "nope"], input=b"")
    assert result.exit_code == 2
    broken = tmp_path / "broken.toml"
    broken.write_text("[brand]\nid = 3\n")
    result = CliRunner().invoke(app, ["parse", "--brand", str(broken)], input=b"")
    assert result.exit_code == 1
    assert "broken.toml" in result.stderr
