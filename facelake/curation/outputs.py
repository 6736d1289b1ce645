"""Writing a curation stage's small outputs (parquet tables, PNGs, JSON) inside a commit attempt, and reading
them back from a committed partition by name."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from facelake.lake.commit import Attempt, CommitOutcome, FileEntry, PartitionArtifact
from facelake.lake.tables import read_parquet, write_parquet


def write_table(attempt: Attempt, name: str, table: pa.Table) -> FileEntry:
    """``table`` as the attempt's parquet file ``name``, described for the manifest (rows, size, sha256)."""
    uri = attempt.uri(name)
    written = write_parquet(attempt.artifact.storage, uri, table)
    return FileEntry(
        attempt.artifact.storage.relative(uri, attempt.artifact.prefix),
        written["size"],
        written["sha256"],
        table.num_rows,
    )


def write_file(attempt: Attempt, name: str, data: bytes) -> FileEntry:
    """Bytes (a PNG) as the attempt's file ``name``, described for the manifest."""
    uri = attempt.uri(name)
    attempt.artifact.storage.write_bytes(uri, data)
    relative = attempt.artifact.storage.relative(uri, attempt.artifact.prefix)
    return FileEntry(relative, len(data), hashlib.sha256(data).hexdigest())


def write_json(attempt: Attempt, name: str, value: Any) -> FileEntry:
    """A JSON document (sorted keys) as the attempt's file ``name``."""
    return write_file(attempt, name, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def committed_uri(artifact: PartitionArtifact, name: str) -> str | None:
    """The URI of the committed file whose base name is ``name`` (None when the manifest lists none)."""
    for entry in artifact.require_manifest().files:
        if entry.path.rsplit("/", 1)[-1] == name:
            return artifact.uri(entry.path)
    return None


def committed_table(artifact: PartitionArtifact, name: str) -> pa.Table:
    """The committed parquet file ``name`` of a partition; raises ``FileNotFoundError`` naming it if absent."""
    uri = committed_uri(artifact, name)
    if uri is None:
        raise FileNotFoundError(f"{artifact.prefix}: the committed partition lists no {name}")
    return read_parquet(artifact.storage, uri)


def committed_bytes(artifact: PartitionArtifact, name: str) -> bytes | None:
    """The committed file ``name`` of a partition (a PNG), or None."""
    uri = committed_uri(artifact, name)
    return None if uri is None else artifact.storage.read_bytes(uri)


def provenance_extra(random_init: bool, warning: str | None) -> dict[str, Any]:
    """The manifest ``extra`` keys that carry random weights upstream: ``random_init``, and ``warning`` if any."""
    return {"random_init": bool(random_init), **({"warning": warning} if warning else {})}


def outcome_metadata(outcome: CommitOutcome, facts: dict[str, Any]) -> dict[str, Any]:
    """``facts`` plus whether the partition was reused and the random-weights flag and warning of its manifest."""
    extra = outcome.manifest.extra
    out = {**facts, "partition_reused": outcome.reused, "random_init": bool(extra.get("random_init"))}
    if extra.get("warning"):
        out["warning"] = extra["warning"]
    return out
