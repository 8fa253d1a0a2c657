"""The order parser: one post plus one campaign gives exactly one `Decision`.

`compile_grammar(brand, campaign)` does all the work that depends only on the brand file (word
tables, variant synonyms, bot account names, regular expressions) once per campaign.
`parse(post, grammar)` is then a pure function: one normalisation pass over the text and a
handful of regular-expression and dictionary look-ups. It never raises; a post it cannot read
at all becomes `reject` with reason `unparseable`. Every reason code is documented, with
examples in English, Japanese and Chinese, in docs/parser.md.

Order of judgement, first match wins:

1. a repost (boost/retweet, or text starting "RT @") -> `ignore repost`; not carrying the
   campaign hashtag or (when the campaign requires it) not mentioning the brand's account on
   the post's platform -> `ignore not_addressed`; posted by the brand's own account ->
   `ignore own_post`;
2. with hashtags and mentions removed, the first command word decides cancel / status /
   balance / topup (with its amount) / help;
3. otherwise the post is an order: its quantity, then its variant (SKU).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

from config.brand import Brand, Campaign, normalize_hashtag
from orders.commands import Decision, DecisionKind
from orders.parser_text import (
    HASHTAG_RE,
    JOINS,
    MANY_END_RE,
    MEASURES,
    TAGS_AND_MENTIONS_RE,
    alternation,
    detect_lang,
    normalize_text,
    normalize_word,
    read_amount,
    read_quantities,
    reply_lang,
    squash,
)

__all__ = [
    "REASONS",
    "Grammar",
    "ParsablePost",
    "compile_grammar",
    "detect_lang",
    "normalize_text",
    "parse",
    "parse_by_text",
]

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "ja", "zh")

# Reason codes (docs/parser.md explains each one to buyers and brands).
NOT_ADDRESSED = "not_addressed"
REPOST = "repost"
OWN_POST = "own_post"
NO_STATUS = "no_status"
BAD_QUANTITY = "bad_quantity"
OVER_LIMIT = "over_limit"
AMBIGUOUS_VARIANT = "ambiguous_variant"
UNKNOWN_VARIANT = "unknown_variant"
BAD_AMOUNT = "bad_amount"
AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
MALFORMED_INPUT = "malformed_input"
UNPARSEABLE = "unparseable"
REASONS = (
    NOT_ADDRESSED,
    REPOST,
    OWN_POST,
    NO_STATUS,
    BAD_QUANTITY,
    OVER_LIMIT,
    AMBIGUOUS_VARIANT,
    UNKNOWN_VARIANT,
    BAD_AMOUNT,
    AMOUNT_OUT_OF_RANGE,
    MALFORMED_INPUT,
    UNPARSEABLE,
)

# Built-in command words; brands add their own per language in the brand file.
COMMAND_WORDS: Mapping[DecisionKind, tuple[str, ...]] = {
    "cancel": ("cancel", "キャンセル", "取消"),
    "status": ("status", "状況", "ステータス", "状态"),
    "balance": ("balance", "残高", "余额"),
    "topup": ("topup", "top-up", "top up", "チャージ", "充值"),
    "help": ("help", "ヘルプ", "帮助"),
}
ORDER_WORDS = ("order", "buy", "reserve", "予約", "注文", "购买", "预约", "订购")


class ParsablePost(Protocol):
    """What the parser reads from a post; `connectors.post.Post` has all of it."""

    @property
    def platform(self) -> str: ...
    @property
    def post_id(self) -> str: ...
    @property
    def author_id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def body(self) -> str | None: ...
    @property
    def hashtags(self) -> tuple[str, ...] | None: ...
    @property
    def mentions(self) -> tuple[str, ...] | None: ...
    @property
    def lang(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class _Variants:
    pattern: re.Pattern[str]
    groups_of: Mapping[str, int]  # squashed synonym -> bit mask of the groups it is in
    products: tuple[tuple[str, int], ...]  # (sku, bit mask of the groups it requires)
    digit_words: frozenset[str]  # synonyms the quantity reader must not see (e.g. "pro 2")
    phrases: bool  # some synonym has a space in it


@dataclass(frozen=True, slots=True, eq=False)
class Grammar:
    """Everything `parse` needs for one campaign, compiled once.

    The dictionaries at the end are memo tables filled while parsing (bounded in size);
    they never change a decision, only how fast it is reached. They are not init fields, so
    `dataclasses.replace` gives a changed grammar empty ones.
    """

    brand_id: str
    campaign_id: str
    tag: str
    tag_pattern: re.Pattern[str]
    require_mention: bool
    accounts: Mapping[str, frozenset[str]]  # platform -> bot account names, lower-case
    mention_patterns: Mapping[str, re.Pattern[str]]  # platform -> "@bot" in plain text
    command_pattern: re.Pattern[str]
    command_of: Mapping[str, DecisionKind]
    command_heads: re.Pattern[str]  # a token ending in the first word of "top up" etc.
    order_words: frozenset[str]
    variants: _Variants
    single_sku: str | None
    per_buyer_limit: int
    minor_digits: int
    topup_min: int
    topup_max: int
    fallback_lang: str
    by_token: bool  # every word is one token, so the per-token fast path gives the same answer
    _decisions: dict[tuple[object, ...], Decision] = field(
        default_factory=dict, init=False, repr=False
    )
    _tokens: dict[str, _Token] = field(default_factory=dict, init=False, repr=False)
    _orders: dict[tuple[str, int, str], Decision] = field(
        default_factory=dict, init=False, repr=False
    )
    _skus: dict[int, tuple[str | None, str]] = field(default_factory=dict, init=False, repr=False)


_MEMO_LIMIT = 100_000


def _accounts(brand: Brand) -> dict[str, frozenset[str]]:
    mastodon: set[str] = set()
    x: set[str] = set()
    if brand.accounts.mastodon is not None:
        name = brand.accounts.mastodon.username.removeprefix("@").lower()
        host = (urlsplit(brand.accounts.mastodon.base_url).hostname or "").lower()
        mastodon.add(name.split("@")[0])
        mastodon.add(name if "@" in name else f"{name}@{host}")
    if brand.accounts.x is not None:
        x.add(brand.accounts.x.username.removeprefix("@").lower())
    return {
        "mastodon": frozenset(mastodon),
        "x": frozenset(x),
        "text": frozenset(mastodon | x),
    }


def _mention_pattern(names: Iterable[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=lambda n: (-len(n), n)))
    if not alternatives:
        return re.compile(r"(?!x)x")
    # Not glued to a Latin word before it ("a@xiaomi" is an e-mail address), and not the
    # start of a longer name or of another server's account ("@xiaomi@elsewhere.example").
    return re.compile(rf"(?<![0-9a-z_@])@(?:{alternatives})(?![0-9a-z_\-@]|\.[0-9a-z])")


def _compile_variants(campaign: Campaign) -> _Variants:
    group_ids: dict[frozenset[str], int] = {}
    groups_of: dict[str, int] = {}
    products: list[tuple[str, int]] = []
    for product in campaign.products:
        required = 0
        for synonyms in product.variant.values():
            words = frozenset(w for w in (normalize_word(s) for s in synonyms) if w)
            if not words:
                continue
            bit = 1 << group_ids.setdefault(words, len(group_ids))
            required |= bit
            for word in words:
                key = squash(word)
                groups_of[key] = groups_of.get(key, 0) | bit
        products.append((product.sku, required))
    storage = re.compile(rf"^\d+(?:{MEASURES})$")
    all_words = sorted({w for words in group_ids for w in words})
    digit_words = frozenset(
        w for w in all_words if any(c.isdigit() for c in w) and not storage.match(w)
    )
    return _Variants(
        pattern=re.compile(alternation(all_words, spaced_units=True)),
        groups_of=groups_of,
        products=tuple(products),
        digit_words=digit_words,
        phrases=any(" " in w for w in all_words),
    )


def compile_grammar(brand: Brand, campaign: Campaign) -> Grammar:
    """Precompile the matchers of one campaign of a brand file."""
    command_of: dict[str, DecisionKind] = {}
    for command, words in COMMAND_WORDS.items():
        for word in words:
            command_of[normalize_word(word)] = command
    order_words = {normalize_word(w) for w in ORDER_WORDS}
    for extra in campaign.words.values():
        for command in COMMAND_WORDS:
            for word in getattr(extra, command):
                if normalize_word(word):
                    command_of[normalize_word(word)] = command
        order_words.update(normalize_word(w) for w in extra.order if normalize_word(w))
    variants = _compile_variants(campaign)
    accounts = _accounts(brand)
    tag = campaign.tag
    return Grammar(
        brand_id=brand.brand.id,
        campaign_id=campaign.id,
        tag=tag,
        tag_pattern=re.compile("#" + re.escape(tag) + r"(?![\w·])"),
        require_mention=campaign.require_mention,
        accounts=accounts,
        mention_patterns={p: _mention_pattern(names) for p, names in accounts.items()},
        command_pattern=re.compile(alternation(command_of)),
        command_of=command_of,
        command_heads=re.compile(
            f"(?:{alternation(w.split()[0] for w in command_of if ' ' in w)})$"
        ),
        order_words=frozenset(order_words),
        variants=variants,
        single_sku=campaign.products[0].sku if len(campaign.products) == 1 else None,
        per_buyer_limit=campaign.per_buyer_limit,
        minor_digits=campaign.minor_digits,
        topup_min=campaign.topup_min,
        topup_max=campaign.topup_max,
        fallback_lang=campaign.language,
        by_token=not variants.phrases,
    )


def _decision(
    grammar: Grammar,
    kind: DecisionKind,
    lang: str,
    *,
    sku: str | None = None,
    quantity: int | None = None,
    amount: int | None = None,
    reason: str | None = None,
) -> Decision:
    # Decisions are immutable and few: share them instead of building one per post.
    key = (kind, lang, sku, quantity, amount, reason)
    cache = grammar._decisions
    found = cache.get(key)
    if found is None:
        found = Decision(kind, sku=sku, quantity=quantity, amount=amount, reason=reason, lang=lang)
        if len(cache) < _MEMO_LIMIT:
            cache[key] = found
    return found


def _addressed(post: ParsablePost, grammar: Grammar, text: str) -> bool:
    tags = post.hashtags
    if tags is None:
        if grammar.tag_pattern.search(text) is None:
            # Accents are folded in hashtags but not in text: compare tag by tag.
            if text.isascii() or "#" not in text:
                return False
            tag = grammar.tag
            if not any(normalize_hashtag(t) == tag for t in HASHTAG_RE.findall(text)):
                return False
    elif grammar.tag not in tags:
        tag = grammar.tag
        if not any(normalize_hashtag(t) == tag for t in tags):
            return False
    if not grammar.require_mention:
        return True
    platform = post.platform
    mentions = post.mentions
    if mentions is None:
        pattern = grammar.mention_patterns.get(platform) or grammar.mention_patterns["text"]
        return pattern.search(text) is not None
    accounts = grammar.accounts.get(platform) or grammar.accounts["text"]
    if accounts.isdisjoint(mentions):
        return not accounts.isdisjoint(m.lower().removeprefix("@") for m in mentions)
    return True


def _amount(rest: str, grammar: Grammar) -> int | str | None:
    """Minor units, None for no amount, or a reason code."""
    try:
        amount = read_amount(rest, grammar.minor_digits)
    except ValueError:
        return BAD_AMOUNT
    if amount is not None and not grammar.topup_min <= amount <= grammar.topup_max:
        return AMOUNT_OUT_OF_RANGE
    return amount


def _without_digit_words(text: str, grammar: Grammar) -> str:
    for word in grammar.variants.digit_words:
        if word in text:
            text = text.replace(word, " ")
    return text


def _quantity(found: AbstractSet[int], bad: bool, grammar: Grammar) -> int | str:
    """The ordered quantity (1 when none is written), or a reason code."""
    if bad:
        return BAD_QUANTITY
    if not found:
        return 1
    if len(found) > 1:
        return BAD_QUANTITY
    (quantity,) = found
    if quantity <= 0:
        return BAD_QUANTITY
    if quantity > grammar.per_buyer_limit:
        return OVER_LIMIT
    return quantity


def _groups(text: str, grammar: Grammar) -> int:
    """Bit mask of the variant groups that have a synonym in `text`."""
    groups_of = grammar.variants.groups_of
    matched = 0
    for word in grammar.variants.pattern.findall(text):
        bits = groups_of.get(word)
        if bits is None:
            bits = groups_of.get(squash(word), 0)
        matched |= bits
    return matched


def _sku(matched: int, grammar: Grammar) -> tuple[str | None, str]:
    """(sku, "") when exactly one product matches, else (None, reason)."""
    if grammar.single_sku is not None:
        return grammar.single_sku, ""
    known = grammar._skus.get(matched)
    if known is not None:
        return known
    products = grammar.variants.products
    skus = [sku for sku, required in products if required and required & matched == required]
    defaults = [sku for sku, required in products if not required]
    if len(skus) == 1:
        result: tuple[str | None, str] = (skus[0], "")
    elif skus:
        result = (None, AMBIGUOUS_VARIANT)
    elif len(defaults) == 1:
        result = (defaults[0], "")
    else:
        result = (None, UNKNOWN_VARIANT)
    if len(grammar._skus) < _MEMO_LIMIT:
        grammar._skus[matched] = result
    return result


# What one whitespace-separated token means: (flags, variant group bits, quantities, join).
# Flags: _COMMAND (has a command word), _BAD (malformed quantity), _JOINS_NEXT. Only three
# readings look across whitespace, so only they join tokens: a number before a measure
# ("16 gb" is storage, not 16 units), "many pcs", and "×" before a word ("× lots").
_Token = tuple[int, int, frozenset[int], int]
_COMMAND, _BAD, _JOINS_NEXT = 1, 2, 4


def _learn(token: str, grammar: Grammar) -> _Token:
    quantities, bad = read_quantities(_without_digit_words(token, grammar))
    last = token[-1]
    join = 1 if last.isdigit() else 2 if MANY_END_RE.search(token) else 3 if last == "×" else 0
    command = (
        grammar.command_pattern.search(token) is not None
        or grammar.command_heads.search(token) is not None
    )
    flags = command * _COMMAND | bad * _BAD | bool(join) * _JOINS_NEXT
    meaning = (flags, _groups(token, grammar), quantities, join)
    if len(grammar._tokens) < _MEMO_LIMIT:
        grammar._tokens[token] = meaning
    return meaning


def _order_by_token(rest: str, grammar: Grammar) -> tuple[int, int | str] | None:
    """Variant groups and quantity of an order, token by token; None if a command word is in it.

    Tokens repeat across a flash sale ("32g", "黑色", "两台"), so each is read once and
    remembered; the answer is the same as reading the whole text at once.
    """
    known = grammar._tokens
    tokens = rest.split()
    last = len(tokens) - 1
    matched = 0
    found: frozenset[int] | None = None
    bad = False
    for index, token in enumerate(tokens):
        meaning = known.get(token) or _learn(token, grammar)
        flags = meaning[0]
        if flags:
            if flags & _JOINS_NEXT and index < last:
                return _order_by_joined_tokens(tokens, grammar)
            if flags & _COMMAND:
                return None
            if flags & _BAD:
                bad = True
        matched |= meaning[1]
        if meaning[2]:
            found = meaning[2] if found is None else found | meaning[2]
    if found is None and not bad:
        return matched, 1
    return matched, _quantity(found or frozenset(), bad, grammar)


def _order_by_joined_tokens(tokens: list[str], grammar: Grammar) -> tuple[int, int | str] | None:
    """`_order_by_token` for posts where a token may join the next one (rare)."""
    known = grammar._tokens
    count = len(tokens)
    matched = 0
    found: frozenset[int] = frozenset()
    bad = False
    index = 0
    while index < count:
        token = tokens[index]
        meaning = known.get(token) or _learn(token, grammar)
        while meaning[3] and index + 1 < count:
            if JOINS[meaning[3]].match(tokens[index + 1]) is None:
                break
            index += 1
            token += tokens[index]
            meaning = known.get(token) or _learn(token, grammar)
        if meaning[0] & _COMMAND:
            return None
        matched |= meaning[1]
        found = found | meaning[2]
        bad = bad or bool(meaning[0] & _BAD)
        index += 1
    return matched, _quantity(found, bad, grammar)


def _order_by_text(rest: str, grammar: Grammar) -> tuple[int, int | str]:
    found, bad = read_quantities(_without_digit_words(rest, grammar))
    return _groups(rest, grammar), _quantity(found, bad, grammar)


def _command(rest: str, grammar: Grammar, lang: str) -> Decision | None:
    match = grammar.command_pattern.search(rest)
    if match is None:
        return None
    word = match.group()
    command = grammar.command_of.get(word) or grammar.command_of[" ".join(word.split())]
    if command == "topup":
        amount = _amount(rest[match.end() :], grammar)
        if isinstance(amount, str):
            return _decision(grammar, "reject", lang, reason=amount)
        return _decision(grammar, "topup", lang, amount=amount)
    return _decision(grammar, command, lang)


def _order(grammar: Grammar, sku: str, quantity: int, lang: str) -> Decision:
    key = (sku, quantity, lang)
    found = grammar._orders.get(key)
    if found is None:
        found = Decision("order", sku=sku, quantity=quantity, lang=lang)
        grammar._orders[key] = found  # bounded: SKUs x quantities up to the limit x 3 languages
    return found


def _parse(post: ParsablePost, grammar: Grammar, *, by_token: bool) -> Decision:
    text = normalize_text(post.text)
    body = post.body
    if body is not None:
        rest = normalize_text(body)
        lang = reply_lang(post.lang, rest)
    else:
        rest = ""
        lang = reply_lang(post.lang, text)
    if getattr(post, "repost", False) or text.startswith("rt @"):
        return _decision(grammar, "ignore", lang, reason=REPOST)
    if not _addressed(post, grammar, text):
        return _decision(grammar, "ignore", lang, reason=NOT_ADDRESSED)
    handle = getattr(post, "author_handle", None)
    if handle and handle.lower() in grammar.accounts["text"]:
        # The brand's own announcement ("post #MI2 32GB black to @xiaomi") is no order.
        return _decision(grammar, "ignore", lang, reason=OWN_POST)
    if body is None:
        rest = TAGS_AND_MENTIONS_RE.sub(" ", text) if ("#" in text or "@" in text) else text

    order = _order_by_token(rest, grammar) if by_token and grammar.by_token else None
    if order is None:
        command = _command(rest, grammar, lang)
        if command is not None:
            return command
        order = _order_by_text(rest, grammar)
    matched, quantity = order
    if isinstance(quantity, str):
        return _decision(grammar, "reject", lang, reason=quantity)
    sku, reason = _sku(matched, grammar)
    if sku is None:
        return _decision(grammar, "reject", lang, reason=reason)
    return _order(grammar, sku, quantity, lang)


def parse(post: ParsablePost, grammar: Grammar) -> Decision:
    """Exactly one decision for `post` in `grammar`'s campaign. Pure; never raises."""
    try:
        return _parse(post, grammar, by_token=True)
    except Exception:
        logger.exception("cannot parse post %r", getattr(post, "post_id", None))
        return Decision("reject", reason=UNPARSEABLE, lang=getattr(grammar, "fallback_lang", "en"))


def parse_by_text(post: ParsablePost, grammar: Grammar) -> Decision:
    """`parse` without the per-token memo: reads the whole text with the regular expressions.

    The reference the fast path is tested against; slower, same decisions.
    """
    try:
        return _parse(post, grammar, by_token=False)
    except Exception:
        logger.exception("cannot parse post %r", getattr(post, "post_id", None))
        return Decision("reject", reason=UNPARSEABLE, lang=getattr(grammar, "fallback_lang", "en"))
