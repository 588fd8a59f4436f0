"""Synthetic patients and imaging studies for the demonstration and the tests."""
