"""Where each LAION-Face artifact lives under the storage root: ``{root}/laion_face/{artifact}/{part}/``."""

from __future__ import annotations

from facelake.laion.formats import LAION_PARTS
from facelake.lake.commit import PartitionArtifact
from facelake.lake.errors import UnknownPartitionError
from facelake.lake.storage import Storage

DATASET = "laion_face"


def part_index(key: str) -> int:
    """The integer part of a partition key ``00000``…``00031``; anything else is refused."""
    if key not in LAION_PARTS:
        raise UnknownPartitionError(key, "one of 00000…00031 (the laion400m metadata part numbers)")
    return int(key)


def part_artifact(storage: Storage, name: str, part: str) -> PartitionArtifact:
    """Artifact ``name`` of LAION part ``part`` (the key is checked)."""
    part_index(part)
    return PartitionArtifact(storage, DATASET, name, part)


def face_ids(storage: Storage) -> PartitionArtifact:
    return PartitionArtifact(storage, DATASET, "face_ids", "all")


def optout(storage: Storage) -> PartitionArtifact:
    return PartitionArtifact(storage, DATASET, "optout", "all")


def meta(storage: Storage, part: str) -> PartitionArtifact:
    return part_artifact(storage, "meta", part)


def images(storage: Storage, part: str) -> PartitionArtifact:
    return part_artifact(storage, "images", part)


def detections(storage: Storage, part: str) -> PartitionArtifact:
    return part_artifact(storage, "detections", part)


def detected(storage: Storage, part: str) -> PartitionArtifact:
    return part_artifact(storage, "detected", part)


def embeddings(storage: Storage, part: str) -> PartitionArtifact:
    return part_artifact(storage, "embeddings", part)


def committed_file(artifact: PartitionArtifact, suffix: str) -> str:
    """The one committed file of an artifact ending in ``suffix`` (raises if not committed)."""
    uris = artifact.file_uris(suffix=suffix)
    if len(uris) != 1:
        raise FileNotFoundError(
            f"{artifact.prefix}: expected one committed *{suffix} file, found {len(uris)}"
        )
    return uris[0]
