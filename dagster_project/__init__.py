"""The facelake Dagster code location."""

from dagster_project.definitions import defs

__all__ = ["defs"]
