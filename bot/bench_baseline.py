"""The naive implementation the storm benchmark is measured against.

One transaction per post through the ORM, the way a first version of a flash-sale bot is
usually written: look the post up to drop a redelivery, sum the buyer's reservations for the
per-buyer limit, `SELECT ... FOR UPDATE` the SKU's stock row, take what is left, insert the
reservation, commit. (SQLite has no FOR UPDATE; there the same code runs under its one-writer
lock.) It allocates exactly like the engine (post-time order, partial fills, waitlist for the
rest) but does less: no wallet holds and no outbox, so the ratio it yields flatters the baseline.

Its tables live on a MetaData of their own that no migration knows; the benchmark creates them
next to flashtag's tables and drops them afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import (
    ForeignKey,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from config.brand import Campaign
from orders.commands import Command


class Base(DeclarativeBase):
    metadata = MetaData()


class BaselineStock(Base):
    __tablename__ = "bench_baseline_stock"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    stock: Mapped[int] = mapped_column(Integer)
    allocated: Mapped[int] = mapped_column(Integer, default=0)


class BaselineReservation(Base):
    __tablename__ = "bench_baseline_reservation"
    __table_args__ = (UniqueConstraint("platform", "post_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(16))
    post_id: Mapped[str] = mapped_column(String(64))
    buyer: Mapped[str] = mapped_column(String(128), index=True)
    sku: Mapped[str | None] = mapped_column(ForeignKey("bench_baseline_stock.sku"), nullable=True)
    quantity: Mapped[int] = mapped_column(Integer, default=0)
    allocated: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(32))


@dataclass
class BaselineResult:
    posts: int = 0
    elapsed: float = 0.0
    duplicates: int = 0
    states: dict[str, int] = field(default_factory=dict)
    allocated: dict[str, int] = field(default_factory=dict)
    by_post: dict[str, int] = field(default_factory=dict)

    @property
    def posts_per_s(self) -> float:
        return self.posts / self.elapsed if self.elapsed else 0.0


def create_tables(engine: Engine, campaign: Campaign) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        session.add_all(BaselineStock(sku=p.sku, stock=p.stock) for p in campaign.products)


def drop_tables(engine: Engine) -> None:
    Base.metadata.drop_all(engine)


def _apply_one(session: Session, command: Command, limit: int) -> str:
    seen = session.scalar(
        select(BaselineReservation.id).where(
            BaselineReservation.platform == command.platform,
            BaselineReservation.post_id == command.post_id,
        )
    )
    if seen is not None:
        return "duplicate"
    decision = command.decision
    row = BaselineReservation(
        platform=command.platform, post_id=command.post_id, buyer=command.buyer, state="ignored"
    )
    if decision.decision == "reject":
        row.state = "rejected"
    elif decision.decision == "order" and decision.sku is not None:
        quantity = decision.quantity or 1
        row.sku, row.quantity = decision.sku, quantity
        held = session.scalar(
            select(func.coalesce(func.sum(BaselineReservation.quantity), 0)).where(
                BaselineReservation.buyer == command.buyer,
                BaselineReservation.state.in_(("awaiting_payment", "waitlisted")),
            )
        )
        if int(held or 0) + quantity > limit:
            row.state = "rejected"
        else:
            stock = session.scalars(
                select(BaselineStock).where(BaselineStock.sku == decision.sku).with_for_update()
            ).one()
            take = min(quantity, stock.stock - stock.allocated)
            stock.allocated += take
            row.allocated = take
            row.state = "awaiting_payment" if take else "waitlisted"
    session.add(row)
    return row.state


def run(
    sessions: sessionmaker[Session],
    commands: Iterable[Command],
    campaign: Campaign,
    *,
    by_post: bool = False,
) -> BaselineResult:
    """Apply `commands` one transaction each; the allocation is read back at the end.

    With `by_post`, the result also says how many units each order post received.
    """
    result = BaselineResult()
    states: dict[str, int] = {}
    started = time.perf_counter()
    for command in commands:
        with sessions() as session, session.begin():
            state = _apply_one(session, command, campaign.per_buyer_limit)
        result.posts += 1
        states[state] = states.get(state, 0) + 1
    result.elapsed = time.perf_counter() - started
    result.duplicates = states.pop("duplicate", 0)
    result.states = states
    with sessions() as session:
        result.allocated = {
            sku: allocated
            for sku, allocated in session.execute(
                select(BaselineStock.sku, BaselineStock.allocated).order_by(BaselineStock.sku)
            )
        }
        if by_post:
            rows = session.execute(
                select(BaselineReservation.post_id, BaselineReservation.allocated).where(
                    BaselineReservation.allocated > 0
                )
            )
            result.by_post = {post_id: allocated for post_id, allocated in rows}
    return result
