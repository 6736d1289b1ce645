"""CelebA-HQ identity clusters (seed 003, the celebahq_512_id_clusters card): ``celebahq_images`` indexes the
jxie/celeba-hq parquet export under ``{sources}``; ``celebahq_face_embeddings`` runs the registry's detector
and embedder on every image, one (the largest) face per image, recording images without a face;
``celebahq_identity_clusters`` clusters them (:func:`assets.clusters.identity_clusters_asset`) and also
writes the card's layout (``data/*.parquet``: image, file_name, cluster_id, cluster_size),
``embeddings.parquet`` and ``centroids.parquet``.
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

from typing import Any

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Definitions,
    MaterializeResult,
)

from assets.areas import area_definitions, asset_job
from assets.clusters import identity_clusters_asset
from assets.faces.stages import (
    embedder_config,
    primary_face_extra,
    primary_face_metadata,
    primary_face_models,
)
from assets.materializing import Commit, CommitConfig, code_version, commit_and_report, source_fingerprints
from assets.pools import ArtifactFor, cpu_asset, gpu_asset
from facelake.celebahq import dataset as celebahq
from facelake.clusters.identity_clusters import EmbeddingInput, IdentityClusters, write_parquet
from facelake.faces.identity import EmbedderProfile, embedding_table
from facelake.faces.stages import StageCounter
from facelake.laion.artifacts import committed_file
from facelake.lake.commit import Attempt, FileEntry, Written
from facelake.lake.storage import Storage
from facelake.lake.tables import read_parquet
from facelake.settings import FacelakeSettings
from resources import StorageResource
from resources.models import ModelRegistryResource

GROUP = "celebahq"
CELEBAHQ_ASSETS = [
    AssetKey("celebahq_images"),
    AssetKey("celebahq_face_embeddings"),
    AssetKey("celebahq_identity_clusters"),
]


def _committed(lake: Storage, artifact_of: ArtifactFor, file_name: str) -> tuple[str, Any]:
    """The committed file ``file_name`` of an (unpartitioned) artifact, and the artifact's manifest."""
    artifact = artifact_of(lake, "all")
    return committed_file(artifact, f"/{file_name}"), artifact.require_manifest()


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
        read_parquet(lake, index_uri),
        pa.table(labels),
        lambda name: attempt.uri(f"data/{name}"),
    )
    files = [attempt.entry(uri, rows=rows) for uri, rows in written]
    table = embedding_table(data.vectors, EmbedderProfile.from_provenance(data.space), labels)
    write_parquet(lake, attempt.uri(celebahq.EMBEDDINGS_FILE), table)
    files.append(attempt.entry(attempt.uri(celebahq.EMBEDDINGS_FILE), rows=table.num_rows))
    no_face_uri, _ = _committed(lake, celebahq.embeddings_artifact, celebahq.NO_FACE_FILE)
    no_face = read_parquet(lake, no_face_uri)
    write_parquet(lake, attempt.uri(celebahq.NO_FACE_FILE), no_face)
    files.append(attempt.entry(attempt.uri(celebahq.NO_FACE_FILE), rows=no_face.num_rows))
    return files


def celebahq_assets(settings: FacelakeSettings) -> list:
    """celebahq_images -> celebahq_face_embeddings -> celebahq_identity_clusters."""
    clustering = settings.clustering
    folder = settings.source_uri(clustering.celebahq_uri)
    images_config = {"folder": folder}
    images_version = code_version("1", images_config)

    @cpu_asset(
        name="celebahq_images",
        group_name=GROUP,
        code_version=images_version,
        kinds={"parquet"},
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

        run_config = {**images_config, "source": source_fingerprints(lake, files)}
        return commit_and_report(
            context,
            images_version,
            Commit(artifact, run_config, write, config.force),
            lambda manifest: {"source": folder, "source_files": len(files)},
        )

    embed_version = code_version("1", embedder_config(settings.models))

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
        detector, embedder, identity = primary_face_models(models)
        profile = embedder.profile
        stage_config = {**identity, "images": index_manifest.content_hash}
        counter = StageCounter()
        context.log.info(f"{detector.name} on {detector.device}; embedder {profile.describe()}")

        def write(attempt: Attempt) -> Written:
            index = read_parquet(lake, index_uri)
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
            extra = primary_face_extra(index.num_rows, embedded, profile)
            return Written(files, rows=embedded.embeddings.num_rows, extra=extra)

        def report(manifest) -> dict[str, Any]:
            return primary_face_metadata(
                counter,
                detector,
                profile,
                manifest.extra,
                same_identity_cosine_distance=profile.same_identity_cosine_distance,
            )

        return commit_and_report(
            context, embed_version, Commit(artifact, stage_config, write, config.force), report
        )

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


celebahq_identity_job = asset_job(
    "celebahq_identity_job",
    CELEBAHQ_ASSETS,
    "CelebA-HQ identity labels as on the celebahq_512_id_clusters card: index the jxie/celeba-hq "
    "parquet export, embed one face per image (GPU step), DBSCAN (cosine, eps from the embedder's profile, the "
    "NN-similarity valley or fixed; min_samples 2) with noise as singleton identities, and the centroid check.",
)


def definitions(settings: FacelakeSettings) -> Definitions:
    """The CelebA-HQ area for ``settings``."""
    return area_definitions(celebahq_assets(settings), jobs=[celebahq_identity_job])
