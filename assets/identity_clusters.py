"""Identity clusters (DBSCAN, cosine distance) for any face-embedding asset, and the CelebA-HQ chain.

:func:`identity_clusters_asset` builds the clustering stage for ANY committed embedding asset, partitioned or
not (one clustering per partition): NN-similarity analysis, eps from the embedder's profile / the valley /
fixed (recorded), scikit-learn-exact DBSCAN on the GPU pool (DESIGN §4), singleton identities, centroids,
the NN-similarity plot, and the asset check ``members_near_centroid``.

The CelebA-HQ chain (seed 003, the celebahq_512_id_clusters card): ``celebahq_images`` indexes the
jxie/celeba-hq parquet export under ``{sources}``; ``celebahq_face_embeddings`` runs the registry's detector
and embedder on every image, one (the largest) face per image, recording images without a face;
``celebahq_identity_clusters`` clusters them and also writes the card's layout (``data/*.parquet``: image,
file_name, cluster_id, cluster_size), ``embeddings.parquet`` and ``centroids.parquet``.
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    asset,
)

from assets.faces import stage_metadata
from assets.materializing import (
    CommitConfig,
    code_version,
    materialize_result,
    owner,
    source_fingerprints,
)
from assets.partitions import laion_parts
from assets.pools import GPU_FREE_TAGS, ArtifactFor, gpu_asset
from facelake.celebahq import dataset as celebahq
from facelake.clusters.identity_clusters import (
    EmbeddingInput,
    IdentityClusters,
    assignments_table,
    centroid_check,
    centroids_table,
    cluster_identities,
    read_embeddings,
    write_parquet,
)
from facelake.clusters.nn_similarity import nn_similarity_png
from facelake.clusters.settings import ClusteringSettings
from facelake.faces.identity import EmbedderProfile, embedding_table
from facelake.faces.stages import StageCounter
from facelake.laion import artifacts as laion_artifacts
from facelake.laion.artifacts import committed_file
from facelake.lake.commit import Attempt, FileEntry, Written, materialize_partition
from facelake.lake.errors import InputError
from facelake.lake.plots import png_markdown
from facelake.lake.storage import Storage
from facelake.models.registry import detector_model
from facelake.settings import FacelakeSettings
from resources import StorageResource
from resources.models import ModelRegistryResource

GROUP = "celebahq"
CENTROID_CHECK = "members_near_centroid"
PLOT_FILE = "nn_similarity.png"
ASSIGNMENTS_FILE = "assignments.parquet"
CENTROIDS_FILE = "centroids.parquet"
CELEBAHQ_ASSETS = [
    AssetKey("celebahq_images"),
    AssetKey("celebahq_face_embeddings"),
    AssetKey("celebahq_identity_clusters"),
]

Export = Callable[[Storage, str, Attempt, EmbeddingInput, IdentityClusters], list[FileEntry]]
"""Extra output files of a clustering (e.g. a dataset card's layout), written into the same attempt."""


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars to Python, tuples to lists) for manifests and metadata."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


