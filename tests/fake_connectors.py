"""A connector for outbox tests: it receives nothing, and subclasses decide what a send does."""

from __future__ import annotations

from connectors.base import Connector, Sink
from connectors.pacing import Clock, Pacer
from connectors.post import Signal


class SendOnlyConnector(Connector):
    """Streams and polls nothing; `send` is the subclass's."""

    def __init__(self, account_key: str, clock: Clock) -> None:
        self.account_key = account_key
        self.pacer = Pacer(clock)

    def initialize(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def poll(self, cursor: str | None) -> tuple[list[Signal], str | None]:
        return [], cursor

    def stream(self, sink: Sink) -> None:
        pass
