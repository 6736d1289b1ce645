"""HyperFace's generation stage: n images per packed identity, committed per shard and resumable.

Input: the :class:`~facelake.generation.identities.ReferenceIdentities` of a variant, or of one of its
identity shards. Image ``i`` of identity ``x`` is generated from ``x' = normalize(x + beta * n)`` and fresh
latent noise, both drawn from seeds derived from (variant, identity_id, i, seed)
(:mod:`facelake.generation.requests`), so any image regenerates identically alone or in any batch; batches of
``batch_size`` span identities.

Output, inside one partition (``materialize_partition``, manifest last, ``keep=("shards/",)``): generation
shards of ``shard_identities`` consecutive identities (shard id ``identity_index // shard_identities``, so ids
are stable whatever subset a partition holds), each ``shards/NNNNN.tar`` + ``NNNNN.parquet`` +
``NNNNN.done.json`` (:mod:`facelake.generation.shards`), committed one by one by
:func:`facelake.lake.shard_stage.run_shard_stage`: a run killed mid-partition resumes at the first shard not
committed, and a shard whose inputs (identities, embeddings), generator (weights, sampling) or options changed
is redone alone. Then ``contact_sheet.png`` (a few identities, read back from the committed tars).

The generator's identity space is checked against the variant's before anything runs: a variant packed in
another space (dlib's 128-d) is refused naming both (:func:`facelake.generation.space.check_identity_space`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from facelake.faces.identity import PROVENANCE_COLUMNS
from facelake.generation.contact_sheet import CONTACT_SHEET_FILE, contact_sheet_from_tars
from facelake.generation.generator import Arc2FaceGenerator
from facelake.generation.identities import IdentityShard, ReferenceIdentities
from facelake.generation.requests import plan_requests, render
from facelake.generation.shards import (
    INDEX_SCHEMA,
    OUT_DIR,
    TarBuilder,
    committed_tar_entries,
    drop_incomplete_tar_shards,
    encode_jpeg,
    image_key,
    sample_json,
    tar_name,
    with_tar_metadata,
)
from facelake.generation.space import check_identity_space
from facelake.lake.commit import (
    Attempt,
    CommitOutcome,
    PartitionArtifact,
    Written,
    materialize_partition,
)
from facelake.lake.progress import Progress
from facelake.lake.shard_stage import ShardStageResult, run_shard_stage


@dataclass(frozen=True)
class GenerationOptions:
    """Per-variant generation settings (the paper: 64 images per identity, beta 0.005).

    ``images_per_identity``, ``beta``, ``seed``, ``shard_identities`` and ``jpeg_quality`` decide the output
    (they are in the shards' config hash); ``batch_size`` and the contact sheet's size do not.
    """

    images_per_identity: int = 64
    beta: float = 0.005
    seed: int = 0
    shard_identities: int = 16
    batch_size: int = 8
    jpeg_quality: int = 95
    contact_sheet_identities: int = 4
    contact_sheet_images: int = 4

    def __post_init__(self) -> None:
        for name in ("images_per_identity", "shard_identities", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    def config(self) -> dict[str, Any]:
        """The options that decide the images and the shard layout."""
        keys = ("images_per_identity", "beta", "seed", "shard_identities", "jpeg_quality")
        return {key: asdict(self)[key] for key in keys}


@dataclass
class GenerationCounter:
    """What this run generated: images, identities, shards, and the seconds spent (model / whole shards)."""

    images: int = 0
    identities: int = 0
    shards: int = 0
    batches: int = 0
    generate_seconds: float = 0.0
    shard_seconds: float = 0.0
    progress: Progress | None = None
    """Advanced by every rendered batch's images, when given (run-log lines every 5 % or 30 s)."""

    def images_per_second(self) -> float:
        """Images per second over whole shards (generation, JPEG encoding, writing)."""
        return self.images / self.shard_seconds if self.shard_seconds > 0 else 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "images_generated": self.images,
            "identities_generated": self.identities,
            "shards_generated": self.shards,
            "batches": self.batches,
            "generate_seconds": round(self.generate_seconds, 3),
            "shard_seconds": round(self.shard_seconds, 3),
            "images_per_second": round(self.images_per_second(), 4),
        }


