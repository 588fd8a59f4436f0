"""The tumour-board workflow: registration, discovery, selection, prefetch."""
