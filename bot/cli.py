"""The `flashtag` command line. Each area registers its commands from `bot.commands`."""

from __future__ import annotations

import typer

from bot.collector import tune_collector
from bot.commands import (
    bench_cmd,
    config_cmd,
    db_cmd,
    orders_cmd,
    outbox_cmd,
    parse_cmd,
    replay_cmd,
    run_cmd,
    wallet_cmd,
    web_cmd,
)

app = typer.Typer(
    name="flashtag",
    help="Sell by posts on Mastodon and X: hashtag orders, first-come stock, prepaid credits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

config_cmd.register(app)
db_cmd.register(app)
orders_cmd.register(app)
wallet_cmd.register(app)
outbox_cmd.register(app)
parse_cmd.register(app)
run_cmd.register(app)
web_cmd.register(app)
replay_cmd.register(app)
bench_cmd.register(app)


def main() -> None:
    tune_collector()
    app()
