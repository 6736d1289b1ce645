"""Face-model assets, built by factories so every image asset gets the same stages without copies:
our own RetinaFace detections, and identity embeddings of the detected faces.

Both are GPU-bound: they carry ``pool="gpu"`` and the celery/k8s GPU tags (DESIGN §4), pick ``cuda`` when
present and the CPU otherwise, and commit per webdataset shard, so a killed run resumes without redoing
finished shards.
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

from typing import Any

import numpy as np
import pyarrow as pa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetsDefinition,
    MaterializeResult,
    PartitionsDefinition,
    asset_check,
)

from assets.materializing import CommitConfig, Step, code_version, lake_asset, materialize_result, owner
from assets.pools import CPU_TAGS, ArtifactFor, gpu_asset
from facelake.faces.detection_compare import compare_detections
from facelake.faces.stages import StageCounter, detect_shard, embed_shard
from facelake.lake.progress import Progress
from facelake.lake.shard_stage import commit_shard_stage, read_stage_table
from facelake.lake.tables import read_parquet
from facelake.lake.webdataset_reader import ImageShard, part_image_shards
from facelake.models.registry import detector_model
from facelake.models.settings import ModelSettings
from resources import StorageResource


class FaceStageConfig(CommitConfig):
    """Run config of the face stages."""

    batch_size: int = 32
    decode_threads: int = 0
    """Threads decoding the next JPEG batch while the model runs (2 helps on GPU boxes with big images)."""


def stage_metadata(counter: StageCounter, extra: dict) -> dict:
    """A face stage's metadata: throughput, images done now and skipped, faces per image, then ``extra``."""
    return {
        "images_per_second": round(counter.images_per_second(), 2),
        "images_processed_now": counter.images,
        "images_skipped_corrupt": counter.skipped,
        "faces_per_image_histogram": counter.histogram(),
        **extra,
    }


def detector_config(models: ModelSettings) -> dict[str, Any]:
    """The model settings a detection depends on: part of a face stage's code version."""
    return {
        "backbone": models.detector_backbone,
        "max_side": models.detector_max_side,
        "threshold": models.detector_threshold,
        "paths": models.paths,
    }


def embedder_config(models: ModelSettings) -> dict[str, Any]:
    """The model settings an identity embedding of a detected face depends on."""
    return {"embedder": models.embedder, **detector_config(models)}


