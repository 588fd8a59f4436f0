"""IHE ATNA: DICOM PS3.15 A.5 audit messages and the audit outbox."""