def _generator_columns(generator: Arc2FaceGenerator) -> dict[str, Any]:
    config = generator.config()
    return {
        "generator_weights_sha256": config["weights_sha256"],
        "generator_random_init": bool(config["random_init"]),
        "generator_mode": config["mode"],
        "scheduler": config["scheduler"],
        "steps": int(config["steps"]),
        "guidance": float(config["guidance"]),
        "height": int(config["height"]),
        "width": int(config["width"]),
    }


def generate_shard(
    generator: Arc2FaceGenerator,
    identities: ReferenceIdentities,
    shard: IdentityShard,
    options: GenerationOptions,
    *,
    counter: GenerationCounter | None = None,
) -> tuple[bytes, pa.Table]:
    """One shard's tar bytes and its index table (one row per image, in tar order)."""
    started = time.perf_counter()
    requests = plan_requests(identities, shard.rows, options.images_per_identity, options.seed)
    provenance = generator.provenance()
    builder = TarBuilder()
    constant = {
        **_generator_columns(generator),
        **{name: identities.space[name] for name in PROVENANCE_COLUMNS},
    }
    rows: list[dict[str, Any]] = []
    for rendered in render(generator, identities, requests, options.beta, options.batch_size):
        if counter is not None:
            counter.generate_seconds += rendered.seconds
            counter.batches += 1
            if counter.progress is not None:
                counter.progress.advance(len(rendered.images))
        batch = rendered.requests
        reference = identities.embeddings[batch.rows].astype(np.float64)
        cosines = np.einsum("ij,ij->i", reference, rendered.vectors.astype(np.float64)).tolist()
        for position, image in enumerate(rendered.images):
            row = int(batch.rows[position])
            index = int(batch.index[position])
            identity_index = int(identities.identity_index[row])
            seeds = {
                "latent": int(batch.latent_seeds[position]),
                "embedding": int(batch.embedding_seeds[position]),
            }
            entry = {
                "key": image_key(identity_index, index),
                "sample_id": identity_index * options.images_per_identity + index,
                "shard": shard.shard_id,
                "variant": identities.variant,
                "identity_id": identities.identity_ids[row],
                "identity_index": identity_index,
                "index": index,
                "latent_seed": seeds["latent"],
                "embedding_seed": seeds["embedding"],
                "beta": options.beta,
                "noise_cosine": cosines[position],
            }
            record = {
                **{
                    k: entry[k]
                    for k in ("key", "sample_id", "variant", "identity_id", "identity_index", "index")
                },
                "seeds": {**seeds, "base": options.seed},
                "beta": options.beta,
                "noise_cosine": round(cosines[position], 6),
                "generator": provenance,
                "identity_space": identities.space,
            }
            if generator.warning:
                record["warning"] = generator.warning
            builder.add(
                entry["key"], {"jpg": encode_jpeg(image, options.jpeg_quality), "json": sample_json(record)}
            )
            rows.append({**entry, **constant})
    data = builder.finish()
    n = builder.count
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA) if rows else INDEX_SCHEMA.empty_table()
    if counter is not None:
        counter.images += n
        counter.identities += len(shard.rows)
        counter.shards += 1
        counter.shard_seconds += time.perf_counter() - started
    return data, table


@dataclass
class GenerationResult:
    """The commit's outcome, what this run generated, and the partition's contact sheet (PNG bytes)."""

    outcome: CommitOutcome
    counter: GenerationCounter
    generator: dict[str, Any]
    contact_sheet: bytes | None = None
    stage: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """Counts and rates for the asset's metadata (the manifest's facts plus this run's)."""
        extra = self.outcome.manifest.extra
        facts = {
            "images": self.outcome.manifest.rows,
            "identities": extra.get("identities"),
            "images_per_identity": extra.get("images_per_identity"),
            "shards": extra.get("shards"),
            "shards_done_now": extra.get("shards_done_now", 0) if not self.outcome.reused else 0,
            "shards_reused": extra.get("shards_reused", 0)
            if not self.outcome.reused
            else extra.get("shards"),
            "partition_reused": self.outcome.reused,
            "generator": extra.get("generator_description"),
            "random_init": bool(extra.get("random_init")),
            **self.counter.stats(),
        }
        if extra.get("warning"):
            facts["warning"] = extra["warning"]
        return facts


