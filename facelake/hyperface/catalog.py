"""The HyperFace section of the catalog: views over the committed ``{root}/hyperface/<artifact>/<part>/``
tables (``sql/hyperface_views.sql``).

Views (each has a ``part`` column: ``all`` for the gallery, the variant otherwise):

- ``hyperface_gallery``: the gallery's unit embeddings, with the source of each row;
- ``hyperface_reference_embeddings``: the packed identities of each variant (``identities-NNNNN.parquet``);
- ``hyperface_images``: the generated images of each variant (``images/<variant>/shards/NNNNN.parquet``,
  the index of the webdataset shards). It is empty unless generator weights are configured (none ship), and
  its view comment says so.

The generated images' index schema belongs to the generation stage (:mod:`facelake.generation.shards`, a
layer above this domain), so the catalog composition passes it in (:func:`hyperface_section`).
Tables ``hyperface_partitions`` and ``hyperface_files`` (:mod:`facelake.lake.catalog`).
"""

from __future__ import annotations

import re

import pyarrow as pa

from facelake.faces.stages import FACE_ID_FIELDS
from facelake.hyperface.references import (
    DATASET,
    GALLERY_FIELDS,
    GALLERY_FILE,
    REFERENCE_FIELDS,
    SHARD_PATTERN,
)
from facelake.lake.catalog import CatalogSection, ViewSource, named_file
from facelake.vectors.spaces import embedding_schema

IMAGES = "images"
"""The generated images' artifact: ``{root}/hyperface/images/<variant>/``."""
IMAGES_INDEX = re.compile(r"shards/[0-9]+\.parquet")
"""The index parquet of each generation shard (beside its ``.tar`` and ``.done.json``)."""
GALLERY_SCHEMA = embedding_schema([*GALLERY_FIELDS, *FACE_ID_FIELDS])
"""The gallery's columns while none is committed (the LAION-Face id columns included)."""
REFERENCE_SCHEMA = embedding_schema(REFERENCE_FIELDS)


def hyperface_section(images_schema: pa.Schema) -> CatalogSection:
    """The HyperFace section, its ``hyperface_images`` view having ``images_schema`` while empty."""
    return CatalogSection(
        DATASET,
        "hyperface_views.sql",
        (
            ViewSource("gallery_source", "gallery", named_file(GALLERY_FILE), GALLERY_SCHEMA),
            ViewSource(
                "reference_source",
                "reference_embeddings",
                re.compile(r"(.*/)?" + SHARD_PATTERN.pattern.strip("^$")),
                REFERENCE_SCHEMA,
            ),
            ViewSource("images_source", IMAGES, IMAGES_INDEX, images_schema),
        ),
    )
