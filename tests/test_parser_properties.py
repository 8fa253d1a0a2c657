"""Properties over arbitrary input: the parser never raises and always gives exactly one decision.

Also: the per-token fast path and the whole-text reading agree on every input, a well-formed
order written any way a fan might (any language's words, full-width, odd spacing, zero-width
characters, any order of parts) is read as exactly that order, and arbitrary payload shapes
give exactly one output line per input line from `flashtag parse`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_parser_table import GRAMMARS, SHOP, XIAOMI

from bot.commands.parse_cmd import InputFormat, run
from connectors.mastodon_payload import PayloadError, post_from_notification, post_from_status
from connectors.post import Post
from connectors.x_payload import post_from_tweet, posts_from_page
from orders.commands import Decision
from orders.parser import REASONS, Grammar, compile_grammar, parse, parse_by_text

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real"
T0 = datetime(2012, 10, 30, 4, 0, tzinfo=UTC)
KINDS = {"order", "cancel", "status", "balance", "topup", "help", "ignore", "reject"}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(decision: Decision, grammar: Grammar) -> None:
    """One well-formed decision."""
    assert isinstance(decision, Decision)
    assert decision.decision in KINDS
    assert decision.lang in ("en", "ja", "zh")
    if decision.decision in ("ignore", "reject"):
        assert decision.reason in REASONS
    else:
        assert decision.reason is None
    if decision.decision == "order":
        assert decision.sku is not None
        assert decision.quantity is not None and 1 <= decision.quantity <= grammar.per_buyer_limit
    else:
        assert decision.sku is None and decision.quantity is None
    if decision.decision == "topup" and decision.amount is not None:
        assert grammar.topup_min <= decision.amount <= grammar.topup_max
    elif decision.decision != "topup":
        assert decision.amount is None


text_anything = st.text(
    alphabet=st.characters(codec=None, exclude_categories=("Cs",)), max_size=80
) | st.text(max_size=80)
# Texts that are likely to get past the addressed check, to exercise the rest.
addressed_noise = st.builds(
    lambda a, b, c: f"{a}@xiaomi {b}#MI2{c}",
    st.text(max_size=20),
    st.text(max_size=40),
    st.text(max_size=40),
)


@SETTINGS
@given(text=text_anything | addressed_noise, lang=st.none() | st.text(max_size=6))
@example(text="@xiaomi #MI2 " + "9" * 5000, lang=None)
@example(text="@xiaomi #MI2 topup " + "9" * 400, lang=None)
@example(text="@xiaomi #MI2 \U000e0041\u200b\x00", lang="zh-Hant")
def test_any_text_gives_one_decision_and_both_readings_agree(text: str, lang: str | None) -> None:
    post = Post("text", "1", "2", "fan", T0, text, lang=lang)
    for grammar in GRAMMARS.values():
        decision = parse(post, grammar)
        check(decision, grammar)
        assert decision.reason != "unparseable"
        assert parse_by_text(post, grammar) == decision


word_tuple = st.none() | st.lists(st.text(max_size=12), max_size=4).map(tuple)


@SETTINGS
@given(
    platform=st.sampled_from(["mastodon", "x", "text"]),
    text=text_anything | addressed_noise,
    body=st.none() | text_anything,
    hashtags=word_tuple | st.just(("mi2",)) | st.just(("MI2", "Ｍｉ２")),
    mentions=word_tuple | st.just(("xiaomi",)) | st.just(("XIAOMI@mastodon.social",)),
    lang=st.none() | st.sampled_from(["en", "ja", "zh", "de", "und", "zh-TW", ""]),
    repost=st.booleans(),
)
def test_any_post_fields_give_one_decision(
    platform: str,
    text: str,
    body: str | None,
    hashtags: tuple[str, ...] | None,
    mentions: tuple[str, ...] | None,
    lang: str | None,
    repost: bool,
) -> None:
    post = Post(
        platform,  # type: ignore[arg-type]
        "1",
        "2",
        "fan",
        T0,
        text,
        hashtags=hashtags,
        mentions=mentions,
        lang=lang,
        body=body,
        repost=repost,
    )
    for grammar in GRAMMARS.values():
        decision = parse(post, grammar)
        check(decision, grammar)
        assert parse_by_text(post, grammar) == decision
        if repost:
            assert (decision.decision, decision.reason) == ("ignore", "repost")


# Pieces that interact: numbers, units, measures, signs, separators, commands, CJK counters.
SOUP = st.sampled_from(
    [
        "x",
        "×",
        "2",
        "16",
        "32",
        "-1",
        "1.5",
        "0",
        "gb",
        "g",
        "GB",
        "pcs",
        "units",
        "台",
        "个",
        "两",
        "一",
        "十",
        "つ",
        "many",
        "lots",
        "blots",
        "black",
        "white",
        "黑色",
        "黒",
        "白",
        "two",
        "ten",
        "zero",
        "cancel",
        "top",
        "up",
        "topup",
        "充值",
        "500",
        "元",
        "%",
        "inch",
        "2x",
        "x2",
        "16gb",
        "32g",
        "×2",
        "2,",
        "1,5",
        "12:00",
        "/",
        "½",
        "−",
        "+",
        "几台",
        "help",
        "helpful",
        "予約",
        "状況",
        "#MI2",
        "@xiaomi",
        "#MI2#",
        "mi2",
        "2台",
        "32g黑色",
        "ｘ２",
    ]
)
GLUE = st.sampled_from([" ", "", "", "  ", "\n", ",", "\u3000", "\u200b"])


@SETTINGS
@given(pieces=st.lists(st.tuples(SOUP, GLUE), min_size=1, max_size=8))
@example(pieces=[("x", " "), ("16", " "), ("gb", " ")])
@example(pieces=[("32", " "), ("×", ""), ("白", "")])
@example(pieces=[("2", " "), ("×", " "), ("help", "")])
def test_word_soup_reads_the_same_token_by_token_and_as_a_whole(
    pieces: list[tuple[str, str]],
) -> None:
    text = "@xiaomi #MI2 " + "".join(word + glue for word, glue in pieces)
    post = Post("text", "1", "2", "fan", T0, text)
    decision = parse(post, GRAMMARS["xiaomi"])
    check(decision, GRAMMARS["xiaomi"])
    assert parse_by_text(post, GRAMMARS["xiaomi"]) == decision


def test_a_post_object_that_breaks_its_promises_is_rejected_not_raised() -> None:
    class Broken:
        platform = "text"
        post_id = "1"
        author_id = "2"
        text = None
        body = None
        hashtags = None
        mentions = None
        lang = None
        created_at = T0

    decision = parse(Broken(), GRAMMARS["xiaomi"])  # type: ignore[arg-type]
    assert (decision.decision, decision.reason) == ("reject", "unparseable")


# --- Well-formed orders, written every way a fan might -------------------------------------

FULLWIDTH = {c: c + 0xFEE0 for c in range(0x21, 0x7F)} | {0x20: 0x3000}
SEPARATORS = [" ", "  ", "\u3000", "\n", "\t", " \u200b", ", "]
QUANTITY_FORMS = {
    1: ["", "x1", "×1", "1", "1 pcs", "1台", "1個", "一台", "一个", "one", "1x"],
    2: ["x2", "×2", "2", "2 pcs", "2pcs", "2台", "2個", "2个", "2部", "两台", "二台", "two", "2x"],
}
ORDER_WORDS = ["", "order", "buy", "reserve", "予約", "注文", "购买", "预约", "订购", "抢购"]
MENTIONS = ["@xiaomi", "@XiaoMi", "@xiaomi@mastodon.social", "＠ｘｉａｏｍｉ"]
TAGS = ["#MI2", "#mi2", "#MI2#", "＃ＭＩ２", "#Mi2"]
PRODUCT_WORDS = {
    p.sku: [sorted(words) for words in p.variant.values()] for p in XIAOMI.campaign().products
}


@st.composite
def written_order(draw: st.DrawFn) -> tuple[str, str, int]:
    sku = draw(st.sampled_from(sorted(PRODUCT_WORDS)))
    quantity = draw(st.sampled_from([1, 2]))
    parts = [draw(st.sampled_from(words)) for words in PRODUCT_WORDS[sku]]
    parts.append(draw(st.sampled_from(QUANTITY_FORMS[quantity])))
    parts.append(draw(st.sampled_from(ORDER_WORDS)))
    parts += [draw(st.sampled_from(MENTIONS)), draw(st.sampled_from(TAGS))]
    parts = draw(st.permutations(parts))
    text = ""
    for part in parts:
        if part:
            text += part + draw(st.sampled_from(SEPARATORS))
    if draw(st.booleans()):
        text = text.upper()
    if draw(st.integers(0, 3)) == 0:
        text = text.translate(FULLWIDTH)
    return text, sku, quantity


@SETTINGS
@given(order=written_order())
def test_a_well_formed_order_is_read_as_written(order: tuple[str, str, int]) -> None:
    text, sku, quantity = order
    post = Post("text", "1", "2", "fan", T0, text)
    decision = parse(post, GRAMMARS["xiaomi"])
    assert (decision.decision, decision.sku, decision.quantity) == ("order", sku, quantity), text
    assert parse_by_text(post, GRAMMARS["xiaomi"]) == decision


@SETTINGS
@given(order=written_order(), lang=st.sampled_from(["en", "ja", "zh"]))
def test_a_declared_language_is_the_reply_language(order: tuple[str, str, int], lang: str) -> None:
    post = Post("text", "1", "2", "fan", T0, order[0], lang=lang)
    assert parse(post, GRAMMARS["xiaomi"]).lang == lang


def test_one_product_campaign_orders_any_addressed_post() -> None:
    grammar = compile_grammar(SHOP, SHOP.campaign())
    post = Post("text", "1", "2", "fan", T0, "#MatchaDrop 🍵🍵")
    assert parse(post, grammar) == Decision("order", sku="MATCHA-100G", quantity=1, lang="en")


# --- Payload shapes -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _real(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))["body"]


REAL_STATUS = _real("mastodon/notifications_mentions_local.json")[0]["status"]
REAL_NOTIFICATION = _real("mastodon/notifications_mentions_local.json")[0]
REAL_PAGE = _real("twitter/v2_tweet_reply_hashtags_html_escaped_excerpt_twarc.json")


def _mutate(payload: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**payload, key: value}


mastodon_shapes = (
    json_values
    | st.builds(_mutate, st.just(REAL_STATUS), st.sampled_from(sorted(REAL_STATUS)), json_values)
    | st.builds(
        _mutate,
        st.just(REAL_NOTIFICATION),
        st.sampled_from(sorted(REAL_NOTIFICATION)),
        json_values,
    )
)
tweet = REAL_PAGE["data"][0]
twitter_shapes = (
    json_values
    | st.builds(
        lambda k, v: {**REAL_PAGE, "data": [_mutate(tweet, k, v)]},
        st.sampled_from(sorted(tweet)),
        json_values,
    )
    | st.builds(
        lambda k, v: _mutate(REAL_PAGE, k, v), st.sampled_from(sorted(REAL_PAGE)), json_values
    )
    | st.builds(lambda e: {**REAL_PAGE, "data": [{**tweet, "entities": e}]}, json_values)
)
text_shapes = json_values | st.fixed_dictionaries(
    {"post_id": json_values, "text": json_values | st.text(), "lang": json_values}
)


@SETTINGS
@given(payload=mastodon_shapes)
@example(payload={**REAL_STATUS, "visibility": []})
@example(payload={**REAL_STATUS, "edited_at": "9999-12-31T23:59:59-01:00"})
@example(payload={**REAL_NOTIFICATION, "type": ["mention"]})
def test_mastodon_converters_raise_only_payload_error(payload: Any) -> None:
    for convert in (post_from_status, post_from_notification):
        with contextlib.suppress(PayloadError):
            convert(payload)


@SETTINGS
@given(payload=twitter_shapes)
@example(payload={**tweet, "id": "9" * 30})
@example(payload={**tweet, "id": "9" * 20, "created_at": None})
@example(payload={**tweet, "created_at": "0001-01-01T00:00:00+01:00"})
@example(payload={**tweet, "referenced_tweets": [{"type": ["replied_to"], "id": "1"}]})
@example(payload={**tweet, "entities": {"hashtags": [{"start": True, "end": 3, "tag": "x"}]}})
def test_x_converters_raise_only_payload_error(payload: Any) -> None:
    with contextlib.suppress(PayloadError):
        posts_from_page(payload)
    with contextlib.suppress(PayloadError):
        post_from_tweet(payload)


@SETTINGS
@given(
    payloads=st.lists(mastodon_shapes | twitter_shapes | text_shapes, max_size=5),
    junk=st.lists(st.binary(max_size=30), max_size=2),
)
def test_parse_command_gives_one_line_per_input_line(
    payloads: list[Any], junk: list[bytes]
) -> None:
    lines = [json.dumps(p).encode() for p in payloads] + [j.replace(b"\n", b" ") for j in junk]
    for fmt in InputFormat:
        out = list(run(lines, GRAMMARS["xiaomi"], fmt))
        if fmt is InputFormat.twitter:
            assert len(out) >= len(lines)
        else:
            assert len(out) == len(lines)
        for line in out:
            assert line["decision"] in KINDS
            assert line.get("reason") is None or line["reason"] in REASONS
