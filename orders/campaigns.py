"""Campaigns and products from brand files into the database, and the rules the engine reads.

`load_campaigns` is idempotent: running it again with the same files changes nothing, and a
changed file updates names, prices, windows and limits. Stock may be raised or lowered, but never
below what is already allocated (that would be overselling after the fact), and a campaign id
stays with the brand that first used it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from config.brand import Brand
from orders.tables import campaigns, products


class CampaignLoadError(ValueError):
    """A brand file's campaigns cannot go into this database as they are; nothing was changed."""


class StockBelowAllocatedError(CampaignLoadError):
    """A brand file lowers a SKU's stock below the units already allocated."""


class CampaignOwnedError(CampaignLoadError):
    """A brand file names a campaign id that another brand's campaign already has.

    Campaign ids are the key of everything sold (reservations, prices, stock), so a second
    brand reusing one would take over the first brand's campaign and its buyers."""


@dataclass(frozen=True, slots=True)
class CampaignRules:
    """The rules of one campaign as the engine applies them."""

    id: str
    currency: str
    opens_at: datetime
    closes_at: datetime
    per_buyer_limit: int
    hold: timedelta
    reminder: timedelta
    confirmation_step: bool
    cancel_until: datetime | None
    prices: dict[str, int]

    def window_reason(self, at: datetime) -> str | None:
        """Why an order posted at `at` falls outside the window, or None when it is inside."""
        if at < self.opens_at:
            return "campaign_not_open"
        if at >= self.closes_at:
            return "campaign_closed"
        return None

    def may_refund(self, at: datetime) -> bool:
        """Whether a confirmed order may still be cancelled for a refund at `at`."""
        return self.cancel_until is None or at <= self.cancel_until


def load_campaigns(
    session: Session, brands: Iterable[Brand], *, now: datetime | None = None
) -> None:
    """Insert or update every campaign and product of `brands` (flush only, no commit)."""
    at = now or datetime.now(UTC)
    for brand in brands:
        for campaign in brand.campaigns:
            values = {
                "brand_id": brand.brand.id,
                "name": campaign.name,
                "currency": campaign.currency,
                "opens_at": campaign.opens_at,
                "closes_at": campaign.closes_at,
                "per_buyer_limit": campaign.per_buyer_limit,
                "hold_seconds": campaign.hold_minutes * 60.0,
                "reminder_seconds": campaign.reminder_minutes * 60.0,
                "confirmation_step": campaign.confirmation_step,
                "cancel_until": campaign.cancel_until,
                "language": campaign.language,
                "updated_at": at,
            }
            exists = session.execute(
                select(campaigns.c.brand_id).where(campaigns.c.id == campaign.id)
            ).first()
            if exists and exists.brand_id != brand.brand.id:
                raise CampaignOwnedError(
                    f"campaign {campaign.id!r} belongs to brand {exists.brand_id!r}; brand "
                    f"{brand.brand.id!r} must give its campaign another id"
                )
            if exists:
                session.execute(
                    campaigns.update().where(campaigns.c.id == campaign.id).values(**values)
                )
            else:
                session.execute(campaigns.insert().values(id=campaign.id, **values))
            current = {
                row.sku: row
                for row in session.execute(
                    select(products.c.sku, products.c.allocated)
                    .where(products.c.campaign_id == campaign.id)
                    .with_for_update()
                )
            }
            for product in campaign.products:
                row = current.get(product.sku)
                if row is None:
                    session.execute(
                        products.insert().values(
                            campaign_id=campaign.id,
                            sku=product.sku,
                            name=product.name,
                            price=product.price,
                            stock=product.stock,
                            allocated=0,
                            released=0,
                            waitlisted=0,
                        )
                    )
                    continue
                if product.stock < row.allocated:
                    raise StockBelowAllocatedError(
                        f"{campaign.id}/{product.sku}: stock {product.stock} is below the "
                        f"{row.allocated} units already allocated"
                    )
                session.execute(
                    products.update()
                    .where(products.c.campaign_id == campaign.id, products.c.sku == product.sku)
                    .values(name=product.name, price=product.price, stock=product.stock)
                )
    session.flush()


# `read_rules`'s queries, built once: every batch of the engine reads the rules of its campaigns.
_PRICES = select(products.c.campaign_id, products.c.sku, products.c.price).where(
    products.c.campaign_id.in_(bindparam("ids", expanding=True))
)
_CAMPAIGNS = select(campaigns).where(campaigns.c.id.in_(bindparam("ids", expanding=True)))


def read_rules(session: Session, campaign_ids: Iterable[str]) -> dict[str, CampaignRules]:
    """The rules of these campaigns (unknown ids are absent), in two queries."""
    ids = sorted(set(campaign_ids))
    if not ids:
        return {}
    prices: dict[str, dict[str, int]] = {cid: {} for cid in ids}
    for row in session.execute(_PRICES, {"ids": ids}):
        prices[row.campaign_id][row.sku] = row.price
    rules: dict[str, CampaignRules] = {}
    for row in session.execute(_CAMPAIGNS, {"ids": ids}):
        rules[row.id] = CampaignRules(
            id=row.id,
            currency=row.currency,
            opens_at=row.opens_at,
            closes_at=row.closes_at,
            per_buyer_limit=row.per_buyer_limit,
            hold=timedelta(seconds=row.hold_seconds),
            reminder=timedelta(seconds=row.reminder_seconds),
            confirmation_step=row.confirmation_step,
            cancel_until=row.cancel_until,
            prices=prices[row.id],
        )
    return rules
