"""Accounts, the OAuth2 / SMART on FHIR server, scopes, the role policy and the audit trail."""
