"""The ledger's named errors: one root, `LedgerError`, with the facts a caller needs on each."""

from __future__ import annotations

from datetime import datetime


class LedgerError(Exception):
    """Root of every error the wallet raises on purpose."""


class InvalidTransfer(LedgerError, ValueError):  # noqa: N818 (the names the API documents)
    """A request that can never be valid, whatever the balances (bad amount, key, time...)."""


class InvalidAmount(InvalidTransfer):
    """Amounts are positive integers of minor units; never floats, never zero."""

    def __init__(self, amount: object) -> None:
        super().__init__(f"amount must be a positive integer of minor units, got {amount!r}")
        self.amount = amount


class InvalidCurrency(InvalidTransfer):
    def __init__(self, currency: object) -> None:
        super().__init__(f"currency must be an ISO 4217 code like 'CNY', got {currency!r}")
        self.currency = currency


class InvalidBuyer(InvalidTransfer):
    def __init__(self, buyer: object) -> None:
        super().__init__(f"buyer must be a key 'platform:account_id', got {buyer!r}")
        self.buyer = buyer


class NaiveDatetime(InvalidTransfer):
    def __init__(self, value: object) -> None:
        super().__init__(f"the ledger only takes timezone-aware datetimes, got {value!r}")
        self.value = value


class UnbalancedTransfer(InvalidTransfer):
    """A transfer's legs must be one debit and one credit that sum to zero."""

    def __init__(self, ref: str, amounts: list[int]) -> None:
        super().__init__(f"transfer {ref!r}: legs {amounts} do not sum to zero")
        self.ref = ref
        self.amounts = amounts


class SameAccount(InvalidTransfer):
    def __init__(self, ref: str, account: str) -> None:
        super().__init__(f"transfer {ref!r} debits and credits the same account {account}")
        self.ref = ref
        self.account = account


class TransferConflict(LedgerError):  # noqa: N818 (the names the API documents)
    """An idempotency id was reused for a different transfer (other amount, accounts or kind)."""

    def __init__(self, ref: str, detail: str) -> None:
        super().__init__(f"transfer {ref!r} already exists with different content: {detail}")
        self.ref = ref


class InsufficientFunds(LedgerError):  # noqa: N818 (the names the API documents)
    """The account's available balance (posted minus pending debits) is below the amount."""

    def __init__(self, account: str, currency: str, needed: int, available: int) -> None:
        super().__init__(f"{account} has {available} {currency} available, {needed} needed")
        self.account = account
        self.currency = currency
        self.needed = needed
        self.available = available


class HoldError(LedgerError):
    """Errors of the second phase of a two-phase transfer."""

    def __init__(self, message: str, ref: str) -> None:
        super().__init__(message)
        self.ref = ref


class HoldNotFound(HoldError):  # noqa: N818 (the names the API documents)
    def __init__(self, ref: str) -> None:
        super().__init__(f"no hold with ref {ref!r}", ref)


class HoldNotPending(HoldError):  # noqa: N818 (the names the API documents)
    """The hold was already posted or voided; it can be neither posted nor voided again."""

    def __init__(self, ref: str, state: str) -> None:
        super().__init__(f"hold {ref!r} is {state}, not pending", ref)
        self.state = state


class HoldExpired(HoldError):  # noqa: N818 (the names the API documents)
    """A hold past its expiry can only be voided."""

    def __init__(self, ref: str, expires_at: datetime, at: datetime) -> None:
        super().__init__(f"hold {ref!r} expired at {expires_at.isoformat()}", ref)
        self.expires_at = expires_at
        self.at = at
