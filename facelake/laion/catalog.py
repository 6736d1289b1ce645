"""The LAION-Face section of the catalog (views in ``sql/laion_face_views.sql``) and its per-part report.

Views (the names are the contract; each has a ``part`` column):

- ``laion_face_meta``: the LAION-Face rows of laion400m-meta of every committed part;
- ``laion_face_samples``: one row per SAMPLE_ID per part, the download's final status (``samples.parquet``);
- ``laion_face_download``: img2dataset's rows of the committed shards (one per attempt), plus ``shard_id``;
- ``laion_face_detections``: the released detections, one row per face;
- ``laion_face_detected``: our own RetinaFace detections (``laion_face_detected``), one row per face;
- ``laion_face_embeddings``: identity embeddings of our detected faces, with the embedder's provenance.

The identity clusters of the embeddings (``laion_face_identity_clusters``, ``laion_face_identity_centroids``)
are :mod:`facelake.clusters.catalog`'s views over this dataset folder.

Tables ``laion_face_partitions`` and ``laion_face_files`` (:mod:`facelake.lake.catalog`);
``sql/laion_face_report.sql`` is the per-part report (:func:`run_report`).
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa

from facelake.faces.detection_table import DETECTIONS_SCHEMA
from facelake.faces.stages import DETECTED_SCHEMA, EMBEDDED_SCHEMA
from facelake.laion.artifacts import DATASET
from facelake.laion.download_accounting import RESOLVED_SCHEMA
from facelake.laion.formats import LAION400M_META_SCHEMA, LAION_PARTS
from facelake.lake.catalog import CatalogSection, ViewSource, query, sql_path

REPORT_SQL = "laion_face_report.sql"

SHARD_TABLES = re.compile(r"(.*/)?shards/[0-9]+\.parquet")
"""One parquet per webdataset shard: img2dataset's, and a per-shard stage's (:mod:`facelake.lake.shard_stage`)."""
# What img2dataset writes to ``NNNNN.parquet`` with the LAION-Face download options.
IMG2DATASET_SHARD_SCHEMA = pa.schema(
    [
        ("NSFW", pa.string()),
        ("similarity", pa.float64()),
        ("LICENSE", pa.string()),
        ("SAMPLE_ID", pa.int64()),
        ("caption", pa.string()),
        ("url", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
    ]
)
LAION_FACE = CatalogSection(
    DATASET,
    "laion_face_views.sql",
    (
        ViewSource("meta_source", "meta", re.compile(r".*\.parquet"), LAION400M_META_SCHEMA),
        ViewSource("samples_source", "images", re.compile(r"(.*/)?samples\.parquet"), RESOLVED_SCHEMA),
        ViewSource("download_source", "images", SHARD_TABLES, IMG2DATASET_SHARD_SCHEMA),
        ViewSource("detections_source", "detections", re.compile(r".*\.parquet"), DETECTIONS_SCHEMA),
        ViewSource("detected_source", "detected", SHARD_TABLES, DETECTED_SCHEMA),
        ViewSource("embeddings_source", "embeddings", SHARD_TABLES, EMBEDDED_SCHEMA),
    ),
    tuple(LAION_PARTS),
)


def run_report(conn: duckdb.DuckDBPyConnection) -> pa.Table:
    """The per-part LAION-Face report (``sql/laion_face_report.sql``): one row per part, sorted."""
    return query(conn, sql_path(REPORT_SQL).read_text())
