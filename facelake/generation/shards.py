"""Generated images as webdataset shards: ``shards/NNNNN.tar`` (``<key>.jpg`` + ``<key>.json``) with an index.

Each generation shard is three files under the partition's ``shards/`` folder: the tar, the index parquet
(one row per image: key, sample_id, identity, index, seeds, β, generator provenance, identity space) whose
schema metadata records the tar's size and sha256, and the shard manifest ``NNNNN.done.json`` that
:func:`facelake.lake.shard_stage.run_shard_stage` writes last. Tars are byte-deterministic (sorted members,
fixed mtime/owner), so a regenerated shard equals the original on the same hardware.

Keys are ``{identity_index:07d}-{index:04d}`` (no dots: webdataset splits the key at the first dot); the
json carries the full ``identity_id``. ``sample_id = identity_index * images_per_identity + index``, so the
shards read back as :class:`facelake.lake.webdataset_reader.ImageShard` for the later face stages.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from facelake.lake.commit import Attempt, FileEntry, PartitionArtifact
from facelake.lake.errors import InputError
from facelake.lake.hashing import combine_hashes
from facelake.lake.shard_stage import DONE_SUFFIX, read_stage_table, shard_name
from facelake.lake.storage import Storage
from facelake.lake.webdataset_reader import ImageShard

OUT_DIR = "shards"
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sample_id", pa.int64()),
        ("shard", pa.int64()),
        ("variant", pa.string()),
        ("identity_id", pa.string()),
        ("identity_index", pa.int64()),
        ("index", pa.int32()),
        ("latent_seed", pa.int64()),
        ("embedding_seed", pa.int64()),
        ("beta", pa.float32()),
        ("noise_cosine", pa.float32()),
        ("generator_weights_sha256", pa.string()),
        ("generator_random_init", pa.bool_()),
        ("generator_mode", pa.string()),
        ("scheduler", pa.string()),
        ("steps", pa.int32()),
        ("guidance", pa.float32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("embedder_name", pa.string()),
        ("embedder_dimension", pa.int64()),
        ("embedder_weights_sha256", pa.string()),
        ("embedder_random_init", pa.bool_()),
        ("embedder_same_identity_cosine_distance", pa.float64()),
    ]
)
"""One row per generated image in ``shards/NNNNN.parquet`` (the catalog's view source): ids, seeds, beta,
``noise_cosine`` = cos(x, x'), the generator's provenance and the identity space of the variant."""
TAR_SIZE, TAR_SHA256, TAR_PATH = b"facelake.tar_size", b"facelake.tar_sha256", b"facelake.tar_path"
_TAR_FILE = re.compile(r"^(\d+)\.tar$")


def image_key(identity_index: int, index: int) -> str:
    """The webdataset key of one generated image."""
    return f"{int(identity_index):07d}-{int(index):04d}"


def tar_name(shard_id: int) -> str:
    return f"{shard_name(shard_id)}.tar"


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """An RGB uint8 ``[H, W, 3]`` image as JPEG bytes (deterministic for the same pixels and quality)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class TarBuilder:
    """An in-memory webdataset tar, members in insertion order with fixed metadata (byte-deterministic)."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(  # noqa: SIM115 - closed by finish()
            fileobj=self._buffer, mode="w", format=tarfile.USTAR_FORMAT
        )
        self.count = 0

    def add(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: ``{extension: bytes}`` (e.g. ``jpg``, ``json``), written as ``<key>.<extension>``."""
        for extension, data in files.items():
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def finish(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()


def sample_json(record: dict[str, Any]) -> bytes:
    """The ``.json`` member of one image: sorted keys, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode()


def with_tar_metadata(table: pa.Table, tar_path: str, data: bytes) -> pa.Table:
    """The index table carrying its tar's relative path, size and sha256 in the schema metadata."""
    metadata = dict(table.schema.metadata or {})
    metadata.update(
        {
            TAR_PATH: tar_path.encode(),
            TAR_SIZE: str(len(data)).encode(),
            TAR_SHA256: hashlib.sha256(data).hexdigest().encode(),
        }
    )
    return table.replace_schema_metadata(metadata)


@dataclass(frozen=True)
class TarRecord:
    """What a shard's index says about its tar."""

    path: str  # relative to the partition prefix
    size: int
    sha256: str

    def entry(self) -> FileEntry:
        return FileEntry(self.path, self.size, self.sha256)


def index_tar_record(storage: Storage, parquet_uri: str) -> TarRecord:
    """The tar record in an index parquet's schema metadata (reads the footer only)."""
    try:
        with storage.open(parquet_uri, "rb") as handle:
            metadata = pq.read_schema(handle).metadata or {}
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(parquet_uri, f"unreadable generation index: {error}") from error
    if not {TAR_PATH, TAR_SIZE, TAR_SHA256} <= set(metadata):
        raise InputError(parquet_uri, "generation index lacks its tar's path, size and sha256")
    return TarRecord(metadata[TAR_PATH].decode(), int(metadata[TAR_SIZE]), metadata[TAR_SHA256].decode())


def tar_is_whole(storage: Storage, prefix: str, record: TarRecord) -> bool:
    """The tar the index names exists with the recorded size."""
    try:
        return storage.size(f"{prefix}/{record.path}") == record.size
    except FileNotFoundError:
        return False


def drop_incomplete_tar_shards(
    attempt: Attempt, shard_ids: Sequence[int], out_dir: str = OUT_DIR
) -> list[int]:
    """Drop the shard manifest of every committed shard whose tar is missing or truncated, so the shard stage
    redoes it; returns those shard ids."""
    storage, prefix = attempt.artifact.storage, attempt.artifact.prefix
    dropped = []
    for shard_id in sorted(shard_ids):
        done = f"{prefix}/{out_dir}/{shard_name(shard_id)}{DONE_SUFFIX}"
        parquet = f"{prefix}/{out_dir}/{shard_name(shard_id)}.parquet"
        if not storage.exists(done):
            continue
        try:
            whole = tar_is_whole(storage, prefix, index_tar_record(storage, parquet))
        except (InputError, FileNotFoundError):
            whole = False
        if not whole:
            storage.rm(done, recursive=False)
            dropped.append(shard_id)
    return dropped


def committed_tar_entries(attempt: Attempt, files: Sequence[FileEntry]) -> list[FileEntry]:
    """The tar of every committed shard index among ``files`` (a shard stage's), as its index records it,
    checked present and whole."""
    storage, prefix = attempt.artifact.storage, attempt.artifact.prefix
    entries = []
    for entry in files:
        if not entry.path.endswith(".parquet"):
            continue
        record = index_tar_record(storage, f"{prefix}/{entry.path}")
        if not tar_is_whole(storage, prefix, record):
            raise InputError(
                f"{prefix}/{record.path}", "shard tar missing or truncated after its shard committed"
            )
        entries.append(record.entry())
    return entries


def committed_tars(artifact: PartitionArtifact) -> dict[int, str]:
    """Shard id -> tar URI of every generated tar the committed manifest lists."""
    manifest = artifact.require_manifest()
    tars = {}
    for entry in manifest.files:
        folder, _, name = entry.path.rpartition("/")
        match = _TAR_FILE.match(name)
        if folder == OUT_DIR and match:
            tars[int(match.group(1))] = artifact.uri(entry.path)
    return tars


def read_generated_index(
    storage: Storage, artifact: PartitionArtifact, columns: list[str] | None = None
) -> pa.Table:
    """Every committed shard's index rows (one per image), in shard order."""
    return read_stage_table(storage, artifact, OUT_DIR, columns=columns)


def generated_image_shards(storage: Storage, artifact: PartitionArtifact) -> list[ImageShard]:
    """The committed shards as :class:`ImageShard` (sample ids and keys from the index), for
    :func:`facelake.lake.webdataset_reader.iter_shard_images` and the face stages built on it."""
    tars = committed_tars(artifact)
    index = read_generated_index(storage, artifact, columns=["shard", "sample_id", "key"])
    shards = []
    shard_of = np.asarray(index["shard"].to_pylist() if index.num_rows else [], np.int64)
    all_keys = index["key"].to_pylist() if index.num_rows else []
    all_ids = np.asarray(index["sample_id"].to_pylist() if index.num_rows else [], np.int64)
    for shard_id, uri in sorted(tars.items()):
        rows = sorted(np.flatnonzero(shard_of == shard_id).tolist(), key=all_keys.__getitem__)
        keys = tuple(all_keys[r] for r in rows)
        ids = all_ids[rows] if rows else np.zeros(0, np.int64)
        fingerprint = combine_hashes([uri, ids.tobytes().hex(), *keys])
        shards.append(ImageShard(shard_id, uri, ids, keys, fingerprint))
    return shards


def iter_tar_samples(storage: Storage, tar_uri: str) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """(key, jpg bytes, parsed json) of a generated tar, streamed in tar order."""
    current: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with storage.open(tar_uri, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.rsplit("/", 1)[-1].partition(".")
                if key != current:
                    if current is not None and {"jpg", "json"} <= set(parts):
                        yield current, parts["jpg"], json.loads(parts["json"])
                    current, parts = key, {}
                parts[extension] = tar.extractfile(member).read()  # type: ignore[union-attr]
            if current is not None and {"jpg", "json"} <= set(parts):
                yield current, parts["jpg"], json.loads(parts["json"])
    except (tarfile.TarError, EOFError, ValueError) as error:
        raise InputError(tar_uri, f"unreadable generated tar: {error}") from error


def decode_images(jpegs: Sequence[bytes]) -> list[np.ndarray]:
    """JPEG bytes as RGB uint8 arrays."""
    return [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in jpegs]
