"""The CelebA-HQ section of the catalog: views over the committed ``{root}/celebahq/<artifact>/all/`` tables
(``sql/celebahq_views.sql``).

Views (each has a ``part`` column, ``all``):

- ``celebahq_images``: the index of the source images (file_name, source_file, source_row);
- ``celebahq_face_embeddings``: the primary face's identity embedding per image, with the provenance;
- ``celebahq_no_face``: the images without a face, and the reason.

The identity clusters (``celebahq_identity_clusters``, ``celebahq_identity_centroids``) are
:mod:`facelake.clusters.catalog`'s views over this folder; their id columns are :data:`CLUSTER_ID_FIELDS`.
Tables ``celebahq_partitions`` and ``celebahq_files`` (:mod:`facelake.lake.catalog`).
"""

from __future__ import annotations

from facelake.celebahq.dataset import (
    DATASET,
    EMBEDDINGS_FILE,
    FILE_NAME_COLUMN,
    INDEX_FILE,
    INDEX_SCHEMA,
    NO_FACE_FILE,
    NO_FACE_SCHEMA,
)
from facelake.faces.primary import primary_embeddings_schema, primary_face_fields
from facelake.lake.catalog import CatalogSection, ViewSource, named_file

CLUSTER_ID_FIELDS = primary_face_fields(FILE_NAME_COLUMN)
"""The id columns of a clustered CelebA-HQ embedding (the embeddings' columns but the vector and provenance)."""

CELEBAHQ = CatalogSection(
    DATASET,
    "celebahq_views.sql",
    (
        ViewSource("index_source", "images", named_file(INDEX_FILE), INDEX_SCHEMA),
        ViewSource(
            "embeddings_source",
            "face_embeddings",
            named_file(EMBEDDINGS_FILE),
            primary_embeddings_schema(FILE_NAME_COLUMN),
        ),
        ViewSource("no_face_source", "face_embeddings", named_file(NO_FACE_FILE), NO_FACE_SCHEMA),
    ),
)
"""The CelebA-HQ section of the catalog (:mod:`facelake.catalog`)."""
