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

from facelake.curation.aligned import ALIGNED_SCHEMA
from facelake.curation.audit import IDENTITIES_FILE, IDENTITIES_SCHEMA, IMAGES_FILE, IMAGES_SCHEMA
from facelake.curation.dataset import DATASET_SCHEMA, INDEX_FILE, REMOVED_FILE, REMOVED_SCHEMA
from facelake.curation.leakage import PAIRS_FILE, PAIRS_SCHEMA
from facelake.hyperface.references import DATASET
from facelake.lake.catalog import CatalogSection, ViewSource, named_file

CURATION = CatalogSection(
    DATASET,
    "curation_views.sql",
    (
        ViewSource("aligned_source", "aligned", re.compile(r"shards/[0-9]+\.parquet"), ALIGNED_SCHEMA),
        ViewSource("audit_images_source", "identity_audit", named_file(IMAGES_FILE), IMAGES_SCHEMA),
        ViewSource(
            "audit_identities_source", "identity_audit", named_file(IDENTITIES_FILE), IDENTITIES_SCHEMA
        ),
        ViewSource("pairs_source", "leakage", named_file(PAIRS_FILE), PAIRS_SCHEMA),
        ViewSource("dataset_source", "dataset", named_file(INDEX_FILE), DATASET_SCHEMA),
        ViewSource("removed_source", "dataset", named_file(REMOVED_FILE), REMOVED_SCHEMA),
    ),
)
