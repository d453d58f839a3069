"""Load and scale measurements of VitaSync FHIR; run `python -m benchmarks.run --help`."""
