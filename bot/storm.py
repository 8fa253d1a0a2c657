"""A reproducible flash-sale storm: the seed's Xiaomi sale as a stream of text-format posts.

`storm(spec)` yields `StormPost` values one at a time, in delivery order, with constant memory
(only the posts still due for a repeat or a redelivery are kept, a window that does not grow with
the storm). The same spec and seed always give the same lines. `StormPost.record()` is the text
format `flashtag parse --format text` and `flashtag replay` read:
`{"post_id", "author", "handle", "text", "lang", "created_at"}`, mentions and hashtags in the text.

At the defaults the storm has the seed's traits: 1,300,000 posts against 50,000 units (26:1);
about 5% of lines are redeliveries of an earlier post (same post id); about 30% of fans post more
than once; about 10% of posts are malformed or unaddressed; English, Chinese and Japanese, with
full-width text and Weibo-style `#MI2#` tags; uneven demand over the campaign's SKUs; post times
spread over five minutes from the campaign's opening, most of them early, never decreasing.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson

from config.brand import Brand, Campaign

StormKind = Literal[
    "order",
    "status",
    "balance",
    "help",
    "not_addressed",
    "unknown_variant",
    "ambiguous_variant",
    "bad_quantity",
    "over_limit",
]
BAD_KINDS: tuple[StormKind, ...] = (
    "not_addressed",
    "unknown_variant",
    "ambiguous_variant",
    "bad_quantity",
    "over_limit",
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class StormSpec:
    """What to generate. Rates are fractions; `posts` counts every line, redeliveries included."""

    posts: int = 1_300_000
    seed: int = 0
    duration_s: float = 300.0
    # Post times follow an exponential decay over `duration_s`: most fans post early.
    decay_s: float = 120.0
    duplicate_rate: float = 0.05
    repeat_fan_share: float = 0.30
    bad_rate: float = 0.10
    command_rate: float = 0.01
    languages: tuple[tuple[str, float], ...] = (("zh", 0.5), ("en", 0.3), ("ja", 0.2))
    fullwidth_rate: float = 0.15
    weibo_tag_rate: float = 0.5
    # Demand weight per product, in the campaign's product order; None = an uneven default.
    demand: tuple[float, ...] | None = None
    first_post_delay_s: float = 0.05
    author_base: int = 100_000_000


@dataclass(frozen=True, slots=True)
class StormPost:
    """One delivered line, with what the generator meant it to be (`kind`, `sku`, `quantity`)."""

    post_id: str
    author: str
    handle: str
    text: str
    lang: str
    created_at: datetime
    kind: StormKind
    sku: str | None = None
    quantity: int | None = None
    redelivery: bool = False

    def record(self) -> dict[str, Any]:
        """The text-format JSON object of this post."""
        return {
            "post_id": self.post_id,
            "author": self.author,
            "handle": self.handle,
            "text": self.text,
            "lang": self.lang,
            "created_at": _iso(self.created_at),
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_FULLWIDTH = {c: c + 0xFEE0 for c in range(0x21, 0x7F)}
_FULLWIDTH[0x20] = 0x3000


def fullwidth(text: str) -> str:
    """ASCII as typed on a CJK phone keyboard in full-width mode (NFKC folds it back)."""
    return text.translate(_FULLWIDTH)


def _writable(word: str, codec: str) -> bool:
    try:
        word.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _script(word: str) -> str:
    """`latin`, `ja` (has kana), `han`; Han words are told apart by the national charsets."""
    if word.isascii():
        return "latin"
    if any(0x3040 <= ord(char) <= 0x30FF for char in word):
        return "ja"
    return "han"


@dataclass(frozen=True, slots=True)
class _ProductWords:
    sku: str
    groups: tuple[dict[str, tuple[str, ...]], ...]  # per variant group: language -> synonyms


def _product_words(campaign: Campaign) -> list[_ProductWords]:
    products: list[_ProductWords] = []
    for product in campaign.products:
        groups = []
        for words in product.variant.values():
            by_script: dict[str, list[str]] = {"ja": [], "han": [], "latin": []}
            for word in words:
                by_script[_script(word)].append(word)
            latin = by_script["latin"] or list(words)
            # 黑 is Chinese (GB 2312), 黒 Japanese (Shift JIS); 白 is both.
            chinese = [w for w in by_script["han"] if _writable(w, "gb2312")]
            japanese = by_script["ja"] + [w for w in by_script["han"] if _writable(w, "shift_jis")]
            groups.append(
                {
                    "en": tuple(latin),
                    "zh": tuple(chinese or latin),
                    "ja": tuple(japanese or latin),
                }
            )
        products.append(_ProductWords(product.sku, tuple(groups)))
    return products


def default_demand(count: int) -> tuple[float, ...]:
    """Uneven demand: Zipf weights over a fixed rotation of the products (the third is hottest)."""
    weights = [1.0 / (((i + 2) % count) + 1) for i in range(count)]
    total = sum(weights)
    return tuple(w / total for w in weights)


_ORDER_WORDS = {
    "en": ("buy", "order", "reserve"),
    "zh": ("抢购", "预约", "购买"),
    "ja": ("予約", "注文"),
}
_EN_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CJK_NUMBERS = "零一两三四五六七八九十"
_COMMAND_WORDS = {
    "status": {"en": "status", "zh": "状态", "ja": "状況"},
    "balance": {"en": "balance", "zh": "余额", "ja": "残高"},
    "help": {"en": "help", "zh": "帮助", "ja": "ヘルプ"},
}
_NOISE = (
    "!!!",
    "🔥🔥🔥",
    "hello?",
    "求求了",
    "お願いします",
    "please please please",
    "",
)


class _Texts:
    """Builds post texts for one campaign and bot account."""

    def __init__(self, campaign: Campaign, handle: str, spec: StormSpec, rng: random.Random):
        self.rng = rng
        self.spec = spec
        self.tag = campaign.hashtag
        self.mention = "@" + handle
        self.limit = campaign.per_buyer_limit
        self.products = _product_words(campaign)

    def _tag(self, lang: str) -> str:
        if lang == "zh" and self.rng.random() < self.spec.weibo_tag_rate:
            return f"#{self.tag}#"
        return "#" + self.tag

    def _variant(self, product: _ProductWords, lang: str) -> str:
        choice = self.rng.choice
        words = [choice(group[lang]) for group in product.groups]
        # Latin words keep a space around them (the parser matches them as whole words);
        # CJK words often run together.
        joined = ""
        for word in words:
            if joined and (word.isascii() or joined[-1].isascii() or self.rng.random() < 0.5):
                joined += " "
            joined += word
        return joined

    def _quantity(self, quantity: int, lang: str) -> str:
        rng = self.rng
        if quantity == 1 and rng.random() < 0.8:
            return ""
        if lang == "en":
            forms = [f"x{quantity}", f"{quantity} pcs", f"×{quantity}"]
            if 0 < quantity < len(_EN_NUMBERS):
                forms.append(_EN_NUMBERS[quantity])
            return rng.choice(forms)
        counter = "台" if lang == "zh" or rng.random() < 0.5 else "個"
        if lang == "zh" and quantity < len(_CJK_NUMBERS) and rng.random() < 0.5:
            return _CJK_NUMBERS[quantity] + counter
        return f"{quantity}{counter}"

    def _compose(
        self, lang: str, body: str, *, tag: str | None = None, mention: bool = True
    ) -> str:
        rng = self.rng
        tag = self._tag(lang) if tag is None else tag
        head = [part for part in (self.mention if mention else "", tag) if part]
        if rng.random() < 0.5:
            head.reverse()
        text = " ".join(head)
        text = f"{text} {body}" if rng.random() < 0.7 else f"{body} {text}"
        if lang != "en" and rng.random() < self.spec.fullwidth_rate:
            text = fullwidth(text)
        return text.strip()

    def order(self, lang: str, product: _ProductWords, quantity: int) -> str:
        parts = [self._variant(product, lang), self._quantity(quantity, lang)]
        if self.rng.random() < 0.4:
            parts.insert(0, self.rng.choice(_ORDER_WORDS[lang]))
        return self._compose(lang, " ".join(p for p in parts if p))

    def command(self, lang: str, kind: str) -> str:
        return self._compose(lang, _COMMAND_WORDS[kind][lang])

    def bad(self, lang: str, kind: StormKind, product: _ProductWords) -> str:
        rng = self.rng
        variant = self._variant(product, lang)
        if kind == "not_addressed":
            how = rng.randrange(4)
            if how == 0:
                return self._compose(lang, variant, tag="")  # mention, no hashtag
            if how == 1:
                return self._compose(lang, variant, mention=False)  # hashtag, no mention
            if how == 2:
                return self._compose(lang, variant, tag=f"#{self.tag}S")  # another campaign
            return self._compose(lang, variant, tag=f"#{self.tag}0")
        if kind == "unknown_variant":
            return self._compose(lang, rng.choice(_NOISE))
        if kind == "ambiguous_variant":
            other = rng.choice([p for p in self.products if p is not product] or [product])
            return self._compose(lang, f"{variant} {self._variant(other, lang)}")
        if kind == "bad_quantity":
            bad = rng.choice(("x0", "0台", "-1", "x1.5", "0 pcs"))
            return self._compose(lang, f"{variant} {bad}")
        # over_limit
        quantity = self.limit + 1 + rng.randrange(3)
        return self._compose(lang, f"{variant} {self._quantity(quantity, lang) or f'x{quantity}'}")


def _weighted(rng: random.Random, cumulative: Sequence[float]) -> int:
    point = rng.random() * cumulative[-1]
    for index, edge in enumerate(cumulative):
        if point < edge:
            return index
    return len(cumulative) - 1


# (due line, sequence, redelivered post or None, fan, language); the sequence breaks ties.
_Pending = tuple[int, int, StormPost | None, int, str]


def storm(
    brand: Brand, spec: StormSpec | None = None, *, campaign_id: str | None = None
) -> Iterator[StormPost]:
    """The storm for `brand`'s campaign, addressed to its Mastodon (else X) bot account."""
    spec = spec or StormSpec()
    campaign = brand.campaign(campaign_id)
    account = brand.accounts.mastodon or brand.accounts.x
    handle = account.username if account is not None else brand.brand.id
    rng = random.Random(spec.seed)
    texts = _Texts(campaign, handle, spec, rng)
    products = texts.products
    demand = spec.demand or default_demand(len(products))
    sku_edges = list(_cumulative(demand))
    lang_names = [name for name, _ in spec.languages]
    lang_edges = list(_cumulative([weight for _, weight in spec.languages]))
    opens_ms = int((campaign.opens_at - _EPOCH) / timedelta(milliseconds=1))
    start_ms = opens_ms + int(spec.first_post_delay_s * 1000)
    span_ms = spec.duration_s * 1000
    decay = spec.decay_s * 1000
    tail = 1.0 - math.exp(-span_ms / decay)
    total = spec.posts
    # A redelivered post reappears shortly after; a repeating fan posts again within seconds.
    redeliver_gap = max(2, total // 400)
    repeat_gap = max(2, total // 50)
    duplicate_p = spec.duplicate_rate / (1.0 - spec.duplicate_rate)
    pending: list[_Pending] = []
    seq = 0
    fans = 0
    last_ms = -1
    in_ms = 0

    for line in range(total):
        remaining = total - line
        if pending and (pending[0][0] <= line or remaining <= len(pending)):
            _, _, again, fan, lang = heapq.heappop(pending)
            if again is not None:
                yield again
                continue
        else:
            fan = fans
            fans += 1
            lang = lang_names[_weighted(rng, lang_edges)]
            if rng.random() < spec.repeat_fan_share:
                for _ in range(1 + (rng.random() < 0.5)):
                    seq += 1
                    due = line + 1 + rng.randrange(repeat_gap)
                    heapq.heappush(pending, (due, seq, None, fan, lang))

        # Post time: the inverse of the decaying arrival curve at this line's share of the storm.
        share = line / total
        moment = start_ms + int(-decay * math.log(1.0 - share * tail))
        if moment == last_ms:
            in_ms += 1
        else:
            last_ms, in_ms = moment, 0
        post_id = str((moment << 16) | (in_ms & 0xFFFF))
        product = products[_weighted(rng, sku_edges)]
        roll = rng.random()
        quantity: int | None = None
        sku: str | None = None
        kind: StormKind
        if roll < spec.bad_rate:
            kind = BAD_KINDS[rng.randrange(len(BAD_KINDS))]
            text = texts.bad(lang, kind, product)
        elif roll < spec.bad_rate + spec.command_rate:
            kind = rng.choice(("status", "balance", "help"))
            text = texts.command(lang, kind)
        else:
            kind = "order"
            sku = product.sku
            quantity = 1 if rng.random() < 0.8 else min(2, campaign.per_buyer_limit)
            text = texts.order(lang, product, quantity)
        author = spec.author_base + fan
        post = StormPost(
            post_id=post_id,
            author=str(author),
            handle=f"fan{author}",
            text=text,
            lang=lang,
            created_at=_EPOCH + timedelta(milliseconds=moment),
            kind=kind,
            sku=sku,
            quantity=quantity,
        )
        if rng.random() < duplicate_p:
            seq += 1
            again = replace(post, redelivery=True)
            heapq.heappush(pending, (line + 1 + rng.randrange(redeliver_gap), seq, again, 0, ""))
        yield post


def _cumulative(weights: Sequence[float]) -> Iterator[float]:
    running = 0.0
    for weight in weights:
        running += weight
        yield running


def write_jsonl(posts: Iterator[StormPost], path: Path) -> int:
    """Write posts as JSON lines (text format); returns how many were written."""
    count = 0
    with path.open("wb") as out:
        buffer: list[bytes] = []
        for post in posts:
            buffer.append(orjson.dumps(post.record()))
            count += 1
            if len(buffer) >= 10_000:
                out.write(b"\n".join(buffer) + b"\n")
                buffer.clear()
        if buffer:
            out.write(b"\n".join(buffer) + b"\n")
    return count


def scaled_brand(brand: Brand, stock: int, *, campaign_id: str | None = None) -> Brand:
    """`brand` with its campaign's stock scaled to `stock` units in total, kept in proportion.

    Rounding uses largest remainder, so the SKUs add up to exactly `stock`.
    """
    campaign = brand.campaign(campaign_id)
    base = campaign.total_stock or len(campaign.products)
    shares = [(p.stock if campaign.total_stock else 1) * stock / base for p in campaign.products]
    units = [int(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: shares[i] - units[i], reverse=True)
    for i in order[: stock - sum(units)]:
        units[i] += 1
    products = [
        p.model_copy(update={"stock": u}) for p, u in zip(campaign.products, units, strict=True)
    ]
    new_campaign = campaign.model_copy(update={"products": products})
    campaigns = [new_campaign if c.id == campaign.id else c for c in brand.campaigns]
    return brand.model_copy(update={"campaigns": campaigns})
