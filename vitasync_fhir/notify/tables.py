"""The e-mail outbox: one row per message the system has decided to send.

A row is written in the same transaction as the change that causes it, so an e-mail exists exactly
when its cause was committed. `status` moves pending -> sending -> sent, or to dead after too many
failures, or to uncertain when a send was interrupted after the SMTP server may have accepted it
(see `notify/tasks.py`). `next_attempt_at` is when the row is next due: the send time of a pending
row, the lease expiry of a sending one.
"""

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from vitasync_fhir.db import metadata

PENDING = "pending"
SENDING = "sending"
SENT = "sent"
DEAD = "dead"
UNCERTAIN = "uncertain"
STATUSES = (PENDING, SENDING, SENT, DEAD, UNCERTAIN)

outbox = Table(
    "notify_outbox",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("kind", String(40), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("subject", String(300), nullable=True),  # filled in when first rendered
    Column("payload", JSON, nullable=False),  # ids and display values, never clinical details
    Column("dedup_key", String(255), nullable=False, unique=True),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    # Fencing token of the current send attempt; only its holder may move the row on.
    Column("claim", String(32), nullable=True),
    # Set, and committed, just before the final "." of DATA: from then on the server may have it.
    Column("final_dot_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index(None, "status", "next_attempt_at"),
)
