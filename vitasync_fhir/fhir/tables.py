"""The resource tables: the current version of each resource, and every version ever written.

`content` holds the exact JSON text that was validated and is served; reads never re-serialize.
A delete writes a tombstone: `deleted` true and no content.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
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

ID_LENGTH = 64
TYPE_LENGTH = 64

resources = Table(
    "resources",
    metadata,
    Column("resource_type", String(TYPE_LENGTH), primary_key=True),
    Column("id", String(ID_LENGTH), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("content", Text, nullable=True),
    Index(None, "resource_type", "last_updated", "id"),
)

# Every version, the current one included. `seq` orders all writes of the system.
resource_history = Table(
    "resource_history",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("resource_type", String(TYPE_LENGTH), nullable=False),
    Column("id", String(ID_LENGTH), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("content", Text, nullable=True),
    UniqueConstraint("resource_type", "id", "version_id"),
    Index(None, "resource_type", "seq"),
    Index(None, "last_updated"),
)
