"""The export jobs: one row per $export kick-off, from queued to complete (or failed).

A job is claimed by one worker at a time: `claim` is that worker's token and `lease_until` the
moment the claim lapses unless renewed; a worker that dies leaves a lapsed lease, and the sweep
hands the job to the queue again. Cancelling or expiring a job deletes its row and its files.
"""

from sqlalchemy import JSON, Column, DateTime, Index, Integer, String, Table, Text

from vitasync_fhir.db import metadata

QUEUED = "queued"
RUNNING = "running"
COMPLETE = "complete"
FAILED = "failed"

export_jobs = Table(
    "export_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("status", String(10), nullable=False),
    Column("level", String(10), nullable=False),  # system, patient or group
    Column("group_id", String(64), nullable=True),
    Column("request", Text, nullable=False),  # the kick-off URL, for the manifest
    Column("params", JSON, nullable=False),  # types, since, type filters, output format
    Column("caller", JSON, nullable=False),  # the kick-off caller: its policy limits the export
    Column("transaction_time", DateTime(timezone=True), nullable=False),
    Column("claim", String(32), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("progress", Text, nullable=True),
    Column("output", JSON, nullable=True),  # manifest output[] and error[] once complete
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),  # the latest claim
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Index(None, "status", "lease_until"),
    Index(None, "expires_at"),
)