def identity_clusters_asset(
    *,
    name: str,
    embeddings: str,
    embeddings_artifact: ArtifactFor,
    out_artifact: ArtifactFor,
    settings: ClusteringSettings,
    group: str,
    partitions_def: PartitionsDefinition | None = None,
    export: Export | None = None,
    export_version: str = "",
) -> AssetsDefinition:
    """DBSCAN identity clusters of the embedding asset ``embeddings`` (any embedding table with provenance).

    Writes ``assignments.parquet`` (the input's id columns + cluster_id, cluster_size, dbscan_label, core,
    nn_index, nn_cosine, centroid_cosine), ``centroids.parquet`` (one L2-normalised centroid per identity, in
    the embedder's space) and ``nn_similarity.png``, plus what ``export`` writes; checks that every member of
    a multi-image identity lies within the bound of its centroid.
    """
    fixed = settings.eps_source == "fixed"
    clustering = {
        "eps_source": settings.eps_source,
        "eps": settings.eps if fixed else None,
        "min_samples": settings.min_samples,
        "min_centroid_cosine": settings.min_centroid_cosine,
    }
    version = code_version("1", {**clustering, "export": export_version})
    bound = "1 - eps" if settings.min_centroid_cosine is None else str(settings.min_centroid_cosine)

    @gpu_asset(
        name=name,
        group_name=group,
        partitions_def=partitions_def,
        deps=[embeddings],
        code_version=version,
        check_specs=[
            AssetCheckSpec(
                CENTROID_CHECK,
                asset=name,
                partitions_def=partitions_def,
                description=f"every member of a multi-image identity has cosine >= {bound} to its centroid "
                "(fails on chains of look-alikes that DBSCAN merged)",
            )
        ],
        description=f"Identity clusters of {embeddings}: DBSCAN (cosine, scikit-learn's labels exactly, "
        f"min_samples {settings.min_samples}, eps from {settings.eps_source}), noise as singleton identities, "
        "centroids, and the nearest-neighbour cosine histogram with its valley.",
    )
    def _clusters(
        context: AssetExecutionContext, config: CommitConfig, storage: StorageResource
    ) -> MaterializeResult:
        lake = storage.get()
        part = context.partition_key if context.has_partition_key else "all"
        source = embeddings_artifact(lake, part)
        source_manifest = source.require_manifest()
        artifact = out_artifact(lake, part)

        def write(attempt: Attempt) -> Written:
            data = read_embeddings(lake, source)
            if len(data.vectors) == 0:
                raise InputError(source.prefix, "no embeddings to cluster (no face in any image?)")
            profile = EmbedderProfile.from_provenance(data.space)
            context.log.info(f"clustering {len(data.vectors):,} embeddings of {profile.describe()}")
            clusters = cluster_identities(
                data.vectors,
                data.space,
                eps_source=settings.eps_source,
                eps=settings.eps,
                min_samples=settings.min_samples,
                screen=settings.screen,
                block=settings.block,
            )
            context.log.info(f"eps {clusters.eps.eps} ({clusters.eps.detail}): {clusters.summary()}")
            cosines = clusters.neighbours.cosine if clusters.neighbours is not None else np.zeros(0)
            png = nn_similarity_png(
                cosines,
                clusters.analysis,
                eps=clusters.eps.eps,
                eps_label=f"({clusters.eps.used})",
                title=f"{name}: {profile.describe()}"[:110],
            )
            files = []
            for file_name, table in (
                (ASSIGNMENTS_FILE, assignments_table(data.ids, clusters)),
                (CENTROIDS_FILE, centroids_table(clusters, data.space)),
            ):
                write_parquet(lake, attempt.uri(file_name), table)
                files.append(attempt.entry(attempt.uri(file_name), rows=table.num_rows))
            lake.write_bytes(attempt.uri(PLOT_FILE), png)
            files.append(attempt.entry(attempt.uri(PLOT_FILE)))
            if export is not None:
                files.extend(export(lake, part, attempt, data, clusters))
            extra = {
                **clusters.summary(),
                **clusters.eps.metadata(),
                "min_samples": settings.min_samples,
                **clusters.analysis.metadata(),
                "dbscan_stats": clusters.dbscan.stats,
                "stage_seconds": clusters.seconds,
                "check": centroid_check(clusters, settings.min_centroid_cosine),
                "embedder": profile.describe(),
                "random_init": profile.random_init,
                "embedding_files": data.files,
            }
            return Written(files, rows=len(data.vectors), extra=_plain(extra))

        outcome = materialize_partition(
            artifact,
            {**clustering, "embeddings": source_manifest.content_hash},
            version,
            owner(context),
            write,
            force=config.force,
        )
        extra = dict(outcome.manifest.extra)
        check = extra.pop("check")
        plot = committed_file(artifact, f"/{PLOT_FILE}")
        png = lake.read_bytes(plot)
        metadata = {
            **extra,
            "nn_similarity_plot": MetadataValue.md(png_markdown(png, "nearest-neighbour cosine similarity")),
            "nn_similarity_png": plot,
        }
        passed = bool(check.pop("passed"))
        check_metadata = {key: value for key, value in check.items() if value is not None}
        result = AssetCheckResult(check_name=CENTROID_CHECK, passed=passed, metadata=check_metadata)
        return materialize_result(context, artifact, outcome, metadata, check_results=[result])

    return _clusters


