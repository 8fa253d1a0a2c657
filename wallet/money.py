"""Money arithmetic in integer minor units: splits that never lose or invent a cent."""

from __future__ import annotations

from collections.abc import Sequence

from wallet.errors import InvalidAmount, InvalidTransfer


def split(amount: int, weights: Sequence[int]) -> list[int]:
    """Split ``amount`` minor units in proportion to ``weights`` by largest remainder.

    Every part is the floor of its exact share, and the units left over go one each to the
    parts with the largest remainders (earlier parts first on ties). The parts always sum to
    ``amount`` and each is within one unit of its exact share: ``split(1000, [1, 1, 1])`` is
    ``[334, 333, 333]``.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InvalidAmount(amount)
    if not weights or any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in weights):
        raise InvalidTransfer(f"weights must be non-negative integers, got {list(weights)!r}")
    total = sum(weights)
    if total == 0:
        raise InvalidTransfer("weights must not all be zero")
    parts = [amount * w // total for w in weights]
    remainders = [amount * w % total for w in weights]
    left = amount - sum(parts)
    for index in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        parts[index] += 1
    return parts
