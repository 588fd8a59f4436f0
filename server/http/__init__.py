"""The HTTP side of SPIDERS: the FHIR endpoint and the JSON API."""
