"""Real photos standing in for a generated HyperFace variant: a ``hyperface_images`` partition in the generation
stage's exact layout (``shards/NNNNN.tar`` + index parquet + shard manifest, manifest last), whose images are
given JPEGs (e.g. augmented crops of the two offline real people, or noise), labelled as identities.

The index rows follow :data:`facelake.generation.shards.INDEX_SCHEMA`; the generator columns say
``real-photos`` (trained: not random weights), and the identity space is the one given (e.g. dlib's).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageEnhance

from facelake.generation.shards import (
    INDEX_SCHEMA,
    OUT_DIR,
    TarBuilder,
    committed_tar_entries,
    image_key,
    sample_json,
    tar_name,
    with_tar_metadata,
)
from facelake.lake.commit import Attempt, PartitionArtifact, Written, materialize_partition
from facelake.lake.shard_stage import run_shard_stage
from facelake.lake.storage import Storage
from synthetic.face_photos import real_faces, varied_crops

STAND_IN = "real-photos"


@dataclass(frozen=True)
class StandInImage:
    """One image of the stand-in variant: its identity (by index) and JPEG bytes."""

    identity_index: int
    jpeg: bytes


def identity_id(variant: str, index: int) -> str:
    """The generation stage's identity id (``{variant}-{index:07d}``)."""
    return f"{variant}-{index:07d}"


def jittered_crops(name: str, n: int, seed: int = 0) -> list[bytes]:
    """``n`` augmented JPEGs of real photo ``name``: varied crops, flips and brightness
    (:func:`synthetic.face_photos.varied_crops`), plus a colour jitter."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for crop in varied_crops(name, n, seed=seed, min_side=160, max_side=320):
        image = Image.open(io.BytesIO(crop.jpeg)).convert("RGB")
        image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.7, 1.3)))
        image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.85, 1.15)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        out.append(buffer.getvalue())
    return out


def original_jpeg(name: str, quality: int = 95) -> bytes:
    """The whole real photo ``name`` as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(real_faces()[name])).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def noise_jpegs(n: int, size: int = 128, seed: int = 0) -> list[bytes]:
    """``n`` uniform-noise JPEGs (no face in them)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def _indexed(images: Sequence[StandInImage]) -> list[tuple[StandInImage, int]]:
    """Each image with its index within its identity, in the order given."""
    counts: Counter[int] = Counter()
    out = []
    for image in images:
        out.append((image, counts[image.identity_index]))
        counts[image.identity_index] += 1
    return out


def commit_stand_in_variant(
    storage: Storage,
    variant: str,
    images: Sequence[StandInImage],
    space: Mapping[str, Any],
    *,
    shard_identities: int = 1,
    random_init: bool = False,
    warning: str | None = None,
) -> PartitionArtifact:
    """Commit ``images`` as ``hyperface/images/{variant}`` in the generation stage's layout; image ``i`` of an
    identity gets index ``i`` in the order given. ``random_init``/``warning`` play a random-weights generator."""
    artifact = PartitionArtifact(storage, "hyperface", "images", variant)
    per_identity = max(Counter(image.identity_index for image in images).values(), default=1)
    shards: dict[int, list[tuple[StandInImage, int]]] = {}
    for image, index in _indexed(images):
        shards.setdefault(image.identity_index // shard_identities, []).append((image, index))
    constant = {
        "generator_weights_sha256": STAND_IN,
        "generator_random_init": random_init,
        "generator_mode": STAND_IN,
        "scheduler": STAND_IN,
        "steps": 0,
        "guidance": 0.0,
        **{key: space[key] for key in INDEX_SCHEMA.names if key.startswith("embedder_")},
    }

    def process(shard_id: int) -> pa.Table:
        builder, rows = TarBuilder(), []
        for image, index in sorted(shards[shard_id], key=lambda item: (item[0].identity_index, item[1])):
            picture = Image.open(io.BytesIO(image.jpeg))
            key = image_key(image.identity_index, index)
            entry = {
                "key": key,
                "sample_id": image.identity_index * per_identity + index,
                "shard": shard_id,
                "variant": variant,
                "identity_id": identity_id(variant, image.identity_index),
                "identity_index": image.identity_index,
                "index": index,
                "latent_seed": 0,
                "embedding_seed": 0,
                "beta": 0.0,
                "noise_cosine": 1.0,
                "height": picture.height,
                "width": picture.width,
            }
            record = {
                k: entry[k] for k in ("key", "sample_id", "variant", "identity_id", "identity_index", "index")
            }
            if warning:
                record["warning"] = warning
            builder.add(key, {"jpg": image.jpeg, "json": sample_json(record)})
            rows.append({**entry, **constant})
        data = builder.finish()
        relative = f"{OUT_DIR}/{tar_name(shard_id)}"
        storage.write_bytes(artifact.uri(relative), data)
        return with_tar_metadata(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), relative, data)

    def write(attempt: Attempt) -> Written:
        result = run_shard_stage(attempt, sorted(shards), process, OUT_DIR, config={"stand_in": variant})
        files = list(result.files) + committed_tar_entries(attempt, result.files)
        extra = {**result.stats(), "variant": variant, "random_init": random_init}
        if warning:
            extra["warning"] = warning
        return Written(files, rows=result.rows, extra=extra)

    materialize_partition(
        artifact,
        {"stand_in": variant, "images": len(images)},
        "test",
        "synthetic",
        write,
        force=True,
        keep=(f"{OUT_DIR}/",),
    )
    return artifact
