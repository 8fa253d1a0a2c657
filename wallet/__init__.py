"""The credit wallet: a double-entry ledger in integer minor units, and Stripe top-ups.

Owns: accounts (buyer wallets, campaign sales accounts, Stripe clearing), transfers whose legs
sum to zero, two-phase holds (hold, post, void), top-up credits applied once per Stripe payment,
Stripe webhook verification and event records.

May import: `config` only. The wallet knows nothing of orders, connectors or the bot.
"""
