"""The one catalog: every domain's :class:`~facelake.lake.catalog.CatalogSection` in one DuckDB connection.

A domain that writes tables adds its section to :data:`SECTIONS`; ``open_catalog(storage)`` then shows its
views beside the others (see :mod:`facelake.lake.catalog` for what is visible: committed partitions only).
"""

from __future__ import annotations

import duckdb

from facelake.celebahq.catalog import CELEBAHQ, CLUSTER_ID_FIELDS
from facelake.clip.catalog import CLIP
from facelake.clip.catalog import METADATA_SCHEMA as CLIP_METADATA_SCHEMA
from facelake.clusters.catalog import identity_clusters_section
from facelake.curation.catalog import CURATION
from facelake.faces.stages import FACE_ID_FIELDS
from facelake.generation.shards import INDEX_SCHEMA as GENERATED_IMAGES_SCHEMA
from facelake.hyperface.catalog import hyperface_section
from facelake.laion.catalog import LAION_FACE, REPORT_SQL, run_report
from facelake.laion.formats import LAION_PARTS
from facelake.lake import catalog as lake_catalog
from facelake.lake.catalog import SQL_DIR_ENV, CommittedPartition, describe, query, sql_path
from facelake.lake.storage import Storage
from facelake.sfhq.catalog import sfhq_section

SECTIONS = (
    LAION_FACE,
    identity_clusters_section(LAION_FACE.dataset, FACE_ID_FIELDS, tuple(LAION_PARTS)),
    CELEBAHQ,
    identity_clusters_section(CELEBAHQ.dataset, CLUSTER_ID_FIELDS),
    hyperface_section(GENERATED_IMAGES_SCHEMA),
    CURATION,
    CLIP,
    sfhq_section(CLIP_METADATA_SCHEMA),
)
"""Every section of the catalog, in view-creation order: each dataset's own, and the identity clusters' views
over the datasets whose embeddings are clustered (LAION-Face parts, CelebA-HQ)."""
EMPTY_WITHOUT_GENERATOR = (
    "hyperface_images",
    "hyperface_aligned",
    "hyperface_identity_audit",
    "hyperface_identity_audit_identities",
    "hyperface_leakage",
    "hyperface_dataset",
    "hyperface_dataset_removed",
)
"""Views that stay empty unless generator weights are configured (their view comments say so)."""

__all__ = [
    "EMPTY_WITHOUT_GENERATOR",
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
