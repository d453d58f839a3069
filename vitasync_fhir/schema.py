"""Every table of the application, gathered on one MetaData for migrations and tests."""

from vitasync_fhir.auth import tables as auth_tables  # noqa: F401
from vitasync_fhir.db import metadata
from vitasync_fhir.export import tables as export_tables  # noqa: F401
from vitasync_fhir.fhir import tables as fhir_tables  # noqa: F401
from vitasync_fhir.fhir.search import tables as search_tables  # noqa: F401
from vitasync_fhir.importer import tables as import_tables  # noqa: F401
from vitasync_fhir.notify import tables as notify_tables  # noqa: F401
from vitasync_fhir.subscriptions import tables as subscription_tables  # noqa: F401

__all__ = ["metadata"]
