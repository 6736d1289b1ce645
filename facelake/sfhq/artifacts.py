"""Where SFHQ's outputs live in the lake, and writing a stage's tables into a commit attempt.

``{root}/sfhq/{artifact}/{part}/`` (DESIGN §3), one partition per part:

- ``index``: ``index.parquet`` (name + a flag per modality) and ``problems.parquet`` (missing, orphan,
  unexpected files);
- ``landmarks``: ``landmarks.parquet`` and ``problems.parquet``;
- ``segmentations``: ``segmentations.parquet`` and ``problems.parquet``;
- ``clip_features``: the clip-retrieval layout (written by the CLIP stage's writer) and ``problems.parquet``;
- ``face_embeddings``: ``embeddings.parquet``, ``no_face.parquet`` and ``problems.parquet``;
- ``report``: ``report.html`` (self-contained) and the plots as PNG files.

:func:`write_tables` writes named tables into an attempt and returns the
:class:`facelake.lake.commit.Written` that :func:`facelake.lake.commit.materialize_partition` commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facelake.lake.commit import Attempt, PartitionArtifact, Written
from facelake.lake.storage import Storage
from facelake.sfhq.layout import problem_counts
from facelake.sfhq.settings import check_part

DATASET = "sfhq"
INDEX, LANDMARKS, SEGMENTATIONS, CLIP_FEATURES, FACE_EMBEDDINGS, REPORT = (
    "index",
    "landmarks",
    "segmentations",
    "clip_features",
    "face_embeddings",
    "report",
)
ARTIFACTS = (INDEX, LANDMARKS, SEGMENTATIONS, CLIP_FEATURES, FACE_EMBEDDINGS, REPORT)
INDEX_FILE = "index.parquet"
PROBLEMS_FILE = "problems.parquet"
LANDMARKS_FILE = "landmarks.parquet"
SEGMENTATIONS_FILE = "segmentations.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"
NO_FACE_FILE = "no_face.parquet"
REPORT_FILE = "report.html"


def artifact(storage: Storage, name: str, part: str) -> PartitionArtifact:
    """The partition of SFHQ artifact ``name`` (one of :data:`ARTIFACTS`) for ``part``."""
    if name not in ARTIFACTS:
        raise ValueError(f"unknown SFHQ artifact {name!r}: expected one of {ARTIFACTS}")
    return PartitionArtifact(storage, DATASET, name, check_part(part))


def face_embeddings_artifact(storage: Storage, part: str) -> PartitionArtifact:
    """``{root}/sfhq/face_embeddings/{part}/`` (the locator a HyperFace gallery source takes)."""
    return artifact(storage, FACE_EMBEDDINGS, part)


def write_table(storage: Storage, uri: str, table: pa.Table) -> None:
    """One parquet file (zstd) through the storage."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def write_tables(
    attempt: Attempt,
    tables: Mapping[str, pa.Table],
    *,
    rows_from: str | None = None,
    extra: Mapping[str, Any] | None = None,
    files: Mapping[str, bytes] | None = None,
) -> Written:
    """Write ``tables`` (file name -> table) and raw ``files`` (file name -> bytes) into the attempt.

    The manifest's rows are ``rows_from``'s row count (default: the first table's); its extra holds
    ``extra`` plus, for a ``problems.parquet`` table, the problem counts by kind (``problems``)."""
    storage = attempt.artifact.storage
    entries = []
    for name, table in tables.items():
        uri = attempt.uri(name)
        write_table(storage, uri, table)
        entries.append(attempt.entry(uri, rows=table.num_rows))
    for name, data in (files or {}).items():
        uri = attempt.uri(name)
        storage.write_bytes(uri, data)
        entries.append(attempt.entry(uri))
    summary = dict(extra or {})
    if PROBLEMS_FILE in tables:
        summary["problems"] = problem_counts(tables[PROBLEMS_FILE])
        summary["problem_rows"] = tables[PROBLEMS_FILE].num_rows
    counted = rows_from or next(iter(tables), None)
    rows = tables[counted].num_rows if counted is not None else None
    return Written(entries, rows=rows, extra=summary)
