"""The engine that runs the declarative files in ../mappings/: VitaSync JSON <-> FHIR."""
