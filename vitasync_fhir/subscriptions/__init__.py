"""FHIR R4 Subscriptions (rest-hook): registration, matching writes, delivering notifications."""
