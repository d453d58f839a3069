"""Subscriptions: who subscribed to what, and every notification owed to them.

`subscriptions` mirrors each Subscription resource in the columns matching and delivery need, plus
what the resource cannot hold: its owner (whose access decides what matches) and the sequence of
its notifications. `subscription_deliveries` is the outbox of notifications: a row is written in
the transaction of the change that causes it, so a notification exists exactly when its change was
committed, and it waits there until it is delivered, given up, or dropped with its subscription.
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
    UniqueConstraint,
)

from vitasync_fhir.db import metadata

# Subscription.status (R4 subscription-status)
REQUESTED = "requested"
ACTIVE = "active"
ERROR = "error"
OFF = "off"
LIVE = (REQUESTED, ACTIVE)  # what the deliverer sends for

# subscription_deliveries.status
PENDING = "pending"
SENT = "sent"
DEAD = "dead"  # given up after too many failures; its subscription is in error
DROPPED = "dropped"  # its subscription was switched off, errored or deleted first

HANDSHAKE = "handshake"
EVENT = "event"
# Not sent: tells the deliverer, in its turn, that the subscriber's access is gone (their account
# deactivated, or their password reset since the subscription was last written by them).
OWNER_GONE = "owner-gone"

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(64), primary_key=True),  # the Subscription resource's id
    Column("resource_type", String(64), nullable=False),  # of the criteria
    Column("criteria", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("payload", String(64), nullable=True),  # None: id-only notifications (empty POST)
    Column("headers", JSON, nullable=False),  # channel.header, "Name: value" strings
    # The creator's identity as token claims (sub, client_id, scope, patient); None: the server.
    Column("owner", JSON, nullable=True),
    # "user:<id>" or "client:<client_id>": only they (and admins) see and change it (ownership.py).
    Column("owner_key", String(200), nullable=True),
    Column("ends_at", DateTime(timezone=True), nullable=True),  # Subscription.end
    Column("last_seq", BigInteger, nullable=False),  # the last notification's sequence number
    # One deliverer at a time per subscription keeps its notifications in order.
    Column("claim", String(32), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "resource_type", "status"),
    Index(None, "owner_key"),
)

subscription_deliveries = Table(
    "subscription_deliveries",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("subscription_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("resource_type", String(64), nullable=True),
    Column("resource_id", String(64), nullable=True),
    Column("version_id", Integer, nullable=True),
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("subscription_id", "seq"),
    Index(None, "status", "next_attempt_at"),
)
