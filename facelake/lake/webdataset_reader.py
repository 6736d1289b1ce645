"""Read the images of a downloaded LAION-Face part: its committed webdataset shards, success samples only.

What to read comes from the part's COMMITTED images manifest, never from listing the folder: the tars it
lists (``shards/NNNNN.tar``) and ``samples.parquet``, which holds one final status per SAMPLE_ID. Only the
samples whose status is ``success`` are yielded; a sample opted out after its download keeps its jpg in
the tar but is marked ``opted_out`` there, so it is never yielded.

A tar is streamed (``tarfile`` mode ``r|`` over :meth:`Storage.open`, local or S3), so memory holds a
few batches, never a shard. Images whose bytes do not decode are skipped and reported per batch, never fatal.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facelake.lake.commit import PartitionArtifact
from facelake.lake.errors import InputError
from facelake.lake.hashing import combine_hashes
from facelake.lake.images import decode_or_none
from facelake.lake.storage import Storage
from facelake.lake.tables import read_parquet

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SAMPLES_FILE = "samples.parquet"
SHARD_FILE = re.compile(r"^(\d+)(_stats\.json|\.[A-Za-z0-9]+)$")
"""img2dataset's per-shard file names: ``NNNNN.tar``, ``NNNNN.parquet``, ``NNNNN_stats.json``."""
CORRUPT = "corrupt image"
MISSING = "missing from tar"
# What PIL raises on bytes that are not a (complete, sane) image.


def shard_file_id(name: str) -> int | None:
    """The shard number of an img2dataset output file name, None for any other name."""
    match = SHARD_FILE.match(name)
    return int(match.group(1)) if match else None


def success_keys(storage: Storage, samples_uri: str) -> pa.Table:
    """(sample_id, shard_id, key) of a part's successful, not opted-out samples: what later stages read."""
    table = read_parquet(storage, samples_uri)
    return table.filter(pc.equal(table["status"], "success")).select(["sample_id", "shard_id", "key"])


@dataclass(frozen=True, eq=False)
class ImageShard:
    """One committed shard of a part and its successful samples, ordered by webdataset key."""

    shard_id: int
    tar_uri: str
    sample_ids: np.ndarray  # int64 [n]
    keys: tuple[str, ...]
    fingerprint: str  # tar size, sample ids and keys: changes when the shard's readable content does

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class SkippedSample:
    """A success sample that could not be yielded, and why (``corrupt image`` or ``missing from tar``)."""

    key: str
    sample_id: int
    reason: str


