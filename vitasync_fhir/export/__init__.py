"""Bulk Data export jobs: the job table, the Huey task that writes NDJSON files, and their expiry.

The HTTP face is fhir/operations/export.py; everything it asks of a job goes through service.py.
"""
