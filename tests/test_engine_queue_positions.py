"""A fan's waitlist position is the same on the status page, in the bot's reply, in
`flashtag export` and in the order promotion actually follows, even for a post delivered late."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from stripe_fake import Shop
from typer.testing import CliRunner

from bot.cli import app
from orders.commands import Command, Decision
from orders.engine import apply
from orders.outcomes import Outcome
from orders.queue import positions

runner = CliRunner()


@pytest.fixture
def shop(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    s = Shop(db_url, tmp_path, monkeypatch)
    yield s
    s.close()


class Fans:
    """Posts by fans of the web shop (2 phones in stock, nobody has credit), each `ago` seconds
    before the shop's clock, delivered in the batches the test chooses."""

    def __init__(self, shop: Shop, db_url: str) -> None:
        self.shop = shop
        self.db_url = db_url
        self.posts = 0

    def post(self, fan: str, decision: str, *, ago: float = 0, quantity: int = 1) -> Command:
        self.posts += 1
        return Command(
            platform="mastodon",
            post_id=str(500 + self.posts),
            buyer=f"mastodon:{fan}",
            handle=f"@{fan}",
            posted_at=self.shop.clock.now - timedelta(seconds=ago),
            decision=Decision(
                decision,  # type: ignore[arg-type]
                sku="PHONE" if decision != "status" else None,
                quantity=quantity if decision == "order" else None,
            ),
            campaign_id="drop",
        )

    def deliver(self, *cmds: Command) -> list[Outcome]:
        with self.shop.factory.begin() as session:
            return apply(session, list(cmds), now=self.shop.clock.now)

    def page(self, fan: str) -> int:
        """The position the fan's status page shows (their one waitlisted line)."""
        text = self.shop.http.get(f"/me/{self.shop.token(f'mastodon:{fan}', purpose='me')}").text
        [shown] = [line for line in text.split("<tr>") if "On the waitlist" in line]
        return int(shown.split("position <b>")[1].split("</b>")[0])

    def reply(self, fan: str) -> int | None:
        """The position the bot's answer to a `status` post says (None when it speaks of an
        unpaid hold of the fan's instead, which comes first)."""
        [answer] = self.deliver(self.post(fan, "status"))
        assert answer.kind == "status", answer
        if answer.state == "awaiting_payment":
            assert answer.queue_position is None
            return None
        assert answer.state == "waitlisted", answer
        return answer.queue_position

    def export(self) -> dict[str, int]:
        """Waiting fan -> queue position, from `flashtag export`."""
        result = runner.invoke(app, ["export", "--campaign", "drop", "--db", self.db_url])
        assert result.exit_code == 0, result.output
        lines: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
        return {
            line["buyer"].split(":")[1]: line["queue_position"]
            for line in lines
            if line["state"] == "waitlisted"
        }

    def everywhere(self, *fans: str) -> dict[str, tuple[int | None, ...]]:
        exported = self.export()
        return {fan: (self.page(fan), self.reply(fan), exported[fan]) for fan in fans}


def test_a_late_delivered_older_post_waits_behind_those_already_queued(
    shop: Shop, db_url: str
) -> None:
    fans = Fans(shop, db_url)
    # The live stream: two fans take both phones, carol (two units) and dave queue behind.
    first = fans.deliver(
        fans.post("alice", "order", ago=60),
        fans.post("bob", "order", ago=50),
        fans.post("carol", "order", ago=40, quantity=2),
        fans.post("dave", "order", ago=30),
    )
    assert [o.state for o in first] == ["awaiting_payment"] * 2 + ["waitlisted"] * 2
    assert [o.queue_position for o in first[2:]] == [1, 3]
    # Polling catches up later with lena's post, made before carol's and dave's: she joins the
    # queue now, behind them. Then erin queues behind her and changes her mind.
    [late] = fans.deliver(fans.post("lena", "order", ago=45))
    assert (late.state, late.queue_position) == ("waitlisted", 4)
    [erin] = fans.deliver(fans.post("erin", "order", ago=10))
    assert (erin.state, erin.queue_position) == ("waitlisted", 5)
    [gone] = fans.deliver(fans.post("erin", "cancel"))
    assert gone.kind == "cancelled"

    # Page, reply and export tell each fan the same place: units ahead in the queue, plus one.
    assert fans.everywhere("carol", "dave", "lena") == {
        "carol": (1, 1, 1),
        "dave": (3, 3, 3),
        "lena": (4, 4, 4),
    }

    # A freed phone goes to the head of that queue: carol, not lena who posted earlier. The rest
    # of carol's order keeps its place (her reply now speaks of the phone she must pay for).
    promoted = [o for o in fans.deliver(fans.post("alice", "cancel")) if o.kind == "promoted"]
    assert [(o.buyer, o.quantity) for o in promoted] == [("mastodon:carol", 1)]
    assert fans.everywhere("carol", "dave", "lena") == {
        "carol": (1, None, 1),
        "dave": (2, 2, 2),
        "lena": (3, 3, 3),
    }

    promoted = [o for o in fans.deliver(fans.post("bob", "cancel")) if o.kind == "promoted"]
    assert [(o.buyer, o.quantity) for o in promoted] == [("mastodon:carol", 1)]
    assert fans.everywhere("dave", "lena") == {"dave": (1, 1, 1), "lena": (2, 2, 2)}

    # Carol lets both phones go: dave, shown first everywhere, is promoted first, then lena.
    promoted = [o for o in fans.deliver(fans.post("carol", "cancel")) if o.kind == "promoted"]
    assert [o.buyer for o in promoted] == ["mastodon:dave", "mastodon:lena"]
    assert fans.export() == {}


def test_positions_count_units_and_answer_for_waitlisted_reservations_only(
    shop: Shop, db_url: str
) -> None:
    fans = Fans(shop, db_url)
    placed = fans.deliver(
        fans.post("alice", "order", quantity=2),
        fans.post("bob", "order", ago=-1, quantity=3),
        fans.post("carol", "order", ago=-2),
    )
    ids = {o.buyer.split(":")[1]: o.reservation_id for o in placed if o.state == "waitlisted"}
    held = [o.reservation_id for o in placed if o.state == "awaiting_payment"]
    assert set(ids) == {"bob", "carol"}
    with shop.factory() as session:
        found = positions(session, [*ids.values(), *held, 10**9])
    # Alice holds both phones; bob's three units wait, and carol behind all three of them.
    assert found == {ids["bob"]: 1, ids["carol"]: 4}
    with shop.factory() as session:
        assert positions(session, []) == {}
