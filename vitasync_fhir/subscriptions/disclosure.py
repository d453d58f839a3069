"""A notification with a payload hands the version that matched to the subscriber's endpoint:
an access to patient data like any read, audited as a read by the subscriber (the AuditEvent
names the resource, the subscriber, the endpoint's host and the Subscription)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.engine import Connection

from vitasync_fhir.auth import audit
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.auth.tables import users
from vitasync_fhir.notify.queue import Queue

log = logging.getLogger(__name__)


def record(queue: Queue, sub: Any, head: Any) -> None:
    """Store the AuditEvent of one delivered notification; a failure is logged, not raised (the
    notification went out, and the sequence must go on)."""
    try:
        with queue.engine.begin() as conn:
            event = audit.audit_event(
                _subscriber(conn, sub.owner),
                action="read",
                resource_type=head.resource_type,
                resource_id=head.resource_id,
                outcome="success",
                source_ip=urlsplit(sub.endpoint).hostname,
                description=f"sent to the endpoint of Subscription/{sub.id} "
                f"(notification {head.seq})",
            )
            audit.store_many(conn, [event])
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("subscription %s: notification %s not audited", sub.id, head.seq)


def _subscriber(conn: Connection, owner: dict | None) -> Caller | None:
    """Who the subscription belongs to, as the audit names callers; None for the server's own."""
    if not owner:
        return None
    client_id = owner.get("client_id")
    found = conn.execute(select(users).where(users.c.id == owner.get("sub"))).first()
    if found is None:  # a backend service
        return Caller(role="client", scopes=(), client_id=client_id or owner.get("sub"))
    fhir_user = f"{found.fhir_type}/{found.fhir_id}" if found.fhir_type else None
    return Caller(
        role=found.role, scopes=(), user_id=found.id, fhir_user=fhir_user, client_id=client_id
    )
