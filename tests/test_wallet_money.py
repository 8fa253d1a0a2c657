"""Splitting money by largest remainder: no cent lost, none invented, each share fair to a cent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wallet.errors import InvalidAmount, InvalidTransfer
from wallet.money import split


def test_a_ten_yuan_refund_split_three_ways() -> None:
    assert split(1000, [1, 1, 1]) == [334, 333, 333]
    assert split(199900, [1, 1]) == [99950, 99950]
    # Two phones at 19.99 and a case at 5.00 share a 10.00 discount by price.
    assert split(1000, [1999, 1999, 500]) == [445, 444, 111]
    assert split(5, [0, 3, 1]) == [0, 4, 1]
    assert split(0, [2, 7]) == [0, 0]


@pytest.mark.parametrize(
    ("amount", "weights", "error"),
    [
        (-1, [1], InvalidAmount),
        (1.5, [1], InvalidAmount),
        (100, [], InvalidTransfer),
        (100, [0, 0], InvalidTransfer),
        (100, [1, -1], InvalidTransfer),
        (100, [0.5, 0.5], InvalidTransfer),
    ],
)
def test_bad_splits_are_refused(amount: object, weights: list[object], error: type) -> None:
    with pytest.raises(error):
        split(amount, weights)  # type: ignore[arg-type]


@given(
    amount=st.integers(0, 10**12),
    weights=st.lists(st.integers(0, 10**6), min_size=1, max_size=30).filter(any),
)
def test_parts_sum_exactly_and_stay_within_a_unit_of_the_exact_share(
    amount: int, weights: list[int]
) -> None:
    parts = split(amount, weights)
    total = sum(weights)
    assert sum(parts) == amount
    for part, weight in zip(parts, weights, strict=True):
        floor, remainder = divmod(amount * weight, total)
        assert part == floor or (part == floor + 1 and remainder > 0)
