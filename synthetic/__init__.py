"""Fixture builders in the real formats, used by the tests and the offline demo."""
