"""The demo's crowd: fans who post to the brand's bot like a flash-sale crowd, and pay like Stripe.

`plan_crowd` decides, from a seed, what every fan will do and when:

- most order within the first seconds (exponentially distributed post times);
- some write in Japanese or Chinese, some post twice, some posts are malformed;
- some top up before the sale (prepaid credit), many pay after their hold is created, some never
  pay (their holds lapse and the waitlist moves up);
- some cancel by posting `cancel`, some delete their order post.

`Crowd` carries the plan out against a real Mastodon API (the demo's mastodon-mock) over HTTP,
from a few client threads. `DemoStripe` plays Stripe: it posts `checkout.session.completed`
events, signed with the demo's webhook secret exactly as Stripe signs them, to the web process.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx
import stripe

from config.brand import Campaign

log = logging.getLogger(__name__)

ActionKind = Literal["order", "again", "malformed", "cancel", "delete", "prepay"]


@dataclass(frozen=True, slots=True)
class Action:
    at: float  # seconds after the sale opens
    kind: ActionKind
    text: str = ""
    amount: int = 0


@dataclass
class Fan:
    index: int
    username: str
    token: str
    lang: str
    actions: list[Action]
    pays: bool  # pays for a hold once one is created
    pay_delay: float
    deletes: bool = False
    first_status_id: str | None = None
    account_id: str | None = None

    @property
    def buyer(self) -> str:
        assert self.account_id is not None
        return f"mastodon:{self.account_id}"


_COLOURS = {
    "en": {"black": "black", "white": "white"},
    "ja": {"black": "ブラック", "white": "ホワイト"},
    "zh": {"black": "黑色", "white": "白色"},
}
_QUANTITY = {
    "en": ["", "", "", "x2", "2 pcs"],
    "ja": ["", "", "1台", "2台"],
    "zh": ["", "", "一台", "两台"],
}
_ORDER_WORD = {"en": ["", "order", "buy"], "ja": ["", "予約", "注文"], "zh": ["", "购买", "预约"]}
_CANCEL = {"en": "cancel", "ja": "キャンセル", "zh": "取消"}
_MALFORMED = [
    "{m} #{tag} purple one please",  # unknown variant
    "{m} #{tag} 64gb black x0",  # bad quantity
    "{m} #{tag} 64gb black 7",  # over the per-buyer limit
    "{m} #{tag} 64gb",  # ambiguous: black or white
    "#{tag} 64gb black",  # no mention: not addressed
    "{m} loving the new phones!",  # no hashtag: not addressed
]


def _order_text(rng: random.Random, lang: str, mention: str, tag: str) -> str:
    storage = rng.choices(["64gb", "128gb"], weights=[5, 1])[0]
    colour_key = "black" if storage == "128gb" else rng.choices(["black", "white"], [3, 2])[0]
    if lang != "en":
        storage = storage.upper() if rng.random() < 0.5 else storage.replace("gb", "g")
    words = [
        mention,
        f"#{tag}",
        rng.choice(_ORDER_WORD[lang]),
        storage,
        _COLOURS[lang][colour_key],
        rng.choice(_QUANTITY[lang]),
    ]
    return " ".join(w for w in words if w)


def plan_crowd(
    count: int,
    *,
    seed: int,
    campaign: Campaign,
    bot_username: str,
    tokens: list[str] | None = None,
    spread_seconds: float = 4.0,
) -> list[Fan]:
    """What each of `count` fans will do (reproducible from `seed`)."""
    rng = random.Random(seed)
    later = spread_seconds / 4.0  # second thoughts come later in a slower crowd
    mention = f"@{bot_username}"
    tag = campaign.hashtag
    fans: list[Fan] = []
    unit_price = max(p.price for p in campaign.products)
    for index in range(count):
        lang = rng.choices(["en", "ja", "zh"], weights=[70, 15, 15])[0]
        first = rng.expovariate(1.0 / spread_seconds)
        actions: list[Action] = []
        roll = rng.random()
        if roll < 0.06:
            actions.append(
                Action(first, "malformed", rng.choice(_MALFORMED).format(m=mention, tag=tag))
            )
            if rng.random() < 0.5:  # tries again, properly
                actions.append(
                    Action(
                        first + later * rng.uniform(2, 6),
                        "order",
                        _order_text(rng, lang, mention, tag),
                    )
                )
        else:
            actions.append(Action(first, "order", _order_text(rng, lang, mention, tag)))
        if rng.random() < 0.08:
            actions.append(
                Action(
                    first + later * rng.uniform(0.5, 8),
                    "again",
                    _order_text(rng, lang, mention, tag),
                )
            )
        prepays = rng.random() < 0.15
        if prepays:
            amount = unit_price * 2
            actions.append(Action(-1.0 - rng.random(), "prepay", amount=amount))
        cancel_roll = rng.random()
        deletes = False
        if cancel_roll < 0.03:
            actions.append(
                Action(
                    first + later * rng.uniform(3, 10),
                    "cancel",
                    f"{mention} #{tag} {_CANCEL[lang]}",
                )
            )
        elif cancel_roll < 0.06:
            deletes = True
            actions.append(Action(first + later * rng.uniform(3, 10), "delete"))
        fans.append(
            Fan(
                index=index,
                username=f"fan{index:05d}",
                token=(tokens[index] if tokens else f"demo-fan-token-{seed}-{index}"),
                lang=lang,
                actions=sorted(actions, key=lambda a: a.at),
                pays=rng.random() < 0.75,
                pay_delay=rng.uniform(1.0, 6.0),
                deletes=deletes,
            )
        )
    return fans


class DemoStripe:
    """Stripe's side of a top-up: a paid Checkout Session, delivered as a signed webhook."""

    def __init__(self, web_url: str, secret: str, *, currency: str) -> None:
        self._url = web_url.rstrip("/") + "/stripe/webhook"
        self._secret = secret
        self._currency = currency.lower()
        self._counter = 0
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.credited = 0

    def pay(self, client: httpx.Client, *, buyer: str, campaign_id: str, amount: int) -> bool:
        with self._lock:
            self._counter += 1
            n = self._counter
        now = int(time.time())
        event = {
            "id": f"evt_demo_{n:06d}",
            "object": "event",
            "api_version": "2025-03-31.basil",
            "created": now,
            "livemode": False,
            "type": "checkout.session.completed",
            "data": {
                "object": {
                    "id": f"cs_test_demo_{n:06d}",
                    "object": "checkout.session",
                    "mode": "payment",
                    "status": "complete",
                    "payment_status": "paid",
                    "amount_total": amount,
                    "amount_subtotal": amount,
                    "currency": self._currency,
                    "client_reference_id": buyer,
                    "metadata": {"buyer": buyer, "campaign": campaign_id},
                    "payment_intent": f"pi_demo_{n:06d}",
                    "created": now,
                }
            },
        }
        body = json.dumps(event, separators=(",", ":"))
        header = stripe.WebhookSignature.generate_signature_header(
            body, self._secret, timestamp=now
        )
        try:
            response = client.post(
                self._url,
                content=body.encode(),
                headers={"Stripe-Signature": header, "Content-Type": "application/json"},
                timeout=30.0,
            )
        except httpx.HTTPError:
            self.failed += 1
            return False
        with self._lock:
            self.sent += 1
            if response.status_code == 200 and response.json().get("outcome") == "credited":
                self.credited += 1
        return response.status_code == 200


