"""DICOMweb clients: QIDO-RS search and WADO-RS retrieve (DICOM PS3.18)."""
