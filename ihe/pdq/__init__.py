"""IHE PDQ: Patient Demographics Supplier (ITI-21 over HL7 v2, ITI-78 over FHIR)."""
