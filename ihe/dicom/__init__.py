"""DICOM transport for SPIDERS: the AE factory, the cache archive and its SCPs."""
