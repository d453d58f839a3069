"""A Subscription belongs to whoever created it: others (admins aside) neither see nor change it.

Its endpoint and channel headers (often a secret for the receiver) are the subscriber's business.
The role policy says who may use Subscriptions at all; `auth/access.py` asks this module, for the
types in OWNED, which of them the caller may see: in searches (`clause`) and for one resource
(`owns`). A resource not (yet) in the table is nobody's: only its creation reaches it.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import FromClause

from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.subscriptions.tables import subscriptions

OWNED = frozenset({"Subscription"})


def key_of(caller: Caller | None) -> str | None:
    if caller is None:
        return None
    return f"user:{caller.user_id}" if caller.user_id else f"client:{caller.client_id}"


def sees_all(caller: Caller | None) -> bool:
    return caller is None or caller.role == "admin"


def clause(table: FromClause, caller: Caller) -> ColumnElement[bool]:
    """Rows of `table` (resource_type, id) that are the caller's own Subscriptions."""
    mine = select(subscriptions.c.id).where(subscriptions.c.owner_key == key_of(caller))
    return table.c.id.in_(mine)


async def owns(session: AsyncSession, caller: Caller, subscription_id: str) -> bool:
    owner = (
        await session.execute(
            select(subscriptions.c.owner_key).where(subscriptions.c.id == subscription_id)
        )
    ).first()
    return owner is not None and owner.owner_key == key_of(caller)
