"""The per-shard CLIP embedding stage: one input shard in, one clip-retrieval part out, committed shard by
shard with :mod:`facelake.lake.shard_stage` so that a killed run resumes where it stopped.

For input shard ``i`` the stage writes, under the partition prefix,

* ``img_emb/img_emb_{i}.npy`` and ``metadata/metadata_{i}.parquet`` (:mod:`facelake.clip.layout`), then
* ``shards/{i}.parquet``: the shard's index (one row per layout file: path, size, sha256, rows, plus the
  shard's image, failure and second counts), and LAST ``shards/{i}.done.json`` (the shard manifest of
  :func:`facelake.lake.shard_stage.run_shard_stage`, keyed by the space, the encoder settings and the input
  shard's fingerprint).

A shard counts as done only if its ``.done.json`` is current AND the layout files its index lists are there
with the recorded sizes (:func:`drop_incomplete_shards`); anything else is redone. The partition manifest,
written last by :func:`commit_clip_embeddings`, lists every layout file, every index and ``space.json``
(the space, its label, the random-weights warning and images/s).

Input shards come from any image asset as :class:`ClipSample` iterators (:func:`webdataset_samples` for a
downloaded LAION-Face part; a folder of images or a parquet of image bytes yields the same samples).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facelake.clip.encoder import ClipEncoder, EncodeStats, ImageInput
from facelake.clip.layout import PART_DIGITS, SPACE_FILE, metadata_table, space_record, write_part
from facelake.lake.commit import (
    Attempt,
    CommitOutcome,
    FileEntry,
    PartitionArtifact,
    Written,
    materialize_partition,
)
from facelake.lake.progress import Progress
from facelake.lake.shard_stage import DONE_SUFFIX, run_shard_stage, shard_name
from facelake.lake.storage import Storage
from facelake.lake.webdataset_reader import ImageShard, iter_shard_images

STAGE_DIR = "shards"
KEEP = (f"{STAGE_DIR}/", "img_emb/", "metadata/")
"""What a new attempt must not delete: committed shards survive a killed run."""
INDEX_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("rows", pa.int64()),
        ("images", pa.int64()),
        ("failed", pa.int64()),
        ("seconds", pa.float64()),
    ]
)


@dataclass
class ClipSample:
    """One image of an input shard: its key (``image_path``), the image, and what is known about it."""

    key: str
    image: ImageInput
    caption: str | None = None
    url: str | None = None
    sample_id: int | None = None


def webdataset_samples(storage: Storage, shard: ImageShard, read_batch: int = 256) -> Iterator[ClipSample]:
    """The successful samples of a downloaded shard as undecoded bytes, with caption, url and SAMPLE_ID from
    their json sidecars (decoding happens on the encoder's pool)."""
    for batch in iter_shard_images(storage, shard, batch_size=read_batch, decode=False):
        for sample_id, key, data, meta in zip(
            batch.sample_ids.tolist(), batch.keys, batch.images, batch.metadata, strict=True
        ):
            meta = meta or {}
            yield ClipSample(key, data, meta.get("caption"), meta.get("url"), int(sample_id))


@dataclass
class ShardEmbeddings:
    """One shard's embeddings (float32 unit rows), metadata rows, failed keys and counts."""

    vectors: np.ndarray
    metadata: pa.Table
    failed: list[tuple[str, str]]
    stats: EncodeStats


def embed_samples(
    encoder: ClipEncoder, samples: Iterable[ClipSample], progress: Progress | None = None
) -> ShardEmbeddings:
    """Embed samples in input order (undecodable images are skipped and listed in ``failed``); ``progress``
    advances by every image of each batch, encoded or not."""
    stats = EncodeStats()
    vectors, items, sizes, failed = [], [], [], []
    for batch in encoder.stream(((s, s.image) for s in samples), stats):
        vectors.append(batch.vectors)
        items.extend(batch.items)
        sizes.append(batch.sizes)
        failed.extend((sample.key, reason) for sample, reason in batch.failed)
        if progress is not None:
            progress.advance(len(batch.items) + len(batch.failed))
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, encoder.dimension), np.float32)
    meta = metadata_table(
        [s.key for s in items],
        encoder.profile,
        captions=[s.caption for s in items],
        urls=[s.url for s in items],
        sample_ids=[s.sample_id for s in items],
        sizes=np.concatenate(sizes) if sizes else np.zeros((0, 2), np.int32),
    )
    return ShardEmbeddings(matrix, meta, failed, stats)


