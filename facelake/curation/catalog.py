"""The curation section of the catalog: views over a variant's committed last-mile tables under
``{root}/hyperface/{aligned,identity_audit,leakage,dataset}/<variant>/`` (``sql/curation_views.sql``).

- ``hyperface_aligned``: one row per generated image, its ``status`` (aligned, no_face, several_faces,
  unreadable), faces found and the face carried into the 112x112 crop;
- ``hyperface_identity_audit``: one row per audited crop, its cosine to its own reference and to the nearest
  other identity, ``inconsistent``; ``hyperface_identity_audit_identities``: one row per identity;
- ``hyperface_leakage``: the generated x real pairs found (top-K per real set, above the threshold);
- ``hyperface_dataset``: one row per image kept in the cleaned training set (label, folder path, shard);
  ``hyperface_dataset_removed``: the aligned images left out and why.

All are empty unless generator weights are configured (their view comments say so). Each view has ``part``:
the variant.
"""

from __future__ import annotations

import re

import pyarrow as pa

from facelake.curation.aligned import ALIGNED_SCHEMA
from facelake.curation.audit import IDENTITIES_FILE, IMAGES_FILE
from facelake.curation.dataset import DATASET_SCHEMA, INDEX_FILE, REMOVED_FILE
from facelake.curation.leakage import PAIRS_FILE, PAIRS_SCHEMA
from facelake.hyperface.references import DATASET
from facelake.lake.catalog import CatalogSection, ViewSource, named_file

AUDIT_IMAGES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("identity_id", pa.string()),
        ("index", pa.int32()),
        ("own_cosine", pa.float64()),
        ("other_identity_id", pa.string()),
        ("other_cosine", pa.float64()),
        ("inconsistent", pa.bool_()),
        ("closer_to_other", pa.bool_()),
    ]
)
AUDIT_IDENTITIES_SCHEMA = pa.schema(
    [
        ("identity_id", pa.string()),
        ("images", pa.int64()),
        ("mean_cosine", pa.float64()),
        ("min_cosine", pa.float64()),
        ("inconsistent_images", pa.int64()),
        ("spread", pa.float64()),
        ("centroid_cosine", pa.float64()),
        ("nearest_identity_id", pa.string()),
        ("nearest_cosine", pa.float64()),
        ("margin", pa.float64()),
        ("separated", pa.bool_()),
    ]
)
"""The audit tables' columns while nothing is committed (:func:`facelake.curation.audit.audit_identities`)."""
REMOVED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("identity_id", pa.string()),
        ("index", pa.int32()),
        ("inconsistent", pa.bool_()),
        ("leaking", pa.bool_()),
    ]
)

CURATION = CatalogSection(
    DATASET,
    "curation_views.sql",
    (
        ViewSource("aligned_source", "aligned", re.compile(r"shards/[0-9]+\.parquet"), ALIGNED_SCHEMA),
        ViewSource("audit_images_source", "identity_audit", named_file(IMAGES_FILE), AUDIT_IMAGES_SCHEMA),
        ViewSource(
            "audit_identities_source", "identity_audit", named_file(IDENTITIES_FILE), AUDIT_IDENTITIES_SCHEMA
        ),
        ViewSource("pairs_source", "leakage", named_file(PAIRS_FILE), PAIRS_SCHEMA),
        ViewSource("dataset_source", "dataset", named_file(INDEX_FILE), DATASET_SCHEMA),
        ViewSource("removed_source", "dataset", named_file(REMOVED_FILE), REMOVED_SCHEMA),
    ),
)
