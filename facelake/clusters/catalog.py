"""The identity clusters' part of the catalog: views over the committed ``identity_clusters`` artifact of a
dataset folder (``sql/identity_clusters_views.sql``).

Any embedding asset can be clustered (:func:`facelake.clusters.identity_clusters.read_embeddings`), so the
clusters live in the clustered dataset's own folder, ``{root}/{dataset}/identity_clusters/<part>/``, and the
same views are made for each such dataset (the catalog composes one section per dataset,
:mod:`facelake.catalog`):

- ``{dataset}_identity_clusters``: one row per clustered embedding: the input's id columns, cluster_id,
  cluster_size, dbscan_label, core, nn_index, nn_cosine, centroid_cosine;
- ``{dataset}_identity_centroids``: one row per identity: its size and centroid, with the provenance.
"""

from __future__ import annotations

import pyarrow as pa

from facelake.clusters.identity_clusters import (
    ASSIGNMENTS_FILE,
    CENTROIDS_FILE,
    CENTROIDS_SCHEMA,
    assignments_schema,
)
from facelake.lake.catalog import CatalogSection, ViewSource, named_file

ARTIFACT = "identity_clusters"
VIEWS_SQL = "identity_clusters_views.sql"


def identity_clusters_section(
    dataset: str, id_fields: list[tuple[str, pa.DataType]], partitions: tuple[str, ...] | None = None
) -> CatalogSection:
    """The views of ``{root}/{dataset}/identity_clusters/`` for embeddings whose id columns are ``id_fields``
    (the columns the views have while nothing is committed), over the partition keys ``partitions``."""
    return CatalogSection(
        dataset,
        VIEWS_SQL,
        (
            ViewSource("assignments", ARTIFACT, named_file(ASSIGNMENTS_FILE), assignments_schema(id_fields)),
            ViewSource("centroids", ARTIFACT, named_file(CENTROIDS_FILE), CENTROIDS_SCHEMA),
        ),
        partitions,
    )
