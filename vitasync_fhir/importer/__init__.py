"""`vitasync-fhir import`: Bundles and NDJSON loaded through the FHIR transaction path."""
