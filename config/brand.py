"""The brand file schema: a brand, its bot accounts, and its campaigns with their products.

A brand file is TOML. Every table rejects unknown keys, so a typo is an error, not a silent
default. Money is in integer minor units of the campaign currency (CNY 1999.00 is 199900).
Secrets never appear here: accounts name the environment variables that hold their tokens.

Numbers are checked as strictly as the processes that use them: counts and money are TOML
integers (not `499.00`, `"100"` or `true`) within the database columns that store them, minutes
are finite, and time zones and cron lines are the ones the clock can build, so a file that passes
`flashtag check-config` cannot crash the worker or the clock later.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

Platform = Literal["mastodon", "x"]
Language = Literal["en", "ja", "zh"]
COMMANDS = ("order", "cancel", "status", "balance", "topup", "help")
Command = Literal["order", "cancel", "status", "balance", "topup", "help"]

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_HASHTAG = re.compile(r"^\w+$")
# ISO 4217 currencies whose minor unit is not 1/100.
_MINOR_DIGITS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "JOD": 3}

# Limits of the columns that store these numbers (orders/tables.py, wallet/stripe_tables.py):
# stock and per-buyer limits are `Integer`, amounts of money `BigInteger` minor units.
MAX_UNITS = 2**31 - 1
MAX_AMOUNT = 2**63 - 1
# Longest hold, reminder or progress interval: a week. Far beyond any flash sale, and far
# below what `timedelta` and the scheduler can add to a date without overflowing.
MAX_MINUTES = 7 * 24 * 60

# TOML integers only: pydantic's lax mode would take 499.0, "100" or true for an int.
Units = Annotated[int, Field(strict=True, ge=0, le=MAX_UNITS)]
PositiveUnits = Annotated[int, Field(strict=True, gt=0, le=MAX_UNITS)]
Amount = Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)]
PositiveAmount = Annotated[int, Field(strict=True, gt=0, le=MAX_AMOUNT)]
# Minutes may be fractional (`0.5`) but never a boolean, a string, inf or nan.
Minutes = Annotated[float, Field(strict=True, ge=0, le=MAX_MINUTES, allow_inf_nan=False)]
PositiveMinutes = Annotated[float, Field(strict=True, gt=0, le=MAX_MINUTES, allow_inf_nan=False)]
WholeMinutes = Annotated[int, Field(strict=True, gt=0, le=MAX_MINUTES)]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must carry a UTC offset, for example 2012-10-30T12:00:00+08:00")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


def normalize_hashtag(tag: str) -> str:
    """Mastodon's HashtagNormalizer: NFKC, case-fold, accents folded, invalid characters dropped.

    `#ＭＩ２`, `#Mi2` and `#mi2` all become `mi2`; `#Über` becomes `uber`.
    """
    text = unicodedata.normalize("NFKC", tag).casefold()
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(c for c in unicodedata.normalize("NFC", folded) if c.isalnum() or c in "_·")


def env_var_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError("must be the NAME of an environment variable (A-Z, 0-9, _), not a secret")
    return value


EnvVarName = Annotated[str, AfterValidator(env_var_name)]


def time_zone_name(value: str) -> str:
    """An IANA zone name that `zoneinfo` can load here, as the clock and status pages will."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {value!r}: use an IANA name such as 'Asia/Shanghai' or 'UTC'"
        ) from None
    return value


_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def crontab_weekdays(expr: str) -> str:
    """A five-field crontab line with numeric weekdays spelled out, for APScheduler 3.

    APScheduler 3 numbers weekdays from Monday = 0, crontab from Sunday = 0 (7 is Sunday too);
    names mean the same in both, so `0 9 * * 1-5` becomes `mon-fri`, "weekdays at nine". A range
    from Sunday cannot be a range of names (Sunday is APScheduler's last day), and a step counts
    from crontab's Sunday, so both are written out as lists of days: `0-6` is every day and
    `*/2` Sunday, Tuesday, Thursday and Saturday, as in crontab. The clock builds its triggers
    with this too, so the check here accepts exactly the lines the clock accepts.
    """
    fields = expr.split()
    if len(fields) != 5:
        return expr
    fields[4] = ",".join(_weekday_part(part) for part in fields[4].split(","))
    return " ".join(fields)


