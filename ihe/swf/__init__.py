"""Scheduled Workflow, receiving side: appointments (RAD-48) and orders (RAD-4)."""
