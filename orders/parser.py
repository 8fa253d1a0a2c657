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

import itertools
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

from config.brand import Brand, Campaign, normalize_hashtag
from orders.commands import Decision, DecisionKind

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

EN_NUMBERS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
CJK_NUMBERS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "兩": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
    "十": 10,
}
COUNTERS = "台個个部"

_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u31f0-\u31ff"  # katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uac00-\ud7af"  # hangul syllables
)
_CJK_RE = re.compile(f"[{_CJK}]")
_KANA_RE = re.compile("[\u3040-\u30ff\u31f0-\u31ff]")
_HAN_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# A Latin "word character" for whole-word matching. CJK letters are deliberately not in it, so
# `32g黑色` still has the whole word `32g` in it.
_LW = r"0-9a-z_\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"  # Latin letters, not × or ÷


# Characters the normaliser touches: Unicode format characters (Cf: zero-width spaces and
# joiners, bidi controls, the BOM) and controls (Cc) are removed, except whitespace controls,
# which become a space. Planes 2-13 and 15-16 hold none of them; not scanning them keeps
# imports fast. The class is written as ranges: a long list of single characters is slow.
def _control_class() -> str:
    points = [
        c
        for c in itertools.chain(range(0x20000), range(0xE0000, 0xE1000))
        if unicodedata.category(chr(c)) in ("Cf", "Cc")
    ]
    ranges: list[list[int]] = []
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


_CONTROLS_RE = re.compile(f"[{_control_class()}]")


def _drop_control(match: re.Match[str]) -> str:
    return " " if match.group().isspace() else ""


_HASHTAG_RE = re.compile(r"#([\w·]+)")
_TAGS_AND_MENTIONS_RE = re.compile(r"#[\w·]+#?|@[0-9a-z_.\-]+(?:@[0-9a-z_\-]+(?:\.[0-9a-z_\-]+)+)?")

# Measures written after a number that make it not a quantity: "16gb", "32 G", "6inch", "500元".
_MEASURES = "gb|g|tb|mb|gig|inch|mah|mm|cm"
_MEASURE_MARKS = "寸元円块%"
_MANY = "many|some|several|few|lots?|all|half"

_QUANTITY_RE = re.compile(
    rf"""
    (?:
        (?:(?<![{_LW}])[x×]|×)\s*                       # x2, × 2
        (?P<pre>[-−+]?\d+(?:[.,/⁄]\d+)?)
        (?![{_LW}]|[.,/⁄:]\d|\s*(?:{_MEASURES})(?![a-z])|\s*[{_MEASURE_MARKS}])
    |
        (?<![{_LW}\-−+])(?<!\d[.,/⁄:])
        (?P<num>[-−+]?\d+(?:[.,/⁄]\d+)?)
        (?:
            (?P<unit>\s*(?:pcs|pc|units?)|x|×)(?![{_LW}])   # 2 pcs, 2x
            | \s*[{COUNTERS}]                          # 2台
            | (?![{_LW}]|[.,/⁄:]\d|\s*(?:{_MEASURES})(?![a-z])|\s*[{_MEASURE_MARKS}])
        )
    |
        (?<![a-z])(?P<word>zero|one|two|three|four|five|six|seven|eight|nine|ten)(?![a-z])
    |
        (?P<cjk>[零〇一二两兩三四五六七八九十])[{COUNTERS}つ]
    |
        (?P<bad>(?:几|幾|何|多少|半)[{COUNTERS}]
            |(?<![a-z])(?:{_MANY})\s*(?:pcs|units?)(?![a-z])
            |(?<!\d)×\s*(?![-−+]?\d)[a-z\u3040-\u9fff])
    )
    """,
    re.VERBOSE,
)

_AMOUNT_RE = re.compile(
    rf"""
    [\s:=]*
    (?:[¥$€£]|cny|rmb|usd|jpy|eur|gbp)?\s*
    (?P<num>[-−+]?(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?)
    (?![{_LW}]|[.,]\d|\s*(?:gb|g)(?![a-z]))
    """,
    re.VERBOSE,
)
_MEANINGLESS_RE = re.compile(r"[\W_]*")


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


