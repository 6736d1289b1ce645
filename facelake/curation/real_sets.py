"""The real embedding sets a leakage audit searches, by name, from what the lake has committed.

A name is one of :data:`REAL_SETS` (the committed artifact of that asset; partitioned ones contribute every
committed part, or ``name[part]`` one part) or a parquet URI with ``embedding`` and provenance columns (the
set is named by its file). LAION-Face parts bring their images (read by key from the part's committed
webdataset shards), so the leakage sheet draws a generated face beside the real one; the others draw grey.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import pyarrow as pa

from facelake.celebahq import dataset as celebahq
from facelake.curation.leakage import EmbeddingSet
from facelake.hyperface.references import SFHQ_TABLE, gallery_artifact, read_gallery
from facelake.laion import artifacts as laion
from facelake.laion.formats import LAION_PARTS
from facelake.lake.commit import PartitionArtifact
from facelake.lake.errors import FacelakeError, InputError
from facelake.lake.shard_stage import read_stage_table
from facelake.lake.storage import Storage
from facelake.lake.tables import read_input_parquet
from facelake.lake.webdataset_reader import ImageShard, iter_shard_images, part_image_shards
from facelake.sfhq import artifacts as sfhq
from facelake.sfhq.settings import PARTS as SFHQ_PARTS

GALLERY, CELEBAHQ, LAION, SFHQ = (
    "hyperface_gallery",
    "celebahq_face_embeddings",
    "laion_face_embeddings",
    "sfhq_face_embeddings",
)
REAL_SETS = (GALLERY, CELEBAHQ, LAION, SFHQ)
"""The asset names a real set may be given by (``laion_face_embeddings[00000]``: one part)."""

_NAMED = re.compile(r"^(?P<asset>[a-z_]+)(\[(?P<part>[^\]]+)\])?$")


def real_set_assets(names: Sequence[str]) -> list[str]:
    """The assets the named real sets are read from (for lineage); parquet URIs name none."""
    assets = []
    for name in names:
        match = _NAMED.match(name)
        if match and match["asset"] in REAL_SETS and match["asset"] not in assets:
            assets.append(match["asset"])
    return assets


def resolve_real_sets(
    storage: Storage, names: Sequence[str], expand: Callable[[str], str] = lambda uri: uri
) -> list[EmbeddingSet]:
    """One :class:`EmbeddingSet` per committed source the names give (``expand`` resolves table URIs).

    A named asset with nothing committed is an error naming it; so is an unknown name."""
    sets: list[EmbeddingSet] = []
    for name in names:
        match = _NAMED.match(name)
        if match is None or match["asset"] not in REAL_SETS:
            uri = expand(name)
            if not uri.endswith(".parquet"):
                raise FacelakeError(
                    f"real set {name!r}: expected one of {list(REAL_SETS)} or a .parquet table"
                )
            sets.append(
                EmbeddingSet(uri.rsplit("/", 1)[-1], read_input_parquet(storage, uri, "real embedding set"))
            )
            continue
        found = _asset_sets(storage, match["asset"], match["part"])
        if not found:
            raise FacelakeError(f"real set {name!r}: nothing committed; materialize {match['asset']} first")
        sets += found
    return sets


def real_set_fingerprints(
    storage: Storage, names: Sequence[str], expand: Callable[[str], str] = lambda uri: uri
) -> dict[str, str]:
    """What identifies the named sets' content: the committed manifests' content hashes of each named asset's
    parts, a table's storage fingerprint. A changed real set is a new leakage config."""
    prints: dict[str, str] = {}
    for name in names:
        match = _NAMED.match(name)
        if match is None or match["asset"] not in REAL_SETS:
            uri = expand(name)
            prints[name] = storage.fingerprint(uri) if storage.exists(uri) else "missing"
            continue
        for label, _, artifact in _asset_artifacts(storage, match["asset"], match["part"]):
            manifest = artifact.manifest()
            if manifest is not None:
                prints[label] = manifest.content_hash
    return prints


def _asset_artifacts(
    storage: Storage, asset: str, part: str | None
) -> list[tuple[str, str, PartitionArtifact]]:
    """(set name, partition, artifact) of every part the name covers, committed or not."""
    if asset == GALLERY:
        return [(GALLERY, "all", gallery_artifact(storage))]
    if asset == CELEBAHQ:
        return [(CELEBAHQ, "all", celebahq.embeddings_artifact(storage))]
    locate, parts = (
        (sfhq.face_embeddings_artifact, SFHQ_PARTS) if asset == SFHQ else (laion.embeddings, LAION_PARTS)
    )
    return [(f"{asset}[{p}]", p, locate(storage, p)) for p in ([part] if part else parts)]


def _asset_sets(storage: Storage, asset: str, part: str | None) -> list[EmbeddingSet]:
    sets = []
    for label, partition, artifact in _asset_artifacts(storage, asset, part):
        if artifact.manifest() is None:
            continue
        if asset == GALLERY:
            sets.append(EmbeddingSet(label, read_gallery(storage).table))
        elif asset == CELEBAHQ:
            uri = artifact.uri(celebahq.EMBEDDINGS_FILE)
            sets.append(
                EmbeddingSet(label, read_input_parquet(storage, uri, "celebahq embeddings"), "file_name")
            )
        elif asset == SFHQ:
            sets.append(EmbeddingSet(label, _committed_table(storage, artifact)))
        else:
            table = read_stage_table(storage, artifact)
            sets.append(EmbeddingSet(label, table, "key", laion_images_by_key(storage, partition)))
    return sets


def _committed_table(storage: Storage, artifact: PartitionArtifact, name: str = SFHQ_TABLE) -> pa.Table:
    """The one committed file called ``name`` of ``artifact``, read as a table."""
    paths = [f.path for f in artifact.require_manifest().files if f.path.rsplit("/", 1)[-1] == name]
    if len(paths) != 1:
        raise InputError(artifact.prefix, f"expected one committed {name}, found {len(paths)}")
    return read_input_parquet(storage, artifact.uri(paths[0]), f"{artifact.prefix} {name}")


def laion_images_by_key(storage: Storage, part: str) -> Callable[[Sequence[str]], Mapping[str, bytes]]:
    """The stored JPEG bytes of a LAION-Face part's images by webdataset key, reading only their shards."""

    def images(keys: Sequence[str]) -> dict[str, bytes]:
        wanted = set(keys)
        shards: list[ImageShard] = [
            s for s in part_image_shards(storage, laion.images(storage, part)) if wanted & set(s.keys)
        ]
        found: dict[str, bytes] = {}
        for shard in shards:
            for batch in iter_shard_images(storage, shard, decode=False):
                found.update({k: img for k, img in zip(batch.keys, batch.images, strict=True) if k in wanted})
        return found

    return images
