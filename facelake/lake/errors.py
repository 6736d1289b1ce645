"""Errors that name the file (or key) and the problem, so a failed run says what to fix."""

from __future__ import annotations


class FacelakeError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(FacelakeError):
    """An input file is missing, corrupt, of the wrong schema, or unsafe to load."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafePickleError(InputError):
    """A pickle asks for something outside the allowlist; nothing it carries was executed."""


class UnknownPartitionError(FacelakeError):
    """A partition key outside the partition set."""

    def __init__(self, key: str, valid: str) -> None:
        self.key = key
        super().__init__(f"unknown partition key {key!r}: expected {valid}")


class PartitionLockedError(FacelakeError):
    """Another writer holds the lease on a partition."""