def commit_generated_images(
    artifact: PartitionArtifact,
    identities: ReferenceIdentities,
    generator: Arc2FaceGenerator,
    options: GenerationOptions,
    *,
    code_version: str,
    owner: str,
    run_config: Mapping[str, Any] | None = None,
    force: bool = False,
    lease_ttl_s: float = 900.0,
    log: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Generate every identity's images into ``artifact`` shard by shard, then commit manifest-last.

    A partition committed with the same config and code version is reused as is (a no-op) unless
    ``force``; otherwise committed shards with the same stage config and input are reused and only the rest
    is generated. ``run_config`` adds the caller's facts to the partition config (e.g. the reference
    partition's content hash). ``log`` is called after each shard is committed. Raises
    :class:`~facelake.faces.identity.EmbeddingSpaceMismatchError` before anything runs when the variant's
    identity space is not the generator's.
    """
    check_identity_space(identities.space, generator.identity_space)
    shards = identities.shards(options.shard_identities)
    stage_config = {"variant": identities.variant, **options.config(), "generator": generator.config()}
    config = {
        **stage_config,
        "identities": len(identities),
        "identities_fingerprint": identities.fingerprint(),
        **dict(run_config or {}),
    }
    total = len(identities) * options.images_per_identity
    progress = Progress(f"generation hyperface_images[{identities.variant}]", total, log, unit="images")
    counter = GenerationCounter(progress=progress)
    stage: dict[str, Any] = {}
    contact: list[bytes] = []

    def process(shard_id: int) -> pa.Table:
        data, table = generate_shard(generator, identities, shards[shard_id], options, counter=counter)
        relative = f"{OUT_DIR}/{tar_name(shard_id)}"
        artifact.storage.write_bytes(artifact.uri(relative), data)
        return with_tar_metadata(table, relative, data)

    def write(attempt: Attempt) -> Written:
        redone = drop_incomplete_tar_shards(attempt, sorted(shards))
        if redone and log:
            log(f"shards {redone}: committed tar missing or truncated, regenerating")
        result: ShardStageResult = run_shard_stage(
            attempt,
            sorted(shards),
            process,
            OUT_DIR,
            config=stage_config,
            fingerprint=lambda i: shards[i].fingerprint,
            log=log,
        )
        files = list(result.files) + committed_tar_entries(attempt, result.files)
        uris = [artifact.uri(f"{OUT_DIR}/{tar_name(i)}") for i in sorted(shards)]
        png = contact_sheet_from_tars(
            artifact.storage,
            uris,
            identities=options.contact_sheet_identities,
            per_identity=options.contact_sheet_images,
            title=f"HyperFace {identities.variant}: {generator.describe()}",
            warning=generator.warning,
        )
        sheet_uri = attempt.uri(CONTACT_SHEET_FILE)
        artifact.storage.write_bytes(sheet_uri, png)
        files.append(attempt.entry(sheet_uri))
        contact.append(png)
        stage.update(result.stats())
        extra = {
            **result.stats(),
            "variant": identities.variant,
            "identities": len(identities),
            "images_per_identity": options.images_per_identity,
            "beta": options.beta,
            "generator": generator.provenance(),
            "generator_description": generator.describe(),
            "random_init": generator.random_init,
            **counter.stats(),
        }
        if generator.warning:
            extra["warning"] = generator.warning
        return Written(files, rows=result.rows, extra=extra)

    outcome = materialize_partition(
        artifact,
        config,
        code_version,
        owner,
        write,
        force=force,
        lease_ttl_s=lease_ttl_s,
        keep=(f"{OUT_DIR}/",),
    )
    if counter.images:
        progress.finish()
    sheet = contact[0] if contact else _committed_sheet(artifact)
    return GenerationResult(outcome, counter, generator.provenance(), sheet, stage)


def _committed_sheet(artifact: PartitionArtifact) -> bytes | None:
    manifest = artifact.manifest()
    if manifest is None:
        return None
    for entry in manifest.files:
        if entry.path.rsplit("/", 1)[-1] == CONTACT_SHEET_FILE:
            return artifact.storage.read_bytes(artifact.uri(entry.path))
    return None