def _weekday_part(part: str) -> str:
    body, slash, step = part.partition("/")
    ends = ["0", "7"] if body == "*" else body.split("-")
    numeric = all(t.isascii() and t.isdigit() and int(t) < 8 for t in ends) and len(ends) <= 2
    if not numeric or (body == "*" and not slash):
        return part  # names, `*`, or something the trigger will refuse as it stands
    first, last = int(ends[0]), int(ends[-1])
    if first > last:
        return part  # a backwards range, which the trigger refuses as crontab does
    if slash and len(ends) == 1:
        last = 7  # `a/s`: from a to the end of the week, as crontab reads it
    if not slash and (first > 0 or first == last):
        return "-".join(_CRON_WEEKDAYS[int(t)] for t in ends)
    if slash and not (step.isascii() and step.isdigit() and int(step) > 0):
        return part
    days = range(first, last + 1, int(step) if slash else 1)
    names = dict.fromkeys(_CRON_WEEKDAYS[day] for day in days)  # 0 and 7 are both Sunday
    return ",".join(names) if names else part


def crontab_line(value: str) -> str:
    """A crontab line the clock can turn into a trigger (`CronTrigger.from_crontab`)."""
    if len(value.split()) != 5:
        raise ValueError("must have five fields: minute hour day month weekday")
    try:
        CronTrigger.from_crontab(crontab_weekdays(value), timezone=UTC)
    except ValueError as exc:
        raise ValueError(f"not a valid crontab line: {exc}") from None
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class MastodonAccount(Strict):
    """The brand's bot account on a Mastodon server."""

    base_url: str = Field(description="The server, e.g. https://mastodon.social")
    username: str = Field(min_length=1, description="The bot's acct on that server, e.g. xiaomi")
    token_env: EnvVarName = Field(description="Env var holding the access token")
    stream: StrictBool = True
    hashtag_stream: StrictBool = False

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class XAccount(Strict):
    """The brand's bot account on X (API v2)."""

    username: str = Field(min_length=1)
    user_id: str | None = Field(
        None, pattern=r"^\d+$", description="Numeric id, looked up if absent"
    )
    bearer_token_env: EnvVarName
    consumer_key_env: EnvVarName | None = None
    consumer_secret_env: EnvVarName | None = None
    access_token_env: EnvVarName | None = None
    access_token_secret_env: EnvVarName | None = None
    filtered_stream: StrictBool = False


class Accounts(Strict):
    mastodon: MastodonAccount | None = None
    x: XAccount | None = None