def normalize_text(text: str) -> str:
    """NFKC, case-folded, format and control characters removed (whitespace ones -> space)."""
    if text.isascii():
        if not text.isprintable():
            text = _CONTROLS_RE.sub(_drop_control, text)
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold()
    # isprintable() is False for any Cf or Cc character: a fast scan that spares the regex.
    return text if text.isprintable() else _CONTROLS_RE.sub(_drop_control, text)


def _word(word: str) -> str:
    return " ".join(normalize_text(word).split())


def _is_cjk(word: str) -> bool:
    return _CJK_RE.search(word) is not None


def _alternation(words: Iterable[str], *, spaced_units: bool = False) -> str:
    """A regex alternation: Latin words whole-word, CJK words as substrings; longest first."""
    latin: list[str] = []
    cjk: list[str] = []
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        if _is_cjk(word):
            cjk.append(re.escape(word))
            continue
        pattern = r"\s+".join(re.escape(part) for part in word.split())
        if spaced_units:
            # "32gb" also matches "32 gb"
            pattern = re.sub(rf"^(\d+)({_MEASURES})$", r"\1\\s*\2", pattern)
        latin.append(pattern)
    parts = []
    if latin:
        parts.append(rf"(?<![{_LW}])(?:{'|'.join(latin)})(?![{_LW}])")
    if cjk:
        parts.append("|".join(cjk))
    return "|".join(parts) if parts else r"(?!x)x"


def _squash(word: str) -> str:
    return "".join(word.split())


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

    The three dictionaries at the end are memo tables filled while parsing (bounded in size);
    they never change a decision, only how fast it is reached.
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
    _decisions: dict[tuple[object, ...], Decision] = field(default_factory=dict, repr=False)
    _tokens: dict[str, _Token] = field(default_factory=dict, repr=False)
    _orders: dict[tuple[str, int, str], Decision] = field(default_factory=dict, repr=False)
    _skus: dict[int, tuple[str | None, str]] = field(default_factory=dict, repr=False)


