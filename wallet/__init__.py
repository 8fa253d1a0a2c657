"""The credit wallet: a double-entry ledger in integer minor units, and Stripe top-ups.

Owns: accounts (buyer wallets, campaign sales accounts, Stripe clearing), transfers whose legs
sum to zero, two-phase holds (hold, post, void), top-up credits applied once per Stripe payment,
Stripe webhook verification and event records.

Modules: `tables` (the ledger's tables and the database's own guards), `ledger` (the API the
engine and the Stripe code call; its docstring states the model), `store` (the set-based
statements behind it), `audit` (invariants across rows), `errors` (the `LedgerError` tree),
`money` (largest-remainder splits), `bench` (the ledger benchmark), `stripe_tables` and
`stripe_payments` (Stripe Checkout, webhooks, reconciliation, cash-out).

May import: `config` only. The wallet knows nothing of orders, connectors or the bot.
"""
