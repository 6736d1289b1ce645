"""What a lake holds, read from its manifests alone: one :class:`PartitionStatus` per partition folder.

Partition folders are ``{root}/{dataset}/{artifact}/{partition}/`` (found by
:func:`facelake.lake.catalog.partition_folders`). A folder with a ``_manifest.json`` is *committed* and its
rows, files and bytes are the manifest's; a folder without one (a crashed or running attempt, a lease only)
is *uncommitted*; a manifest that cannot be parsed is *unreadable*. Data files are never opened.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from facelake.lake.catalog import dataset_folders, partition_folders
from facelake.lake.commit import PartitionArtifact
from facelake.lake.storage import Storage

COMMITTED, UNCOMMITTED, UNREADABLE = "committed", "uncommitted", "unreadable"
READERS = 16
"""Manifests read at once (they are small; on S3 the latency dominates)."""


@dataclass(frozen=True)
class PartitionStatus:
    """One partition folder: its state and, when committed, what its manifest says."""

    dataset: str
    artifact: str
    partition: str
    state: str
    rows: int | None = None
    files: int | None = None
    bytes: int | None = None
    config_hash: str | None = None
    code_version: str | None = None
    content_hash: str | None = None
    created_at: str | None = None
    uri: str = ""
    error: str | None = None

    @property
    def asset(self) -> str:
        return f"{self.dataset}/{self.artifact}"

    @property
    def committed(self) -> bool:
        return self.state == COMMITTED

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "committed": self.committed}


def partition_status(artifact: PartitionArtifact) -> PartitionStatus:
    """The state of one partition folder, from its manifest (if any)."""
    where = {
        "dataset": artifact.dataset,
        "artifact": artifact.artifact,
        "partition": artifact.partition,
        "uri": artifact.prefix,
    }
    try:
        manifest = artifact.manifest()
    except (ValueError, TypeError, KeyError) as exc:
        return PartitionStatus(**where, state=UNREADABLE, error=f"{type(exc).__name__}: {exc}")
    if manifest is None:
        return PartitionStatus(**where, state=UNCOMMITTED)
    return PartitionStatus(
        **where,
        state=COMMITTED,
        rows=manifest.rows,
        files=len(manifest.files),
        bytes=sum(f.size for f in manifest.files),
        config_hash=manifest.config_hash,
        code_version=manifest.code_version,
        content_hash=manifest.content_hash,
        created_at=manifest.created_at,
    )


def lake_status(storage: Storage, datasets: list[str] | None = None) -> list[PartitionStatus]:
    """Every partition folder of the given datasets (default: every dataset folder under the root), sorted
    by dataset, artifact, partition."""
    names = dataset_folders(storage) if datasets is None else datasets
    folders = [artifact for name in names for artifact in partition_folders(storage, name)]
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        return list(pool.map(partition_status, folders))


def root_exists(storage: Storage) -> bool:
    """Whether the root is there: a local folder, or an S3 prefix holding at least one object."""
    return storage.fs.isdir(storage.root)


def totals(statuses: list[PartitionStatus]) -> dict[str, int]:
    """Partition counts by state and the committed rows, files and bytes."""
    committed = [s for s in statuses if s.committed]
    return {
        "partitions": len(statuses),
        "committed": len(committed),
        "uncommitted": sum(s.state == UNCOMMITTED for s in statuses),
        "unreadable": sum(s.state == UNREADABLE for s in statuses),
        "assets": len({s.asset for s in statuses}),
        "rows": sum(s.rows or 0 for s in committed),
        "files": sum(s.files or 0 for s in committed),
        "bytes": sum(s.bytes or 0 for s in committed),
    }
