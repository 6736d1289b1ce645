"""Where a variant's curation stages live: ``{root}/hyperface/{aligned,identity_audit,leakage,dataset}/{variant}/``."""

from __future__ import annotations

from facelake.hyperface.references import DATASET
from facelake.lake.commit import PartitionArtifact
from facelake.lake.storage import Storage


def aligned_artifact(storage: Storage, variant: str) -> PartitionArtifact:
    """The aligned 112x112 crops of a variant's generated images, and the excluded ones."""
    return PartitionArtifact(storage, DATASET, "aligned", variant)


def audit_artifact(storage: Storage, variant: str) -> PartitionArtifact:
    """The identity audit: per-image embeddings and cosines, per-identity statistics, plots."""
    return PartitionArtifact(storage, DATASET, "identity_audit", variant)


def leakage_artifact(storage: Storage, variant: str) -> PartitionArtifact:
    """The generated x real pairs found by the leakage search."""
    return PartitionArtifact(storage, DATASET, "leakage", variant)


def dataset_artifact(storage: Storage, variant: str) -> PartitionArtifact:
    """The cleaned training set in both layouts (folders per identity, webdataset shards)."""
    return PartitionArtifact(storage, DATASET, "dataset", variant)
