"""The running bot: pipeline, outbox, scheduled jobs, web app, CLI and demo.

Owns: turning connector `Post` values into engine input, the outbox and its senders, cursors,
the `web`, `worker` and `clock` processes, `flashtag run`, the command line and the demo.

May import: everything (`config`, `connectors`, `wallet`, `orders`). Nothing imports `bot`.
"""