def clip_shard_process(
    storage: Storage,
    prefix: str,
    encoder: ClipEncoder,
    samples_of: Callable[[int], Iterable[ClipSample]],
    *,
    digits: int = PART_DIGITS,
    totals: EncodeStats | None = None,
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> Callable[[int], pa.Table]:
    """The ``process(shard_id)`` of :func:`facelake.lake.shard_stage.run_shard_stage`: embed the shard, write
    its layout part under ``prefix``, return its index table (the stage commits it, then its manifest)."""

    def process(shard_id: int) -> pa.Table:
        started = time.perf_counter()
        shard = embed_samples(encoder, samples_of(shard_id), progress)
        written = write_part(storage, prefix, shard_id, shard.vectors, shard.metadata, digits)
        seconds = time.perf_counter() - started
        if totals is not None:
            totals.add(shard.stats)
        if log:
            rate = shard.stats.images_per_second
            log(
                f"clip shard {shard_name(shard_id)}: {shard.stats.images} images ({rate:.1f}/s), "
                f"{len(shard.failed)} failed to decode"
            )
        n = len(written)
        return pa.table(
            {
                "path": [w.path for w in written],
                "size": [w.size for w in written],
                "sha256": [w.sha256 for w in written],
                "rows": [w.rows for w in written],
                "images": [shard.stats.images] * n,
                "failed": [len(shard.failed)] * n,
                "seconds": [seconds] * n,
            },
            schema=INDEX_SCHEMA,
        )

    return process


def _index_uri(prefix: str, shard_id: int) -> str:
    return f"{prefix}/{STAGE_DIR}/{shard_name(shard_id)}.parquet"


def read_index(storage: Storage, prefix: str, shard_id: int) -> pa.Table:
    """The index of a committed shard (its layout files)."""
    with storage.open(_index_uri(prefix, shard_id), "rb") as handle:
        return pq.read_table(handle)


def drop_incomplete_shards(storage: Storage, prefix: str, shard_ids: Iterable[int]) -> list[int]:
    """Remove the shard manifest of every shard whose index or layout files are missing or of the wrong size,
    so the stage redoes it; returns those shard ids."""
    dropped = []
    for shard_id in shard_ids:
        done = f"{prefix}/{STAGE_DIR}/{shard_name(shard_id)}{DONE_SUFFIX}"
        if not storage.exists(done):
            continue
        try:
            index = read_index(storage, prefix, shard_id).to_pylist()
            complete = bool(index) and all(
                storage.exists(f"{prefix}/{row['path']}")
                and storage.size(f"{prefix}/{row['path']}") == row["size"]
                for row in index
            )
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            complete = False
        if not complete:
            storage.rm(done, recursive=False)
            dropped.append(shard_id)
    return dropped


def stage_config(encoder: ClipEncoder, digits: int = PART_DIGITS) -> dict[str, Any]:
    """What keys a committed shard: the space, the encoder's numeric settings and the layout."""
    return {
        "space": encoder.profile.provenance(),
        "settings": encoder.settings(),
        "layout": "clip-retrieval",
        "digits": digits,
    }


def commit_clip_embeddings(
    artifact: PartitionArtifact,
    run_config: dict[str, Any],
    code_version: str,
    owner: str,
    shards: Mapping[int, Any],
    samples_of: Callable[[int], Iterable[ClipSample]],
    encoder: ClipEncoder,
    *,
    force: bool = False,
    digits: int = PART_DIGITS,
    extra: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> CommitOutcome:
    """Embed every input shard not yet committed (``shards``: id → an input shard with a ``fingerprint``;
    ``samples_of(id)``: its samples), and commit the partition manifest-last (see the module doc).

    ``progress`` (total: the images of every shard) advances per encoded batch and by the recorded images
    of each reused shard, so its lines (every 5 % or 30 s: done/total, rate, ETA) cover the whole part."""
    storage, prefix = artifact.storage, artifact.prefix
    config = stage_config(encoder, digits)

    def write(attempt: Attempt) -> Written:
        ids = sorted(int(i) for i in shards)
        redone = drop_incomplete_shards(storage, prefix, ids)
        totals = EncodeStats()
        process = clip_shard_process(
            storage, prefix, encoder, samples_of, digits=digits, totals=totals, log=log, progress=progress
        )

        def reused(shard_id: int) -> None:
            if progress is not None:
                index = read_index(storage, prefix, shard_id).to_pylist()
                progress.advance(int(index[0]["images"]) + int(index[0]["failed"]) if index else 0)

        result = run_shard_stage(
            attempt,
            ids,
            process,
            out_dir=STAGE_DIR,
            config=config,
            fingerprint=lambda i: str(shards[i].fingerprint),
            log=log,
            on_reused=reused,
        )
        if progress is not None:
            progress.finish()
        files = list(result.files)
        images = failed = 0
        for shard_id in ids:
            index = read_index(storage, prefix, shard_id).to_pylist()
            images += int(index[0]["images"]) if index else 0
            failed += int(index[0]["failed"]) if index else 0
            files.extend(FileEntry(row["path"], row["size"], row["sha256"], row["rows"]) for row in index)
        encode = totals.to_dict()
        record = space_record(
            encoder.profile,
            encoder.warning,
            {"encoder": encoder.settings(), "model": encoder.loaded.spec.describe(), "encode": encode},
        )
        space_uri = artifact.uri(SPACE_FILE)
        storage.write_bytes(space_uri, json.dumps(record, indent=2, sort_keys=True).encode())
        files.append(attempt.entry(space_uri))
        stats = {
            **result.stats(),
            "images": images,
            "failed_images": failed,
            "shards_incomplete_redone": len(redone),
            "space": encoder.profile.provenance(),
            "space_label": encoder.profile.describe(),
            "random_init": encoder.profile.random_init,
            "warning": encoder.warning,
            "images_per_second": encode["images_per_second"],
            "encode": encode,
            **(extra or {}),
        }
        return Written(files, rows=images, extra=stats)

    return materialize_partition(artifact, run_config, code_version, owner, write, force=force, keep=KEEP)