def primary_face_models(registry: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The registry's detector and identity embedder for a primary-face stage, and what identifies their
    output in its run config: the detector's config, its weights' sha256 and the embedder's provenance."""
    detector, embedder = registry.detector(), registry.identity_embedder()
    weights = registry.describe(detector_model(registry.detector_backbone))
    identity = {
        **detector.config(),
        "detector_weights_sha256": weights["sha256"],
        **embedder.profile.provenance(),
    }
    return detector, embedder, identity


def primary_face_extra(images: int, result: Any, profile: Any) -> dict[str, Any]:
    """A primary-face stage's manifest extra: images read, faces embedded, images without a face, and the
    embedder's provenance (``result`` has the ``embeddings`` and ``no_face`` tables)."""
    return {
        "images": images,
        "faces_embedded": result.embeddings.num_rows,
        "images_without_face": result.no_face.num_rows,
        "embedder": profile.provenance(),
    }


def primary_face_metadata(
    counter: StageCounter, detector: Any, profile: Any, extra: dict, **more: Any
) -> dict[str, Any]:
    """A primary-face stage's metadata: throughput, the models, ``more`` and the counts of its manifest's
    ``extra`` (:func:`primary_face_extra`)."""
    return stage_metadata(
        counter,
        {
            "detector": detector.name,
            "device": str(detector.device),
            "embedder": profile.describe(),
            "random_init": profile.random_init,
            **more,
            "images": extra["images"],
            "faces_embedded": extra["faces_embedded"],
            "images_without_face": extra["images_without_face"],
        },
    )


def _counter(step: Step, label: str, shards: dict[int, ImageShard]) -> StageCounter:
    """A stage counter whose progress (every 5 % or 30 s, in the run log) runs over all shards' images."""
    total = sum(len(shard.sample_ids) for shard in shards.values())
    return StageCounter(progress=Progress(label, total, step.context.log.info, unit="images"))


def _face_stage(
    name: str, group: str, partitions_def: PartitionsDefinition, deps: list, version: str, description: str
):
    """``@asset`` of a face stage: GPU pool and tags, the ``models`` resource, :class:`FaceStageConfig`."""
    return lake_asset(
        gpu_asset,
        name=name,
        group_name=group,
        partitions_def=partitions_def,
        resources=("models",),
        config_type=FaceStageConfig,
        deps=deps,
        code_version=version,
        description=description,
    )


def detected_faces_asset(
    *,
    name: str,
    images: str,
    partitions_def: PartitionsDefinition,
    images_artifact: ArtifactFor,
    out_artifact: ArtifactFor,
    group: str,
    detector_version: dict,
) -> AssetsDefinition:
    """Our own RetinaFace run over an image asset's committed webdataset shards: one row per face."""
    version = code_version("1", detector_version)

    @_face_stage(
        name,
        group,
        partitions_def,
        [images],
        version,
        f"RetinaFace detections on the downloaded images of {images}: one row per face "
        "(sample_id, face_index, box, 5 landmarks, score, detector, threshold), boxes in original pixels.",
    )
    def _detected(step: Step) -> MaterializeResult:
        lake, part, config, models = step.lake, step.part, step.config, step.resource("models")
        source = images_artifact(lake, part)
        shards = {s.shard_id: s for s in part_image_shards(lake, source)}
        detector = models.detector()
        weights = models.describe(detector_model(models.detector_backbone))
        stage_config = {**detector.config(), "weights_sha256": weights["sha256"]}
        counter = _counter(step, f"{name}[{part}]", shards)
        step.context.log.info(
            f"{detector.name} on {detector.device} over {len(shards)} shard(s) of {images}[{part}]"
        )
        outcome = commit_shard_stage(
            out_artifact(lake, part),
            {**stage_config, "images": source.require_manifest().content_hash},
            version,
            owner(step.context),
            shards,
            lambda i: detect_shard(
                lake, shards[i], detector, config.batch_size, config.decode_threads, counter
            ),
            stage_config,
            force=config.force,
            extra={"detector": stage_config},
            log=step.context.log.info,
            on_reused=lambda i: counter.progress.advance(len(shards[i].sample_ids)),
        )
        counter.progress.finish()
        extra = outcome.manifest.extra
        metadata = stage_metadata(
            counter, {"detector": detector.name, "device": str(detector.device), **_ints(extra)}
        )
        return materialize_result(step.context, out_artifact(lake, part), outcome, metadata)

    return _detected


def detections_agreement_check(
    *,
    asset_name: str,
    partitions_def: PartitionsDefinition,
    ours_artifact: ArtifactFor,
    reference_artifact: ArtifactFor,
    images_artifact: ArtifactFor,
    min_recall: float = 0.8,
    min_precision: float = 0.8,
):
    """An asset check: IoU-matched recall/precision of our detections against a reference (the released ones)."""

    @asset_check(
        asset=asset_name,
        name="agrees_with_released_detections",
        op_tags=CPU_TAGS,
        partitions_def=partitions_def,
        description=f"IoU>=0.5 matched recall >= {min_recall} and precision >= {min_precision} against the "
        "released detections, over the images both sides saw.",
    )
    def _check(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
        lake, part = storage.get(), context.partition_key
        reference = reference_artifact(lake, part)
        if reference.manifest() is None:
            raise FileNotFoundError(
                f"{reference.prefix}: released detections not committed; materialize them first"
            )
        ours = read_stage_table(lake, ours_artifact(lake, part))
        [released] = reference.file_uris(suffix=".parquet")
        images = np.concatenate(
            [s.sample_ids for s in part_image_shards(lake, images_artifact(lake, part))]
            or [np.zeros(0, np.int64)]
        )
        stats = compare_detections(ours, read_parquet(lake, released), images)
        passed = stats["recall"] >= min_recall and stats["precision"] >= min_precision
        return AssetCheckResult(passed=bool(passed), metadata={"compared": True, **stats})

    return _check


def face_embeddings_asset(
    *,
    name: str,
    images: str,
    detections: str,
    partitions_def: PartitionsDefinition,
    images_artifact: ArtifactFor,
    detections_artifact: ArtifactFor,
    out_artifact: ArtifactFor,
    group: str,
    embedder_version: dict,
) -> AssetsDefinition:
    """Identity embeddings of every detected face of an image asset, with the embedder's provenance per row."""
    version = code_version("1", embedder_version)

    @_face_stage(
        name,
        group,
        partitions_def,
        [images, detections],
        version,
        f"Identity embeddings (L2-normalised) of the faces in {detections} on the images of {images}: "
        "one row per face (sample_id, key, face_index, embedding, embedder provenance).",
    )
    def _embeddings(step: Step) -> MaterializeResult:
        lake, part, config = step.lake, step.part, step.config
        faces_artifact = detections_artifact(lake, part)
        faces_manifest = faces_artifact.require_manifest()
        shards = {s.shard_id: s for s in part_image_shards(lake, images_artifact(lake, part))}
        faces: pa.Table = read_stage_table(lake, faces_artifact)
        embedder = step.resource("models").identity_embedder()
        profile = embedder.profile
        step.context.log.info(f"embedder: {profile.describe()}")
        stage_config = {**profile.provenance(), "faces": faces_manifest.content_hash}
        counter = _counter(step, f"{name}[{part}]", shards)
        outcome = commit_shard_stage(
            out_artifact(lake, part),
            stage_config,
            version,
            owner(step.context),
            shards,
            lambda i: embed_shard(lake, shards[i], faces, embedder, config.batch_size, counter),
            stage_config,
            force=config.force,
            extra={"embedder": profile.provenance()},
            log=step.context.log.info,
            on_reused=lambda i: counter.progress.advance(len(shards[i].sample_ids)),
        )
        counter.progress.finish()
        metadata = stage_metadata(
            counter,
            {
                "embedder": profile.describe(),
                "random_init": profile.random_init,
                "same_identity_cosine_distance": profile.same_identity_cosine_distance,
                **_ints(outcome.manifest.extra),
            },
        )
        return materialize_result(step.context, out_artifact(lake, part), outcome, metadata)

    return _embeddings


def _ints(extra: dict) -> dict:
    """The integer counters of a stage's manifest extra (shards done now / reused, rows)."""
    return {k: v for k, v in extra.items() if isinstance(v, int) and not isinstance(v, bool)}
