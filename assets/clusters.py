"""Identity clusters (DBSCAN, cosine distance) for any face-embedding asset.

:func:`identity_clusters_asset` builds the clustering stage for ANY committed embedding asset, partitioned or
not (one clustering per partition): NN-similarity analysis, eps from the embedder's profile / the valley /
fixed (recorded), scikit-learn-exact DBSCAN on the GPU pool (DESIGN §4), singleton identities, centroids,
the NN-similarity plot, and the asset check ``members_near_centroid``.

"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

from collections.abc import Callable
from typing import Any

import numpy as np
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetsDefinition,
    MetadataValue,
    PartitionsDefinition,
)

from assets.materializing import Commit, Plan, Step, code_version, committed_asset
from assets.pools import ArtifactFor, gpu_asset
from facelake.clusters.identity_clusters import (
    ASSIGNMENTS_FILE,
    CENTROIDS_FILE,
    PLOT_FILE,
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
from facelake.faces.identity import EmbedderProfile
from facelake.laion.artifacts import committed_file
from facelake.lake.commit import Attempt, FileEntry, Manifest, Written
from facelake.lake.errors import InputError
from facelake.lake.plots import png_markdown
from facelake.lake.storage import Storage

CENTROID_CHECK = "members_near_centroid"

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


def _centroid_check(manifest: Manifest) -> list[AssetCheckResult]:
    check = dict(manifest.extra["check"])
    passed = bool(check.pop("passed"))
    metadata = {key: value for key, value in check.items() if value is not None}
    return [AssetCheckResult(check_name=CENTROID_CHECK, passed=passed, metadata=metadata)]


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

    @committed_asset(
        gpu_asset,
        version=version,
        name=name,
        group_name=group,
        partitions_def=partitions_def,
        deps=[embeddings],
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
    def _clusters(step: Step) -> Plan:
        context, lake = step.context, step.lake
        source, artifact = embeddings_artifact(lake, step.part), out_artifact(lake, step.part)
        source_manifest = source.require_manifest()

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
                progress=context.log.info,
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
                files.extend(export(lake, step.part, attempt, data, clusters))
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

        def report(manifest: Manifest) -> dict[str, Any]:
            extra = {k: v for k, v in manifest.extra.items() if k != "check"}
            plot = committed_file(artifact, f"/{PLOT_FILE}")
            png = lake.read_bytes(plot)
            return {
                **extra,
                "nn_similarity_plot": MetadataValue.md(
                    png_markdown(png, "nearest-neighbour cosine similarity")
                ),
                "nn_similarity_png": plot,
            }

        run_config = {**clustering, "embeddings": source_manifest.content_hash}
        return Plan(Commit(artifact, run_config, write, step.config.force), report, _centroid_check)

    return _clusters