class Product(Strict):
    """One SKU: its stock, price and the words that pick it out of a post."""

    sku: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    name: str = Field(min_length=1)
    price: Amount = Field(description="Price per unit in minor units of the campaign currency")
    stock: Units = Field(description="Units offered")
    variant: dict[str, list[Annotated[str, Field(min_length=1)]]] = Field(
        default_factory=dict,
        description="Named groups of synonyms; a post picks this SKU when every group matches",
    )

    @field_validator("variant")
    @classmethod
    def _groups_not_empty(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, words in value.items():
            if not words:
                raise ValueError(f"variant group {name!r} has no words")
        return value


class Words(Strict):
    """Extra command words a brand adds, per language, on top of the built-in ones."""

    order: list[str] = Field(default_factory=list)
    cancel: list[str] = Field(default_factory=list)
    status: list[str] = Field(default_factory=list)
    balance: list[str] = Field(default_factory=list)
    topup: list[str] = Field(default_factory=list)
    help: list[str] = Field(default_factory=list)


class Announcements(Strict):
    """Public posts the clock makes, with `{placeholders}` filled in."""

    open: dict[Language, str] = Field(default_factory=dict)
    close: dict[Language, str] = Field(default_factory=dict)
    progress: dict[Language, str] = Field(default_factory=dict)
    progress_every_minutes: WholeMinutes = 10


class CronJob(Strict):
    """A brand-defined scheduled job: a built-in action on a cron schedule."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    cron: Annotated[str, AfterValidator(crontab_line)] = Field(
        description="Five-field crontab expression, in the campaign time zone"
    )
    action: Literal["progress_post", "expire_holds", "reconcile_payments", "announce"]
    message: dict[Language, str] = Field(default_factory=dict)


class Campaign(Strict):
    """One sale: a hashtag, a window, products and the rules buyers play by."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str = Field(min_length=1)
    hashtag: str = Field(
        min_length=1, description="One leading '#' is dropped; matched after normalisation"
    )
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    opens_at: AwareDatetime
    closes_at: AwareDatetime
    timezone: Annotated[str, AfterValidator(time_zone_name)] = "UTC"
    require_mention: StrictBool = True
    per_buyer_limit: PositiveUnits = 1
    hold_minutes: PositiveMinutes = Field(30, description="How long an unpaid reservation is held")
    reminder_minutes: Minutes = Field(5, description="Remind buyers this long before a hold lapses")
    confirmation_step: StrictBool = False
    cancel_until: AwareDatetime | None = Field(
        None, description="Confirmed orders may be cancelled for a refund until then"
    )
    topup_min: PositiveAmount = Field(100, description="Smallest top-up, minor units")
    topup_max: PositiveAmount = Field(1_000_000, description="Largest top-up, minor units")
    language: Language = "en"
    products: list[Product] = Field(min_length=1)
    words: dict[Language, Words] = Field(default_factory=dict)
    announcements: Announcements = Field(default_factory=Announcements)
    jobs: list[CronJob] = Field(default_factory=list)

    @field_validator("hashtag")
    @classmethod
    def _hashtag(cls, value: str) -> str:
        # Users copy the tag as they post it: "#MI2" and "MI2" name the same campaign.
        value = value.removeprefix("#")
        if not _HASHTAG.match(value):
            raise ValueError(
                "must be letters, digits or underscores, after at most one leading '#'"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Campaign:
        if self.closes_at <= self.opens_at:
            raise ValueError("closes_at must be after opens_at")
        if self.topup_max < self.topup_min:
            raise ValueError("topup_max must not be below topup_min")
        seen: set[str] = set()
        variants: dict[frozenset[frozenset[str]], str] = {}
        for index, product in enumerate(self.products):
            if product.sku in seen:
                raise DuplicateError(("products", index, "sku"), f"duplicate SKU {product.sku!r}")
            seen.add(product.sku)
            if not product.variant:
                continue
            words = frozenset(
                frozenset(w.casefold() for w in group) for group in product.variant.values()
            )
            if words in variants:
                raise DuplicateError(
                    ("products", index, "variant"),
                    f"the same variant words as {variants[words]!r}: no post could pick one",
                )
            variants[words] = product.sku
        self._amounts_fit()
        ids = [job.id for job in self.jobs]
        for index, job_id in enumerate(ids):
            if job_id in ids[:index]:
                raise DuplicateError(("jobs", index, "id"), f"duplicate job id {job_id!r}")
        return self

    def _amounts_fit(self) -> None:
        """A buyer's whole allowance at one price must fit the `BigInteger` amount columns."""
        for index, product in enumerate(self.products):
            if product.price * self.per_buyer_limit > MAX_AMOUNT:
                raise FieldRuleError(
                    ("products", index, "price"),
                    f"price {product.price} times per_buyer_limit {self.per_buyer_limit} is "
                    f"above the largest amount the database can store ({MAX_AMOUNT})",
                )

    @property
    def tag(self) -> str:
        """The hashtag as Mastodon normalises it, the form every comparison uses."""
        return normalize_hashtag(self.hashtag)

    @property
    def minor_digits(self) -> int:
        return _MINOR_DIGITS.get(self.currency, 2)

    @property
    def total_stock(self) -> int:
        return sum(p.stock for p in self.products)

    def product(self, sku: str) -> Product:
        for product in self.products:
            if product.sku == sku:
                return product
        raise KeyError(sku)


class BrandInfo(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str = Field(min_length=1)
    language: Language = "en"


class Brand(Strict):
    """A whole brand file."""

    brand: BrandInfo
    accounts: Accounts = Field(default_factory=Accounts)
    campaigns: list[Campaign] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_campaigns(self) -> Brand:
        ids = [c.id for c in self.campaigns]
        for index, campaign_id in enumerate(ids):
            if campaign_id in ids[:index]:
                raise DuplicateError(
                    ("campaigns", index, "id"), f"duplicate campaign id {campaign_id!r}"
                )
        return self

    def campaign(self, campaign_id: str | None = None) -> Campaign:
        """The campaign with this id, or the only/first one when no id is given."""
        if campaign_id is None:
            return self.campaigns[0]
        for campaign in self.campaigns:
            if campaign.id == campaign_id:
                return campaign
        raise KeyError(campaign_id)


class FieldRuleError(ValueError):
    """A rule across fields, carrying the relative path of the offending field for the report."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class DuplicateError(FieldRuleError):
    """A duplicate id or SKU, or products a post cannot tell apart."""
