"""The SFHQ section of the catalog: views over the committed ``{root}/sfhq/<artifact>/<part>/`` tables
(``sql/sfhq_views.sql``).

Views (each has a ``part`` column, the SFHQ part ``1``..``4``):

- ``sfhq_index``: one row per name seen in any of the part's folders, with a flag per modality;
- ``sfhq_problems``: every file a stage could not use (``stage``: index, landmarks, segmentations,
  clip_features, face_embeddings), by name, modality, file, kind and reason;
- ``sfhq_landmarks``: the 110 points, face box, validity and eye-line measures per image;
- ``sfhq_segmentations``: class fractions, eye centroids, inter-ocular distance, roll and hairline measures;
- ``sfhq_clip_features``: the clip-retrieval metadata rows of the shipped features (image_path, name, the
  embedding space) with ``shard_id`` (the ``img_emb_<i>.npy`` holding the row's vector);
- ``sfhq_near_duplicates``: every pair of images whose features exceed the claim's threshold;
- ``sfhq_face_embeddings`` / ``sfhq_no_face``: the largest face's identity embedding per image, and the
  images without a face;
- ``sfhq_parts``: per committed part, names, complete images and problems by stage.

Tables ``sfhq_partitions`` and ``sfhq_files`` (:mod:`facelake.lake.catalog`).
"""

from __future__ import annotations

import re

import pyarrow as pa

from facelake.faces.primary import primary_embeddings_schema
from facelake.lake.catalog import CatalogSection, ViewSource, named_file
from facelake.sfhq.artifacts import (
    CLIP_FEATURES,
    DATASET,
    EMBEDDINGS_FILE,
    FACE_EMBEDDINGS,
    INDEX,
    INDEX_FILE,
    LANDMARKS,
    LANDMARKS_FILE,
    NO_FACE_FILE,
    PROBLEMS_FILE,
    SEGMENTATIONS,
    SEGMENTATIONS_FILE,
)
from facelake.sfhq.faces import NAME_COLUMN, NO_FACE_SCHEMA
from facelake.sfhq.landmarks import LANDMARKS_SCHEMA
from facelake.sfhq.layout import INDEX_SCHEMA, PROBLEMS_SCHEMA
from facelake.sfhq.segmentation import SEGMENTATION_SCHEMA
from facelake.sfhq.settings import PARTS

PAIRS_FILE = "near_duplicate_pairs.parquet"
"""The pairs of images whose features exceed the near-duplicate threshold (in ``clip_features``)."""
STAGES = (INDEX, LANDMARKS, SEGMENTATIONS, CLIP_FEATURES, FACE_EMBEDDINGS)
"""The artifacts that write a ``problems.parquet``."""

PAIRS_SCHEMA = pa.schema(
    [
        ("name_a", pa.string()),
        ("name_b", pa.string()),
        ("similarity", pa.float64()),
        ("row_a", pa.int64()),
        ("row_b", pa.int64()),
    ]
)
FACE_EMBEDDINGS_SCHEMA = primary_embeddings_schema(NAME_COLUMN)


def sfhq_section(clip_metadata_schema: pa.Schema) -> CatalogSection:
    """The SFHQ section; its shipped features' metadata view has the CLIP stage's ``clip_metadata_schema``
    plus ``name`` while empty (the CLIP layout belongs to ``clip``, a layer above: the composition passes it)."""
    return CatalogSection(
        DATASET,
        "sfhq_views.sql",
        (
            ViewSource("index_source", INDEX, named_file(INDEX_FILE), INDEX_SCHEMA),
            *(
                ViewSource(f"{stage}_problems", stage, named_file(PROBLEMS_FILE), PROBLEMS_SCHEMA)
                for stage in STAGES
            ),
            ViewSource("landmarks_source", LANDMARKS, named_file(LANDMARKS_FILE), LANDMARKS_SCHEMA),
            ViewSource(
                "segmentations_source", SEGMENTATIONS, named_file(SEGMENTATIONS_FILE), SEGMENTATION_SCHEMA
            ),
            ViewSource(
                "clip_features_source",
                CLIP_FEATURES,
                re.compile(r"metadata/metadata_[0-9]+\.parquet"),
                clip_metadata_schema.append(pa.field("name", pa.string())),
            ),
            ViewSource("near_duplicates_source", CLIP_FEATURES, named_file(PAIRS_FILE), PAIRS_SCHEMA),
            ViewSource(
                "face_embeddings_source", FACE_EMBEDDINGS, named_file(EMBEDDINGS_FILE), FACE_EMBEDDINGS_SCHEMA
            ),
            ViewSource("no_face_source", FACE_EMBEDDINGS, named_file(NO_FACE_FILE), NO_FACE_SCHEMA),
        ),
        PARTS,
    )
