from vitasync_fhir.cli import main

main()
