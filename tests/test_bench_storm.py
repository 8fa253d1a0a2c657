"""The generated storm is the seed's sale in miniature: reproducible, and with its traits."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from bot.storm import BAD_KINDS, StormPost, StormSpec, scaled_brand, storm, write_jsonl
from config.brand import Brand
from config.loader import load_brand
from connectors.post import Post
from orders.parser import compile_grammar, parse

ROOT = Path(__file__).resolve().parent.parent
POSTS = 20_000


@pytest.fixture(scope="module")
def xiaomi() -> Brand:
    return load_brand(ROOT / "config" / "brands" / "xiaomi.toml")


@pytest.fixture(scope="module")
def posts(xiaomi: Brand) -> list[StormPost]:
    return list(storm(xiaomi, StormSpec(posts=POSTS, seed=7)))


def _unique(posts: list[StormPost]) -> list[StormPost]:
    return [p for p in posts if not p.redelivery]


def test_same_seed_same_storm_other_seed_other_storm(xiaomi: Brand) -> None:
    first = [p.record() for p in storm(xiaomi, StormSpec(posts=3_000, seed=11))]
    again = [p.record() for p in storm(xiaomi, StormSpec(posts=3_000, seed=11))]
    other = [p.record() for p in storm(xiaomi, StormSpec(posts=3_000, seed=12))]
    assert first == again
    assert first != other
    assert len(first) == 3_000


def test_storm_streams_without_building_the_whole_storm(xiaomi: Brand) -> None:
    # A billion-post storm yields its first lines at once: nothing is generated ahead.
    head = list(itertools.islice(storm(xiaomi, StormSpec(posts=10**9, seed=1)), 5))
    assert len(head) == 5


def test_defaults_are_the_seed_sale(xiaomi: Brand) -> None:
    spec = StormSpec()
    assert spec.posts == 1_300_000
    assert spec.posts / xiaomi.campaign().total_stock == 26


def test_about_five_percent_are_redeliveries(posts: list[StormPost]) -> None:
    seen: set[str] = set()
    again = 0
    for post in posts:
        if post.post_id in seen:
            again += 1
            assert post.redelivery
        seen.add(post.post_id)
    assert 0.04 <= again / len(posts) <= 0.06


def test_about_thirty_percent_of_fans_post_more_than_once(posts: list[StormPost]) -> None:
    per_fan = Counter(p.author for p in _unique(posts))
    repeaters = sum(1 for n in per_fan.values() if n > 1)
    assert 0.27 <= repeaters / len(per_fan) <= 0.33


def test_about_ten_percent_malformed_or_unaddressed_and_the_parser_agrees(
    xiaomi: Brand, posts: list[StormPost]
) -> None:
    unique = _unique(posts)
    bad = [p for p in unique if p.kind in BAD_KINDS]
    assert 0.085 <= len(bad) / len(unique) <= 0.115
    grammar = compile_grammar(xiaomi, xiaomi.campaign())
    disagree = []
    for post in unique:
        record = post.record()
        decision = parse(
            Post(
                platform="text",
                post_id=post.post_id,
                author_id=post.author,
                author_handle=post.handle,
                created_at=post.created_at,
                text=record["text"],
                lang=post.lang,
            ),
            grammar,
        )
        got = decision.reason if decision.decision in ("ignore", "reject") else decision.decision
        if post.kind == "order":
            ok = (decision.decision, decision.sku, decision.quantity) == (
                "order",
                post.sku,
                post.quantity,
            )
        else:
            ok = got == post.kind
        if not ok:
            disagree.append((post.text, post.kind, decision))
    assert len(disagree) <= len(unique) // 100, disagree[:10]


def test_three_languages_full_width_and_weibo_tags(posts: list[StormPost]) -> None:
    langs = Counter(p.lang for p in _unique(posts))
    assert set(langs) == {"en", "ja", "zh"}
    assert min(langs.values()) / sum(langs.values()) > 0.15
    texts = [p.text for p in posts]
    assert sum("＃ＭＩ２" in t for t in texts) > 100  # full-width hashtag
    assert sum("#MI2#" in t for t in texts) > 1_000  # Weibo style
    assert any("ブラック" in t or "ホワイト" in t for t in texts)
    assert any("黑色" in t for t in texts)


def test_four_skus_with_uneven_demand(xiaomi: Brand, posts: list[StormPost]) -> None:
    demand = Counter(p.sku for p in _unique(posts) if p.kind == "order")
    assert set(demand) == {p.sku for p in xiaomi.campaign().products}
    assert max(demand.values()) > 2.5 * min(demand.values())


def test_post_times_spread_over_five_minutes_from_opening(
    xiaomi: Brand, posts: list[StormPost]
) -> None:
    opens = xiaomi.campaign().opens_at
    times = [p.created_at for p in _unique(posts)]
    assert times == sorted(times)
    assert opens <= times[0] < opens + timedelta(seconds=1)
    assert opens + timedelta(seconds=280) <= times[-1] <= opens + timedelta(seconds=300)
    first_minute = sum(1 for t in times if t < opens + timedelta(minutes=1))
    assert first_minute > len(times) / 4  # most fans post early
    ids = [int(p.post_id) for p in _unique(posts)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_scaled_stock_keeps_proportions_and_sums_exactly(xiaomi: Brand) -> None:
    brand = scaled_brand(xiaomi, 1_003)
    stock = [p.stock for p in brand.campaign().products]
    assert sum(stock) == 1_003
    assert max(stock) - min(stock) <= 1


def test_jsonl_is_the_text_format(xiaomi: Brand, tmp_path: Path) -> None:
    path = tmp_path / "storm.jsonl"
    assert write_jsonl(storm(xiaomi, StormSpec(posts=500, seed=3)), path) == 500
    lines = path.read_bytes().splitlines()
    assert len(lines) == 500
    record = orjson.loads(lines[0])
    assert set(record) == {"post_id", "author", "handle", "text", "lang", "created_at"}
    assert record["created_at"].endswith("Z")
