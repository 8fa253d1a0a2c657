"""Reply texts: per-language templates (en, ja, zh), filled from an engine `Outcome`.

The language is the post's when a template set exists for it, else the brand's. Each kind has
several variants; `render` takes the hashes of texts the buyer already got and returns the first
variant that is new to them (X refuses a duplicate reply), adding a short reference to the post
if every variant was used already.
"""

from __future__ import annotations

import contextlib
import hashlib
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from config.brand import Brand, Campaign
from orders.outcomes import Outcome

TEMPLATES = Path(__file__).parent / "templates" / "replies.toml"
LANGUAGES = ("en", "ja", "zh")


@dataclass(frozen=True, slots=True)
class Links:
    """The buyer's links for one campaign: bearer secrets, so a reply that carries either goes
    only by direct message (`uses_personal_link`)."""

    status_url: str
    topup_url: str


@lru_cache(maxsize=4)
def load_templates(path: Path = TEMPLATES) -> Mapping[str, Mapping[str, object]]:
    with path.open("rb") as handle:
        return tomllib.load(handle)


def language_for(post_lang: str | None, brand: Brand) -> str:
    """`ja-JP` -> `ja`; anything without templates falls back to the brand's language."""
    if post_lang:
        base = post_lang.replace("_", "-").split("-")[0].lower()
        if base in LANGUAGES:
            return base
    return brand.brand.language


def template_key(outcome: Outcome) -> str:
    if outcome.kind == "promoted" and outcome.state == "awaiting_payment":
        return "promoted_unpaid"
    return outcome.kind


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def money(amount: int | None, campaign: Campaign | None) -> str:
    """Minor units as the buyer reads them, in replies and on the web pages alike, without
    floats: 199900 -> "CNY 1,999.00"."""
    if amount is None:
        return "—"
    currency = campaign.currency if campaign else ""
    digits = campaign.minor_digits if campaign else 2
    sign = "-" if amount < 0 else ""
    whole, part = divmod(abs(amount), 10**digits)
    value = f"{whole:,}" + (f".{part:0{digits}d}" if digits else "")
    return f"{sign}{currency} {value}".strip()


def _when(at: datetime | None, campaign: Campaign | None) -> str:
    if at is None:
        return "—"
    zone = ZoneInfo(campaign.timezone) if campaign else None
    local = at.astimezone(zone) if zone else at
    return local.strftime("%H:%M %Z").strip()


def _campaign(brand: Brand, campaign_id: str) -> Campaign | None:
    try:
        return brand.campaign(campaign_id)
    except KeyError:
        return None


def render(
    outcome: Outcome,
    *,
    brand: Brand,
    links: Links,
    used: Collection[str],
    lang: str | None = None,
    templates: Mapping[str, Mapping[str, object]] | None = None,
) -> tuple[str, str]:
    """(text, language) for `outcome`, never one whose hash is in `used`."""
    templates = templates or load_templates()
    language = lang or language_for(outcome.lang, brand)
    table = templates.get(language) or templates[brand.brand.language]
    variants = table.get(template_key(outcome))
    if not isinstance(variants, list) or not variants:
        raise KeyError(f"no {template_key(outcome)!r} template for {language!r}")
    campaign = _campaign(brand, outcome.campaign_id)
    reasons = table.get("reasons")
    reasons = reasons if isinstance(reasons, Mapping) else {}
    product = outcome.sku or ""
    if campaign and outcome.sku:
        with contextlib.suppress(KeyError):
            product = campaign.product(outcome.sku).name
    values = {
        "product": product,
        "quantity": outcome.quantity if outcome.quantity is not None else 1,
        "amount_due": money(outcome.amount_due, campaign),
        "balance": money(outcome.balance, campaign),
        "amount": money(outcome.amount, campaign),
        "position": outcome.queue_position if outcome.queue_position is not None else "?",
        "expires": _when(outcome.hold_expires_at, campaign),
        "reason": reasons.get(outcome.reason or "", reasons.get("default", outcome.reason or "")),
        "campaign": campaign.name if campaign else outcome.campaign_id,
        "hashtag": campaign.hashtag if campaign else "",
        "status_url": links.status_url,
        "topup_url": links.topup_url,
    }
    texts = [str(v).format(**values) for v in variants]
    for text in texts:
        if text_hash(text) not in used:
            return text, language
    return _distinct(texts[0], outcome.post_id, lambda t: text_hash(t) not in used), language


def _distinct(text: str, post_id: str, fresh: Callable[[str], bool]) -> str:
    ref = post_id[-6:]
    candidate = f"{text} (#{ref})"
    counter = 2
    while not fresh(candidate):
        candidate = f"{text} (#{ref}-{counter})"
        counter += 1
    return candidate


PERSONAL_PLACEHOLDERS = ("{status_url}", "{topup_url}")


def uses_personal_link(outcome: Outcome) -> bool:
    """Whether the reply, in any language, carries one of the buyer's own links (status page or
    top-up): those are bearer tokens, so such a reply must go by direct message."""
    return _personal_template(template_key(outcome))


@lru_cache(maxsize=64)
def _personal_template(key: str) -> bool:
    for table in load_templates().values():
        variants = table.get(key) if isinstance(table, Mapping) else None
        if isinstance(variants, list) and any(
            p in str(v) for v in variants for p in PERSONAL_PLACEHOLDERS
        ):
            return True
    return False
