"""Waiting in tests for something another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    what: str, check: Callable[[], bool], timeout: float = 60.0, show: Callable[[], object] = str
) -> None:
    """Return once `check()` holds; fail naming `what` (and `show()`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {show()}")
