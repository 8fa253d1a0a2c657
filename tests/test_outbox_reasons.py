"""A fan whose order is refused is told why, in their language, for every refusal the parser and
the engine can give (never the catch-all text for a known reason)."""

from __future__ import annotations

import pytest

from bot.replies import load_templates
from orders.parser import (
    AMBIGUOUS_VARIANT,
    AMOUNT_OUT_OF_RANGE,
    BAD_AMOUNT,
    BAD_QUANTITY,
    OVER_LIMIT,
    UNKNOWN_VARIANT,
)

REFUSALS = (
    BAD_QUANTITY,
    OVER_LIMIT,
    AMBIGUOUS_VARIANT,
    UNKNOWN_VARIANT,
    BAD_AMOUNT,
    AMOUNT_OUT_OF_RANGE,
    "campaign_not_open",
    "campaign_closed",
    "unknown_sku",
    "cancel_closed",
    "nothing_to_cancel",
)


@pytest.mark.parametrize("lang", ["en", "ja", "zh"])
def test_every_refusal_has_its_own_words(lang: str) -> None:
    reasons = load_templates()[lang]["reasons"]
    assert isinstance(reasons, dict)
    missing = [code for code in REFUSALS if code not in reasons]
    assert missing == []
    texts = [reasons[code] for code in REFUSALS]
    assert reasons["default"] not in texts