@dataclass(eq=False)
class ImageBatch:
    """Up to ``batch_size`` samples of one shard, in tar order.

    ``images`` are RGB uint8 arrays (h, w, 3), or the stored bytes when read with ``decode=False``;
    ``metadata`` the parsed json sidecars (None where absent or unreadable); ``skipped`` the samples passed
    over since the previous batch (the last batch also carries those at the shard's end).
    """

    shard_id: int
    sample_ids: np.ndarray
    keys: list[str]
    images: list[Any]
    metadata: list[dict[str, Any] | None]
    skipped: list[SkippedSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def part_image_shards(storage: Storage, images_artifact: PartitionArtifact) -> list[ImageShard]:
    """The committed shards of a downloaded part with their successful, not opted-out samples, by shard id.

    Every committed tar is listed, also one without successes (an empty shard), so a per-shard stage sees
    the whole part. A success pointing at a shard the manifest does not list is an :class:`InputError`.
    """
    manifest = images_artifact.require_manifest()
    samples = [f.path for f in manifest.files if f.path.rsplit("/", 1)[-1] == SAMPLES_FILE]
    if len(samples) != 1:
        raise InputError(images_artifact.manifest_uri, f"lists {len(samples)} {SAMPLES_FILE} files, not 1")
    samples_uri = images_artifact.uri(samples[0])
    tars = {}
    for entry in manifest.files:
        folder, _, name = entry.path.rpartition("/")
        shard_id = shard_file_id(name)
        if folder == "shards" and name.endswith(".tar") and shard_id is not None:
            tars[shard_id] = entry
    table = success_keys(storage, samples_uri)
    if table["key"].null_count or table["shard_id"].null_count:
        raise InputError(samples_uri, "a success sample has no key or shard_id")
    order = pc.sort_indices(table, [("shard_id", "ascending"), ("key", "ascending")])
    table = table.take(order)
    shard_of = table["shard_id"].to_numpy()
    unknown = sorted(set(np.unique(shard_of).tolist()) - set(tars))
    if unknown:
        raise InputError(
            samples_uri,
            f"success samples point at shards {unknown} that the committed manifest does not list",
        )
    ids = table["sample_id"].to_numpy().astype(np.int64)
    keys = table["key"].to_pylist()
    shards = []
    for shard_id, entry in sorted(tars.items()):
        lo, hi = np.searchsorted(shard_of, [shard_id, shard_id + 1]).tolist()
        shard_ids, shard_keys = ids[lo:hi], tuple(keys[lo:hi])
        fingerprint = combine_hashes([entry.path, str(entry.size), shard_ids.tobytes().hex(), *shard_keys])
        shards.append(
            ImageShard(shard_id, images_artifact.uri(entry.path), shard_ids, shard_keys, fingerprint)
        )
    return shards


def _parse_json(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _tar_samples(handle: Any, wanted: dict[str, int]) -> Iterator[tuple[str, bytes | None, bytes | None]]:
    """(key, image bytes, json bytes) of the wanted keys, streamed; a sample's files are consecutive."""
    current, parts = None, {}

    def flush() -> Iterator[tuple[str, bytes | None, bytes | None]]:
        if current is not None and "image" in parts:
            yield current, parts["image"], parts.get("json")

    with tarfile.open(fileobj=handle, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, extension = member.name.rsplit("/", 1)[-1].partition(".")
            if key not in wanted:
                continue
            if key != current:
                yield from flush()
                current, parts = key, {}
            extension = extension.lower()
            kind = "image" if extension in IMAGE_EXTENSIONS else extension
            if kind in ("image", "json") and kind not in parts:
                parts[kind] = tar.extractfile(member).read()
        yield from flush()


def iter_shard_images(
    storage: Storage,
    shard: ImageShard,
    batch_size: int = 64,
    decode: bool = True,
    decode_threads: int = 0,
) -> Iterator[ImageBatch]:
    """Stream one shard's successful samples in batches of ``batch_size`` (the last may be smaller).

    ``decode=False`` yields the stored bytes (no corruption check). ``decode_threads > 0`` decodes in a
    thread pool, one batch ahead, also while the caller works on the batch it was given. Undecodable
    images, and success samples absent from the tar, are skipped and listed in ``skipped`` of the batch
    that follows them (the last batch also carries those at the shard's end); a shard with no decodable
    image yields a single empty batch if anything was skipped, nothing otherwise.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not len(shard):
        return
    wanted = dict(zip(shard.keys, shard.sample_ids.tolist(), strict=True))
    pool = ThreadPoolExecutor(decode_threads, "decode") if decode and decode_threads > 0 else None
    lookahead = 1 if pool else 0
    seen: set[str] = set()
    groups: deque[list[tuple[str, Any, dict[str, Any] | None]]] = deque([[]])
    carry: list[SkippedSample] = []  # skips not yet attached to a batch
    held: list[ImageBatch] = []  # the last full batch, held back until the next one (or the end) is known

    def resolve(group: list[tuple[str, Any, dict[str, Any] | None]]) -> Iterator[ImageBatch]:
        """Finish a group's decoding; yield the batch held before it and hold this one."""
        nonlocal carry
        keys, images, metadata = [], [], []
        for key, image, meta in group:
            if isinstance(image, Future):
                image = image.result()
            elif decode:
                image = decode_or_none(image)
            if image is None:
                carry.append(SkippedSample(key, wanted[key], CORRUPT))
                continue
            keys.append(key)
            images.append(image)
            metadata.append(meta)
        if keys:
            ids = np.array([wanted[k] for k in keys], np.int64)
            batch = ImageBatch(shard.shard_id, ids, keys, images, metadata, carry)
            carry = []
            yield from held
            held[:] = [batch]

    try:
        with storage.open(shard.tar_uri, "rb") as handle:
            for key, data, meta in _tar_samples(handle, wanted):
                if key in seen:
                    continue
                seen.add(key)
                groups[-1].append(
                    (key, pool.submit(decode_or_none, data) if pool else data, _parse_json(meta))
                )
                if len(groups[-1]) >= batch_size:
                    groups.append([])
                    while len(groups) > lookahead + 1:
                        yield from resolve(groups.popleft())
        while groups:
            yield from resolve(groups.popleft())
    except (tarfile.TarError, EOFError) as exc:
        raise InputError(shard.tar_uri, f"unreadable webdataset tar: {exc}") from exc
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    carry.extend(SkippedSample(k, wanted[k], MISSING) for k in shard.keys if k not in seen)
    if held:
        held[0].skipped.extend(carry)
        yield held[0]
    elif carry:
        yield ImageBatch(shard.shard_id, np.zeros(0, np.int64), [], [], [], carry)
