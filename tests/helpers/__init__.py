"""Shared test helpers: import them as tests.helpers.<module>."""
