"""`flashtag replay` rehearses a recorded storm on any day, and `flashtag audit` passes after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.bench_stream import NotificationMaker
from bot.cli import app
from bot.storm import StormSpec, storm, write_jsonl
from config.loader import load_brand

ROOT = Path(__file__).resolve().parent.parent
STOCK_PER_SKU = 25


@pytest.fixture
def small_xiaomi(tmp_path: Path) -> Path:
    """The xiaomi brand file with 25 phones per SKU, so a small storm sells out."""
    source = (ROOT / "config" / "brands" / "xiaomi.toml").read_text(encoding="utf-8")
    path = tmp_path / "xiaomi.toml"
    path.write_text(source.replace("stock = 12500", f"stock = {STOCK_PER_SKU}"), encoding="utf-8")
    return path


@pytest.fixture
def recorded_storm(tmp_path: Path, small_xiaomi: Path) -> Path:
    """A storm recorded on another day: the same sale, opened on 2026-11-11 instead of 2012."""
    brand = load_brand(small_xiaomi)
    campaign = brand.campaign()
    other_day = campaign.opens_at.replace(year=2026, month=11, day=11)
    moved = campaign.model_copy(update={"opens_at": other_day})
    recorded = brand.model_copy(update={"campaigns": [moved]})
    path = tmp_path / "storm.jsonl"
    write_jsonl(storm(recorded, StormSpec(posts=3_000, seed=3)), path)
    return path


def _replay(storm_file: Path, brand_file: Path, db_url: str, *extra: str) -> dict[str, object]:
    # Batches of 1,000: three of them, so redeliveries meet their first copy in the database too.
    args = [
        "replay",
        str(storm_file),
        "--brand",
        str(brand_file),
        "--db",
        db_url,
        "--batch",
        "1000",
    ]
    result = CliRunner().invoke(app, [*args, "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def test_shift_to_open_rehearses_the_storm_and_the_audit_is_clean(
    db_url: str, recorded_storm: Path, small_xiaomi: Path
) -> None:
    summary = _replay(recorded_storm, small_xiaomi, db_url, "--shift-to-open")

    assert summary["posts"] == 3_000
    assert summary["units_allocated"] == {
        sku: STOCK_PER_SKU
        for sku in ("MI2-16GB-BLACK", "MI2-16GB-WHITE", "MI2-32GB-BLACK", "MI2-32GB-WHITE")
    }
    outcomes = summary["outcomes"]
    assert isinstance(outcomes, dict)
    assert outcomes["payment_needed"] > 0 and outcomes["waitlisted"] > 0
    assert summary["duplicates"] == outcomes["duplicate"] > 100
    audited = CliRunner().invoke(app, ["audit", "--db", db_url])
    assert audited.exit_code == 0, audited.output


def test_without_the_shift_a_storm_from_another_day_reserves_nothing(
    db_url: str, recorded_storm: Path, small_xiaomi: Path
) -> None:
    # Windows are judged on post times: the 2026 posts fall after the 2012 sale closed.
    summary = _replay(recorded_storm, small_xiaomi, db_url)

    assert summary["units_allocated"] == dict.fromkeys(
        ("MI2-16GB-BLACK", "MI2-16GB-WHITE", "MI2-32GB-BLACK", "MI2-32GB-WHITE"), 0
    )
    assert "payment_needed" not in summary["outcomes"]  # type: ignore[operator]


def test_dry_run_parses_without_a_database(recorded_storm: Path, small_xiaomi: Path) -> None:
    result = CliRunner().invoke(
        app, ["replay", str(recorded_storm), "--brand", str(small_xiaomi), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["posts"] == 3_000
    decisions = summary["decisions"]
    assert decisions["order"] > 2_000
    assert sum(decisions.values()) + summary["duplicates"] == 3_000


def test_replay_reads_mastodon_notifications(
    db_url: str, tmp_path: Path, small_xiaomi: Path
) -> None:
    """Notifications as the stream delivers them (and one whose status was deleted since)."""
    brand = load_brand(small_xiaomi)
    maker = NotificationMaker("http://localhost:3000", "xiaomi")
    lines = []
    for n, post in enumerate(storm(brand, StormSpec(posts=400, seed=9)), start=1):
        note = maker.notification(n, **post.record())
        lines.append(json.dumps(note, ensure_ascii=False))
    lines.append(json.dumps({**note, "id": "9999", "status": None}))
    path = tmp_path / "notifications.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    summary = _replay(path, small_xiaomi, db_url, "--format", "mastodon")

    assert summary["posts"] == 400  # the null status is no post
    assert sum(summary["units_allocated"].values()) > 0  # type: ignore[union-attr]
    assert summary["decisions"]["order"] > 250  # type: ignore[index]


def _tweet(tweet_id: str, author: str, text: str) -> dict[str, object]:
    tag_at, mention_at = text.index("#MI2"), text.index("@xiaomi")
    return {
        "id": tweet_id,
        "author_id": author,
        "created_at": "2012-10-30T04:00:01.000Z",
        "lang": "en",
        "text": text,
        "entities": {
            "hashtags": [{"start": tag_at, "end": tag_at + 4, "tag": "MI2"}],
            "mentions": [{"start": mention_at, "end": mention_at + 7, "username": "xiaomi"}],
        },
    }


def test_replay_reads_x_pages_and_tweets_and_skips_a_broken_line(
    db_url: str, tmp_path: Path, small_xiaomi: Path
) -> None:
    page = {
        "data": [
            _tweet("1262000000000000001", "11", "@xiaomi #MI2 32gb black"),
            _tweet("1262000000000000002", "12", "#MI2 @xiaomi 16GB white x2 &amp; fast"),
        ],
        "includes": {"users": [{"id": "11", "username": "a"}, {"id": "12", "username": "b"}]},
        "meta": {"result_count": 2},
    }
    single = _tweet("1262000000000000003", "13", "@xiaomi #MI2 32gb white")
    path = tmp_path / "x.jsonl"
    lines = [json.dumps(page), "{not json", json.dumps(single)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    summary = _replay(path, small_xiaomi, db_url, "--format", "twitter")

    assert summary["posts"] == 3
    assert summary["malformed_lines"] == 1  # counted and skipped; the replay goes on
    assert summary["units_allocated"] == {
        "MI2-16GB-BLACK": 0,
        "MI2-16GB-WHITE": 2,
        "MI2-32GB-BLACK": 1,
        "MI2-32GB-WHITE": 1,
    }
