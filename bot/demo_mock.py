"""The demo's Mastodon server: mastodon-mock in a child process, seeded with the demo's accounts.

It runs in its own process so the server and the bot each get a core. The seed (the brand's bot
account and the fans, each with a token) is written to a JSON file the child reads; the child
prints nothing and serves on loopback until it is terminated.

`python -m bot.demo_mock CONFIG.json PORT` is the child's entry point.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

STREAM_QUEUE = 200_000  # events an SSE subscriber may fall behind by before the mock drops any


@dataclass(frozen=True, slots=True)
class MockAccount:
    username: str
    token: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mock_config(
    port: int, accounts: list[MockAccount], *, follows: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """A mastodon-mock config: in-memory database, loopback domain, the accounts with tokens."""
    return {
        "domain": f"127.0.0.1:{port}",
        "url_scheme": "http",
        "database": {"path": ":memory:"},
        "streaming": {"heartbeat_seconds": 1.0, "queue_maxsize": STREAM_QUEUE},
        "seed": {
            "accounts": [{"username": a.username, "access_token": a.token} for a in accounts],
            "follows": [{"follower": f, "following": t} for f, t in (follows or [])],
        },
    }


class MockMastodon:
    """A mastodon-mock child process on a free loopback port."""

    def __init__(
        self,
        workdir: Path,
        accounts: list[MockAccount],
        *,
        follows: list[tuple[str, str]] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._config = workdir / "mastodon-mock.json"
        self._config.write_text(json.dumps(mock_config(self.port, accounts, follows=follows)))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> None:
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "bot.demo_mock", str(self._config), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                raise RuntimeError(f"mastodon-mock exited at start: {err[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/api/v1/instance", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"mastodon-mock did not answer within {timeout:g}s")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None


def main(argv: list[str]) -> None:
    import uvicorn
    from mastodon_mock.app import create_app
    from mastodon_mock.config import MastodonMockConfig

    config = MastodonMockConfig.model_validate(json.loads(Path(argv[0]).read_text()))
    uvicorn.run(
        create_app(config),
        host="127.0.0.1",
        port=int(argv[1]),
        log_level="error",
        server_header=False,
        access_log=False,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
