"""Orders: the parser, campaigns, stock, reservations, the waitlist and the engine.

Owns: turning a post into one decision (`orders.parser`, pure), loading campaigns and products
into the database, allocating stock first come first served without overselling, holds and
their lapse, the waitlist, and the audit of every invariant in docs/design.md.

May import: `wallet` and `config`. Never `connectors` or `bot`.
"""