@dataclass
class CrowdStats:
    posted: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    done: bool = False


class Crowd:
    """Carries out a crowd plan against a Mastodon API, from `threads` HTTP clients."""

    def __init__(
        self,
        fans: list[Fan],
        base_url: str,
        *,
        stripe_side: DemoStripe,
        campaign_id: str,
        threads: int = 6,
    ) -> None:
        self.fans = fans
        self._base = base_url
        self._stripe = stripe_side
        self._campaign_id = campaign_id
        self._threads = threads
        self.stats = CrowdStats()
        # Posts go to the Mastodon server, payments to the web process: two queues, so a busy
        # server never holds up a fan's payment.
        self._heap: list[tuple[float, int, int, Action]] = []
        self._payments: list[tuple[float, int, int, Action]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seq = 0
        self._posts_left = 0
        self._posting_stopped = False

    def _push(self, at: float, fan: Fan, action: Action) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._seq += 1
            if action.kind == "prepay":
                heapq.heappush(self._payments, (at, self._seq, fan.index, action))
                return
            if self._posting_stopped:
                return
            self._posts_left += 1
            heapq.heappush(self._heap, (at, self._seq, fan.index, action))

    def posts_left(self) -> int:
        """Fan posts (and deletes) not yet made: scheduled or in flight."""
        with self._lock:
            return self._posts_left

    def prepay(self) -> None:
        """Top-ups made before the sale opens (fans who keep credit ready), a few at a time."""
        todo = [(f, a) for f in self.fans for a in f.actions if a.kind == "prepay"]

        def pay(share: list[tuple[Fan, Action]]) -> None:
            with httpx.Client() as client:
                for fan, action in share:
                    self._stripe.pay(
                        client,
                        buyer=fan.buyer,
                        campaign_id=self._campaign_id,
                        amount=action.amount,
                    )
                    with self._lock:
                        self.stats.posted["prepay"] += 1

        threads = [
            threading.Thread(target=pay, args=(todo[i :: self._threads],), daemon=True)
            for i in range(self._threads)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def schedule(self, start: float) -> None:
        for fan in self.fans:
            for action in fan.actions:
                if action.kind != "prepay":
                    self._push(start + action.at, fan, action)

    def pay_later(self, fan: Fan, amount: int, at: float) -> None:
        """A fan who saw their hold (reply or status page) pays `amount` at `at`."""
        self._push(at, fan, Action(0.0, "prepay", amount=amount))

    def pending(self) -> int:
        with self._lock:
            return len(self._heap) + len(self._payments)

    def stop_posting(self) -> None:
        """The sale closed: fans stop posting (what is still scheduled is dropped), but those
        holding a reservation still pay for it."""
        with self._lock:
            self._posting_stopped = True
            self._posts_left -= len(self._heap)
            self._heap.clear()

    def stop(self) -> None:
        """The demo is over: nobody acts any more."""
        with self._lock:
            self._posting_stopped = True
            self._stop.set()
            self._heap.clear()
            self._payments.clear()

    def run(self, now: Callable[[], float] = time.monotonic) -> None:
        """Work through the schedule until it is empty and `stop()` was called."""
        workers = [
            threading.Thread(
                target=self._work, args=(now, self._heap), name=f"fan-{i}", daemon=True
            )
            for i in range(self._threads)
        ] + [
            threading.Thread(
                target=self._work, args=(now, self._payments), name=f"payer-{i}", daemon=True
            )
            for i in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        self.stats.done = True

    def _next(
        self, now: Callable[[], float], heap: list[tuple[float, int, int, Action]]
    ) -> tuple[Fan, Action] | None:
        while not self._stop.is_set():
            with self._lock:
                if heap and heap[0][0] <= now():
                    _at, _seq, index, action = heapq.heappop(heap)
                    return self.fans[index], action
                wait = (heap[0][0] - now()) if heap else 0.05
            time.sleep(min(max(wait, 0.005), 0.05))
        return None

    def _work(self, now: Callable[[], float], heap: list[tuple[float, int, int, Action]]) -> None:
        with httpx.Client(base_url=self._base, timeout=60.0) as client:
            while (item := self._next(now, heap)) is not None:
                fan, action = item
                try:
                    self._act(client, fan, action)
                except httpx.HTTPError as exc:
                    self.stats.errors += 1
                    log.debug("fan %s failed to %s: %s", fan.username, action.kind, exc)
                finally:
                    if action.kind != "prepay":
                        with self._lock:
                            self._posts_left -= 1

    def _act(self, client: httpx.Client, fan: Fan, action: Action) -> None:
        auth = {"Authorization": f"Bearer {fan.token}"}
        if action.kind == "prepay":
            self._stripe.pay(
                client, buyer=fan.buyer, campaign_id=self._campaign_id, amount=action.amount
            )
            self.stats.posted["topup"] += 1
            return
        if action.kind == "delete":
            if fan.first_status_id is None:
                return
            response = client.delete(f"/api/v1/statuses/{fan.first_status_id}", headers=auth)
            response.raise_for_status()
            self.stats.posted["delete"] += 1
            return
        lang = {"en": "en", "ja": "ja", "zh": "zh"}[fan.lang]
        response = client.post(
            "/api/v1/statuses",
            headers=auth,
            data={"status": action.text, "visibility": "public", "language": lang},
        )
        response.raise_for_status()
        if fan.first_status_id is None and action.kind in ("order", "malformed"):
            fan.first_status_id = str(response.json()["id"])
        self.stats.posted[action.kind] += 1