# --- CelebA-HQ ------------------------------------------------------------------------------------------


def _committed(lake: Storage, artifact_of: ArtifactFor, file_name: str) -> tuple[str, Any]:
    """The committed file ``file_name`` of an (unpartitioned) artifact, and the artifact's manifest."""
    artifact = artifact_of(lake, "all")
    return committed_file(artifact, f"/{file_name}"), artifact.require_manifest()


def _read_table(lake: Storage, uri: str) -> pa.Table:
    with lake.open(uri, "rb") as handle:
        return pq.read_table(handle)


def celebahq_export(
    lake: Storage, part: str, attempt: Attempt, data: EmbeddingInput, clusters: IdentityClusters
) -> list[FileEntry]:
    """The card's layout (``data/<source file>.parquet``), ``embeddings.parquet`` (file_name, cluster_id,
    cluster_size, embedding, provenance) and ``no_face.parquet`` (images that got no identity)."""
    index_uri, index_manifest = _committed(lake, celebahq.images_artifact, celebahq.INDEX_FILE)
    labels = {
        "file_name": data.ids.column("file_name"),
        "cluster_id": pa.array(clusters.identity, pa.int64()),
        "cluster_size": pa.array(clusters.cluster_size, pa.int64()),
    }
    written = celebahq.write_clusters_layout(
        lake,
        index_manifest.extra["folder"],
        _read_table(lake, index_uri),
        pa.table(labels),
        lambda name: attempt.uri(f"data/{name}"),
    )
    files = [attempt.entry(uri, rows=rows) for uri, rows in written]
    table = embedding_table(data.vectors, EmbedderProfile.from_provenance(data.space), labels)
    write_parquet(lake, attempt.uri(celebahq.EMBEDDINGS_FILE), table)
    files.append(attempt.entry(attempt.uri(celebahq.EMBEDDINGS_FILE), rows=table.num_rows))
    no_face_uri, _ = _committed(lake, celebahq.embeddings_artifact, celebahq.NO_FACE_FILE)
    no_face = _read_table(lake, no_face_uri)
    write_parquet(lake, attempt.uri(celebahq.NO_FACE_FILE), no_face)
    files.append(attempt.entry(attempt.uri(celebahq.NO_FACE_FILE), rows=no_face.num_rows))
    return files


