"""The simple JSON API of the VitaSync web frontend, on the same store as /fhir."""
