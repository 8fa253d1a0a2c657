"""The ledger audit: what no single row can show, checked across all of them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session, aliased

from wallet.tables import accounts, legs, transfers

# What each kind of transfer may move: (debited account kind, credited account kind).
FLOWS = {
    "topup": ("clearing", "wallet"),
    "cashout": ("wallet", "clearing"),
    "purchase": ("wallet", "sales"),
    "refund": ("sales", "wallet"),
}


def audit(session: Session, *, limit: int = 20) -> list[str]:
    """Check the ledger's invariants across rows; an empty list means they all hold.

    - every transfer has one debit and one credit leg of its amount, on two different accounts
      of the right kinds for the transfer kind;
    - every account's running totals equal the sums of its legs by transfer state;
    - no wallet or sales account is overdrawn; posted balances sum to zero per currency.
    """
    problems: list[str] = []
    debit = aliased(legs, name="debit")
    credit = aliased(legs, name="credit")
    debit_account = aliased(accounts, name="debit_account")
    credit_account = aliased(accounts, name="credit_account")
    rows = session.execute(
        select(
            transfers.c.ref,
            transfers.c.kind,
            transfers.c.amount,
            debit.c.amount.label("debit_amount"),
            credit.c.amount.label("credit_amount"),
            debit.c.account_id.label("debit_id"),
            credit.c.account_id.label("credit_id"),
            debit_account.c.kind.label("debit_kind"),
            credit_account.c.kind.label("credit_kind"),
        )
        .outerjoin(debit, and_(debit.c.transfer_id == transfers.c.id, debit.c.side == "debit"))
        .outerjoin(credit, and_(credit.c.transfer_id == transfers.c.id, credit.c.side == "credit"))
        .outerjoin(debit_account, debit_account.c.id == debit.c.account_id)
        .outerjoin(credit_account, credit_account.c.id == credit.c.account_id)
        .where(
            (debit.c.transfer_id.is_(None))
            | (credit.c.transfer_id.is_(None))
            | (debit.c.amount != credit.c.amount)
            | (debit.c.account_id == credit.c.account_id)
            | (debit.c.amount != transfers.c.amount)
        )
        .limit(limit)
    ).all()
    for r in rows:
        if r.debit_amount is None or r.credit_amount is None:
            problems.append(f"transfer {r.ref}: missing its debit or credit leg")
        elif r.debit_id == r.credit_id:
            problems.append(f"transfer {r.ref}: debits and credits the same account")
        else:
            problems.append(
                f"transfer {r.ref}: legs -{r.debit_amount}/+{r.credit_amount} do not sum to zero"
            )
    flows = session.execute(
        select(transfers.c.ref, transfers.c.kind, debit_account.c.kind, credit_account.c.kind)
        .join(debit, and_(debit.c.transfer_id == transfers.c.id, debit.c.side == "debit"))
        .join(credit, and_(credit.c.transfer_id == transfers.c.id, credit.c.side == "credit"))
        .join(debit_account, debit_account.c.id == debit.c.account_id)
        .join(credit_account, credit_account.c.id == credit.c.account_id)
    )
    bad_flows = 0
    for ref, kind, dkind, ckind in flows:
        if FLOWS.get(kind) != (dkind, ckind) and bad_flows < limit:
            bad_flows += 1
            problems.append(f"transfer {ref}: a {kind} may not move {dkind} -> {ckind}")

    def total(side: str, state: str) -> Any:
        return func.coalesce(
            func.sum(
                case(
                    (and_(legs.c.side == side, transfers.c.state == state), legs.c.amount),
                    else_=0,
                )
            ),
            0,
        )

    sums = (
        select(
            legs.c.account_id,
            total("credit", "posted").label("cp"),
            total("debit", "posted").label("dp"),
            total("credit", "pending").label("cpn"),
            total("debit", "pending").label("dpn"),
        )
        .join(transfers, transfers.c.id == legs.c.transfer_id)
        .group_by(legs.c.account_id)
        .subquery()
    )
    mismatched = session.execute(
        select(accounts, sums.c.cp, sums.c.dp, sums.c.cpn, sums.c.dpn)
        .outerjoin(sums, sums.c.account_id == accounts.c.id)
        .where(
            (accounts.c.credits_posted != func.coalesce(sums.c.cp, 0))
            | (accounts.c.debits_posted != func.coalesce(sums.c.dp, 0))
            | (accounts.c.credits_pending != func.coalesce(sums.c.cpn, 0))
            | (accounts.c.debits_pending != func.coalesce(sums.c.dpn, 0))
            | (
                (accounts.c.kind != "clearing")
                & (
                    func.coalesce(sums.c.dp, 0) + func.coalesce(sums.c.dpn, 0)
                    > func.coalesce(sums.c.cp, 0)
                )
            )
        )
        .limit(limit)
    ).all()
    for r in mismatched:
        key = f"{r.kind}:{r.owner} {r.currency}"
        cp, dp, cpn, dpn = (int(v or 0) for v in (r.cp, r.dp, r.cpn, r.dpn))
        if r.kind != "clearing" and dp + dpn > cp:
            problems.append(f"{key}: overdrawn, legs show {cp - dp - dpn} available")
        if (r.credits_posted, r.debits_posted, r.credits_pending, r.debits_pending) != (
            cp,
            dp,
            cpn,
            dpn,
        ):
            problems.append(
                f"{key}: totals {r.credits_posted}/{r.debits_posted}/{r.credits_pending}/"
                f"{r.debits_pending} differ from its legs {cp}/{dp}/{cpn}/{dpn}"
            )
    unbalanced = session.execute(
        select(
            accounts.c.currency,
            func.sum(accounts.c.credits_posted - accounts.c.debits_posted),
        )
        .group_by(accounts.c.currency)
        .having(func.sum(accounts.c.credits_posted - accounts.c.debits_posted) != 0)
    )
    for currency, net in unbalanced:
        problems.append(f"{currency}: posted balances sum to {net}, not zero")
    return problems