def celebahq_assets(settings: FacelakeSettings) -> list:
    """celebahq_images -> celebahq_face_embeddings -> celebahq_identity_clusters."""
    clustering = settings.clustering
    folder = settings.source_uri(clustering.celebahq_uri)
    images_config = {"folder": folder}
    images_version = code_version("1", images_config)

    @asset(
        name="celebahq_images",
        group_name=GROUP,
        code_version=images_version,
        kinds={"parquet"},
        op_tags=GPU_FREE_TAGS,
        description="The CelebA-HQ images as released (jxie/celeba-hq parquet export: image struct<bytes, path>) "
        "under the configured folder: checked and indexed (file_name, source_file, source_row); the images stay "
        "in the source files.",
    )
    def celebahq_images(
        context: AssetExecutionContext, config: CommitConfig, storage: StorageResource
    ) -> MaterializeResult:
        lake = storage.get()
        artifact = celebahq.images_artifact(lake)
        files = celebahq.source_files(lake, folder)

        def write(attempt: Attempt) -> Written:
            index = celebahq.build_index(lake, folder)
            uri = attempt.uri(celebahq.INDEX_FILE)
            write_parquet(lake, uri, index)
            extra = {"folder": folder, "source_files": len(files)}
            return Written([attempt.entry(uri, rows=index.num_rows)], rows=index.num_rows, extra=extra)

        outcome = materialize_partition(
            artifact,
            {**images_config, "source": source_fingerprints(lake, files)},
            images_version,
            owner(context),
            write,
            force=config.force,
        )
        return materialize_result(context, artifact, outcome, {"source": folder, "source_files": len(files)})

    models = settings.models
    embed_version = code_version(
        "1",
        {
            "embedder": models.embedder,
            "backbone": models.detector_backbone,
            "max_side": models.detector_max_side,
            "threshold": models.detector_threshold,
            "paths": models.paths,
        },
    )

    @gpu_asset(
        name="celebahq_face_embeddings",
        group_name=GROUP,
        deps=["celebahq_images"],
        code_version=embed_version,
        description="Identity embeddings (L2-normalised, with the embedder's provenance) of the primary face of "
        "every CelebA-HQ image: the largest RetinaFace detection; images without a face are listed in "
        "no_face.parquet.",
    )
    def celebahq_face_embeddings(
        context: AssetExecutionContext,
        config: CommitConfig,
        storage: StorageResource,
        models: ModelRegistryResource,
    ) -> MaterializeResult:
        lake = storage.get()
        index_uri, index_manifest = _committed(lake, celebahq.images_artifact, celebahq.INDEX_FILE)
        artifact = celebahq.embeddings_artifact(lake)
        detector, embedder = models.detector(), models.identity_embedder()
        weights = models.describe(detector_model(models.detector_backbone))
        profile = embedder.profile
        stage_config = {
            **detector.config(),
            "detector_weights_sha256": weights["sha256"],
            **profile.provenance(),
            "images": index_manifest.content_hash,
        }
        counter = StageCounter()
        context.log.info(f"{detector.name} on {detector.device}; embedder {profile.describe()}")

        def write(attempt: Attempt) -> Written:
            index = _read_table(lake, index_uri)
            batches = celebahq.iter_source_images(
                lake, index_manifest.extra["folder"], index, clustering.face_batch_size
            )
            embedded = celebahq.embed_source_images(batches, detector, embedder, counter)
            files = []
            for file_name, table in (
                (celebahq.EMBEDDINGS_FILE, embedded.embeddings),
                (celebahq.NO_FACE_FILE, embedded.no_face),
            ):
                write_parquet(lake, attempt.uri(file_name), table)
                files.append(attempt.entry(attempt.uri(file_name), rows=table.num_rows))
            extra = {
                "images": index.num_rows,
                "faces_embedded": embedded.embeddings.num_rows,
                "images_without_face": embedded.no_face.num_rows,
                "embedder": profile.provenance(),
            }
            return Written(files, rows=embedded.embeddings.num_rows, extra=extra)

        outcome = materialize_partition(
            artifact, stage_config, embed_version, owner(context), write, force=config.force
        )
        extra = outcome.manifest.extra
        metadata = stage_metadata(
            counter,
            {
                "detector": detector.name,
                "device": str(detector.device),
                "embedder": profile.describe(),
                "random_init": profile.random_init,
                "same_identity_cosine_distance": profile.same_identity_cosine_distance,
                "images": extra["images"],
                "faces_embedded": extra["faces_embedded"],
                "images_without_face": extra["images_without_face"],
            },
        )
        return materialize_result(context, artifact, outcome, metadata)

    clusters = identity_clusters_asset(
        name="celebahq_identity_clusters",
        embeddings="celebahq_face_embeddings",
        embeddings_artifact=celebahq.embeddings_artifact,
        out_artifact=celebahq.clusters_artifact,
        settings=clustering,
        group=GROUP,
        export=celebahq_export,
        export_version="celebahq_512_id_clusters-1",
    )
    return [celebahq_images, celebahq_face_embeddings, clusters]


def identity_cluster_assets(settings: FacelakeSettings) -> list:
    """The CelebA-HQ chain and the per-part identity clusters of LAION-Face's embeddings."""
    laion = identity_clusters_asset(
        name="laion_face_identity_clusters",
        embeddings="laion_face_embeddings",
        embeddings_artifact=laion_artifacts.embeddings,
        out_artifact=lambda lake, part: laion_artifacts.part_artifact(lake, "identity_clusters", part),
        settings=settings.clustering,
        group="laion_face_models",
        partitions_def=laion_parts,
    )
    return [*celebahq_assets(settings), laion]
