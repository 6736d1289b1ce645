"""Where the CLIP artifacts live, the files the index and near-duplicate assets write, and the CLIP section of
the catalog (views in ``sql/clip_views.sql``).

Every CLIP artifact lives under ``{root}/clip/<asset name>/<partition>/`` (:func:`clip_artifact`), whatever
image asset it was computed from, so a reader needs only the asset's name: ``laion_face_clip_embeddings/00000``,
``celebahq_clip_embeddings/all``, ``laion_face_clip_index/00000``, ``clip_near_duplicates/all``. An embeddings
asset ``<x>_clip_embeddings`` has its index in ``<x>_clip_index`` (:func:`index_asset_name`).

Views (each has ``asset`` and ``part`` columns):

- ``clip_embeddings_metadata``: one row per embedded image (clip-retrieval's ``metadata_<i>.parquet``:
  image_path, caption, url, SAMPLE_ID, width, height and the space columns) plus ``shard_id`` (the ``i``);
- ``clip_spaces``: one row per committed embeddings partition: its space, random_init and image count;
- ``clip_index``: one row per index partition: exact or faiss, why, the faiss parameters and recall@10;
- ``clip_index_probe_hits``: the hits of the probe prompts shown on the index's contact sheets;
- ``clip_near_duplicates_keep`` / ``_groups`` / ``_pairs``: the keep-list, the groups, every pair above the
  threshold (with ``source_asset``/``source_part`` of each image).

Tables ``clip_partitions`` and ``clip_files`` (:mod:`facelake.lake.catalog`).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from facelake.lake.catalog import CatalogSection, ViewSource, named_file
from facelake.lake.commit import PartitionArtifact
from facelake.lake.storage import Storage
from facelake.vectors.spaces import CONFIG_COLUMN, PROVENANCE_FIELDS

DATASET = "clip"
EMBEDDINGS_SUFFIX = "_clip_embeddings"
INDEX_SUFFIX = "_clip_index"
NEAR_DUPLICATES = "clip_near_duplicates"
EMBEDDING_ASSETS = ("laion_face_clip_embeddings", "celebahq_clip_embeddings", "sfhq_clip_embeddings")
"""Embedding assets the catalog shows (a view over an asset not yet defined is empty); adding one is one
entry here and one ``UNION ALL BY NAME`` line in ``sql/clip_views.sql``."""
INDEX_ASSETS = ("laion_face_clip_index",)
"""Index assets the catalog shows (same rule)."""

INDEX_SUMMARY_FILE = "index.parquet"
PROBE_HITS_FILE = "probe_hits.parquet"
KEEP_FILE = "keep.parquet"
GROUPS_FILE = "groups.parquet"
PAIRS_FILE = "pairs.parquet"

SPACE_SCHEMA = [*PROVENANCE_FIELDS, (CONFIG_COLUMN, pa.string())]
IDENTITY_SCHEMA = [
    ("image_path", pa.string()),
    ("caption", pa.string()),
    ("url", pa.string()),
    ("SAMPLE_ID", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
]
METADATA_SCHEMA = pa.schema(IDENTITY_SCHEMA + SPACE_SCHEMA)
"""clip-retrieval's ``metadata_<i>.parquet`` as :func:`facelake.clip.layout.metadata_table` writes it."""
INDEX_SUMMARY_SCHEMA = pa.schema(
    [
        ("embeddings", pa.string()),
        ("part", pa.string()),
        ("rows", pa.int64()),
        ("dimension", pa.int64()),
        ("method", pa.string()),
        ("reason", pa.string()),
        ("exact_search_max_rows", pa.int64()),
        ("nlist", pa.int64()),
        ("nprobe", pa.int64()),
        ("recall_at_10", pa.float64()),
        ("recall_target", pa.float64()),
        ("build_seconds", pa.float64()),
        ("space", pa.string()),
        ("random_init", pa.bool_()),
        ("warning", pa.string()),
    ]
)
"""One row per index partition: exact (no index needed) or faiss, and how the index was chosen."""
PROBE_HITS_SCHEMA = pa.schema(
    [
        ("query", pa.string()),
        ("rank", pa.int32()),
        ("score", pa.float64()),
        ("row", pa.int64()),
        ("method", pa.string()),
        *IDENTITY_SCHEMA,
    ]
)
KEEP_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("source", pa.string()),
        ("image_path", pa.string()),
        ("SAMPLE_ID", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
GROUPS_SCHEMA = pa.schema(
    [
        ("group", pa.int64()),
        ("kept", pa.bool_()),
        ("kept_row", pa.int64()),
        ("similarity_to_kept", pa.float64()),
        *KEEP_SCHEMA,
    ]
)
PAIRS_SCHEMA = pa.schema(
    [
        ("row_a", pa.int64()),
        ("row_b", pa.int64()),
        ("image_path_a", pa.string()),
        ("image_path_b", pa.string()),
        ("similarity", pa.float64()),
        ("source_a", pa.string()),
        ("source_b", pa.string()),
    ]
)


def clip_artifact(storage: Storage, asset: str, part: str = "all") -> PartitionArtifact:
    """The partition ``part`` of the CLIP asset ``asset``: ``{root}/clip/{asset}/{part}/``."""
    if not re.fullmatch(r"[a-z0-9_]+", asset):
        raise ValueError(f"CLIP asset names are lower-case words joined by '_', got {asset!r}")
    return PartitionArtifact(storage, DATASET, asset, part)


def index_asset_name(embeddings: str) -> str:
    """The index asset of an embeddings asset: ``<x>_clip_embeddings`` → ``<x>_clip_index``."""
    if not embeddings.endswith(EMBEDDINGS_SUFFIX):
        raise ValueError(f"an embeddings asset name ends in {EMBEDDINGS_SUFFIX!r}, got {embeddings!r}")
    return embeddings[: -len(EMBEDDINGS_SUFFIX)] + INDEX_SUFFIX


def rows_by_shard(parts: list[tuple[str, int]], keys: list[str], rows: list[int]) -> dict[int, set[str]]:
    """Input shard id → the keys of ``rows`` of a layout whose parts (clip-retrieval's ``i``, in order, with
    their row counts) are ``parts``: row ``r`` lies in part ``i``, made from input shard ``i``."""
    ends = np.cumsum([count for _, count in parts])
    names = [int(name) for name, _ in parts]
    wanted: dict[int, set[str]] = {}
    for row in rows:
        shard = names[int(np.searchsorted(ends, int(row), side="right"))]
        wanted.setdefault(shard, set()).add(keys[int(row)])
    return wanted


def source_name(asset: str, part: str) -> str:
    """How near-duplicate tables name one embeddings partition: ``asset:part``."""
    return f"{asset}:{part}"


CLIP = CatalogSection(
    DATASET,
    "clip_views.sql",
    (
        *(
            ViewSource(
                f"{asset}_metadata", asset, re.compile(r"metadata/metadata_[0-9]+\.parquet"), METADATA_SCHEMA
            )
            for asset in EMBEDDING_ASSETS
        ),
        *(
            ViewSource(f"{asset}_summary", asset, named_file(INDEX_SUMMARY_FILE), INDEX_SUMMARY_SCHEMA)
            for asset in INDEX_ASSETS
        ),
        *(
            ViewSource(f"{asset}_probe_hits", asset, named_file(PROBE_HITS_FILE), PROBE_HITS_SCHEMA)
            for asset in INDEX_ASSETS
        ),
        ViewSource("near_duplicates_keep", NEAR_DUPLICATES, named_file(KEEP_FILE), KEEP_SCHEMA),
        ViewSource("near_duplicates_groups", NEAR_DUPLICATES, named_file(GROUPS_FILE), GROUPS_SCHEMA),
        ViewSource("near_duplicates_pairs", NEAR_DUPLICATES, named_file(PAIRS_FILE), PAIRS_SCHEMA),
    ),
)
"""The CLIP section of the catalog (:mod:`facelake.catalog`)."""
