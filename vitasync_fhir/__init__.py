"""VitaSync FHIR: a FHIR R4 server for the VitaSync healthcare service."""

__version__ = "0.1.0"
