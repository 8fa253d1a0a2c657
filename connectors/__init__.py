"""Platform connectors: Mastodon (Mastodon.py) and X (tweepy).

Owns: the frozen `Post` value every platform payload becomes, the `Connector` interface
(stream, poll from a cursor, send), payload conversion, rate-limit pacing and the
`ConnectorError` tree.

May import: `config` only. Never `orders` (the bot turns a `Post` into engine input) nor `wallet`.
"""
