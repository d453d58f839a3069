"""The FHIR R4 REST surface and the resource store."""
