"""The one catalog: every domain's :class:`~facelake.lake.catalog.CatalogSection` in one DuckDB connection.

A domain that writes tables adds its section to :data:`SECTIONS`; ``open_catalog(storage)`` then shows its
views beside the others (see :mod:`facelake.lake.catalog` for what is visible: committed partitions only).
"""

from __future__ import annotations

import duckdb

from facelake.clip.catalog import CLIP
from facelake.laion.catalog import LAION_FACE, REPORT_SQL, run_report
from facelake.lake import catalog as lake_catalog
from facelake.lake.catalog import SQL_DIR_ENV, CommittedPartition, describe, query, sql_path
from facelake.lake.storage import Storage
from facelake.sfhq.catalog import SFHQ

SECTIONS = (LAION_FACE, CLIP, SFHQ)
"""Every section of the catalog, in view-creation order."""

__all__ = [
    "REPORT_SQL",
    "SECTIONS",
    "SQL_DIR_ENV",
    "describe",
    "open_catalog",
    "query",
    "refresh",
    "run_report",
    "sql_path",
]


def open_catalog(storage: Storage, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with every section's views over the storage's committed artifacts (close it)."""
    return lake_catalog.open_catalog(storage, SECTIONS, database)


def refresh(conn: duckdb.DuckDBPyConnection, storage: Storage) -> list[CommittedPartition]:
    """Recreate every section's tables and views from what is committed now; returns the partitions."""
    return lake_catalog.refresh(conn, storage, SECTIONS)