_MEMO_LIMIT = 100_000
_HUGE = 10**18


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
            words = frozenset(w for w in (_word(s) for s in synonyms) if w)
            if not words:
                continue
            bit = 1 << group_ids.setdefault(words, len(group_ids))
            required |= bit
            for word in words:
                key = _squash(word)
                groups_of[key] = groups_of.get(key, 0) | bit
        products.append((product.sku, required))
    storage = re.compile(rf"^\d+(?:{_MEASURES})$")
    all_words = sorted({w for words in group_ids for w in words})
    digit_words = frozenset(
        w for w in all_words if any(c.isdigit() for c in w) and not storage.match(w)
    )
    return _Variants(
        pattern=re.compile(_alternation(all_words, spaced_units=True)),
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
            command_of[_word(word)] = command
    order_words = {_word(w) for w in ORDER_WORDS}
    for extra in campaign.words.values():
        for command in COMMAND_WORDS:
            for word in getattr(extra, command):
                if _word(word):
                    command_of[_word(word)] = command
        order_words.update(_word(w) for w in extra.order if _word(w))
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
        command_pattern=re.compile(_alternation(command_of)),
        command_of=command_of,
        command_heads=re.compile(
            f"(?:{_alternation(w.split()[0] for w in command_of if ' ' in w)})$"
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


def detect_lang(text: str) -> str:
    """Script-based guess: any kana -> ja, else any Han -> zh, else en."""
    if text.isascii():
        return "en"
    if _KANA_RE.search(text):
        return "ja"
    if _HAN_RE.search(text):
        return "zh"
    return "en"


_LANG_OF = {"en": "en", "ja": "ja", "zh": "zh"}


def _lang(declared: str | None, text: str) -> str:
    if declared:
        found = _LANG_OF.get(declared)
        if found is not None:
            return found
        prefix = declared[:2].lower()
        if prefix in _LANG_OF and (len(declared) == 2 or declared[2] in "-_"):
            return prefix
    return detect_lang(text)


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
            if not any(normalize_hashtag(t) == tag for t in _HASHTAG_RE.findall(text)):
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
    if _MEANINGLESS_RE.fullmatch(rest):
        return None
    match = _AMOUNT_RE.match(rest)
    if match is None:
        return BAD_AMOUNT
    number = match.group("num").replace(",", "")
    if number[0] in "-−+":
        if number[0] != "+":
            return BAD_AMOUNT
        number = number[1:]
    whole, _, fraction = number.partition(".")
    whole = whole.lstrip("0") or "0"
    if len(whole) > 18:
        return AMOUNT_OUT_OF_RANGE
    digits = grammar.minor_digits
    if len(fraction) > digits and fraction[digits:].strip("0"):
        return BAD_AMOUNT
    fraction = fraction[:digits].ljust(digits, "0")
    amount = int(whole) * int(10**digits) + (int(fraction) if fraction else 0)
    if amount <= 0:
        return BAD_AMOUNT
    if not grammar.topup_min <= amount <= grammar.topup_max:
        return AMOUNT_OUT_OF_RANGE
    return amount


def _without_digit_words(text: str, grammar: Grammar) -> str:
    for word in grammar.variants.digit_words:
        if word in text:
            text = text.replace(word, " ")
    return text


def _quantities(text: str) -> tuple[frozenset[int], bool]:
    """Every quantity written in `text`, and whether a malformed one was."""
    found: set[int] = set()
    for pre, num, _unit, word, cjk, bad in _QUANTITY_RE.findall(text):
        if bad:
            return frozenset(found), True
        if word:
            found.add(EN_NUMBERS[word])
        elif cjk:
            found.add(CJK_NUMBERS[cjk])
        else:
            value = pre or num
            if value[0] in "-−" or not value.lstrip("+").isdigit():
                return frozenset(found), True
            digits = value.lstrip("+").lstrip("0") or "0"
            # Beyond any limit; int() of thousands of digits is slow and refused past 4300.
            found.add(int(digits) if len(digits) <= 18 else _HUGE)
    return frozenset(found), False


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
            bits = groups_of.get(_squash(word), 0)
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
_MEASURE_START_RE = re.compile(rf"(?:{_MEASURES})(?![a-z])|[{_MEASURE_MARKS}]")
_PIECES_START_RE = re.compile(r"(?:pcs|units?)(?![a-z])")
_MANY_END_RE = re.compile(rf"(?<![a-z])(?:{_MANY})$")
_JOINS = (_MEASURE_START_RE, _MEASURE_START_RE, _PIECES_START_RE, re.compile(""))


def _learn(token: str, grammar: Grammar) -> _Token:
    quantities, bad = _quantities(_without_digit_words(token, grammar))
    last = token[-1]
    join = 1 if last.isdigit() else 2 if _MANY_END_RE.search(token) else 3 if last == "×" else 0
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
            if _JOINS[meaning[3]].match(tokens[index + 1]) is None:
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
    found, bad = _quantities(_without_digit_words(rest, grammar))
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
        lang = _lang(post.lang, rest)
    else:
        rest = ""
        lang = _lang(post.lang, text)
    if getattr(post, "repost", False) or text.startswith("rt @"):
        return _decision(grammar, "ignore", lang, reason=REPOST)
    if not _addressed(post, grammar, text):
        return _decision(grammar, "ignore", lang, reason=NOT_ADDRESSED)
    handle = getattr(post, "author_handle", None)
    if handle and handle.lower() in grammar.accounts["text"]:
        # The brand's own announcement ("post #MI2 32GB black to @xiaomi") is no order.
        return _decision(grammar, "ignore", lang, reason=OWN_POST)
    if body is None:
        rest = _TAGS_AND_MENTIONS_RE.sub(" ", text) if ("#" in text or "@" in text) else text

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
        return Decision("reject", reason=UNPARSEABLE, lang=grammar.fallback_lang)


def parse_by_text(post: ParsablePost, grammar: Grammar) -> Decision:
    """`parse` without the per-token memo: reads the whole text with the regular expressions.

    The reference the fast path is tested against; slower, same decisions.
    """
    try:
        return _parse(post, grammar, by_token=False)
    except Exception:
        logger.exception("cannot parse post %r", getattr(post, "post_id", None))
        return Decision("reject", reason=UNPARSEABLE, lang=grammar.fallback_lang)
