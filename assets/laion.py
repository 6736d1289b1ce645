"""LAION-Face assets: id list, opt-out blocklist, filtered metadata, downloaded images, released detections.

Each asset body resolves its inputs, calls the engine (``facelake.laion``), commits manifest-last and reports
metadata. Assets are built by :func:`laion_assets` so code versions can carry the hash of the settings that
change their output: editing such a setting shows the asset as stale in the UI.
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    DataVersion,
    DataVersionsByPartition,
    MaterializeResult,
    MetadataValue,
    asset,
    observable_source_asset,
)

from assets.materializing import (
    CommitConfig,
    code_version,
    materialize_result,
    owner,
    source_fingerprints,
)
from assets.partitions import laion_parts
from assets.pools import GPU_FREE_TAGS
from facelake.catalog import run_report
from facelake.laion import artifacts
from facelake.laion.detections import convert_sample2detect
from facelake.laion.ids import convert_face_ids, read_part_ids
from facelake.laion.meta import filter_meta_part
from facelake.laion.optout import blocked_sample_ids, read_blocklists
from facelake.laion.part_download import download_part, drop_rows_with_ids
from facelake.lake.commit import Attempt, Written, materialize_partition
from facelake.lake.tables import read_parquet
from facelake.settings import FacelakeSettings
from resources import CatalogResource, Img2DatasetResource, LaionSourcesResource, StorageResource
from resources.catalog import table_metadata

GROUP = "laion_face"


class ImagesConfig(CommitConfig):
    """Run config of the download: resume is automatic; these ask for more."""

    retry_failed: bool = False
    """Re-request only the SAMPLE_IDs whose final status is not success, into new shards."""


def _observe_parts(
    sources: LaionSourcesResource, storage: StorageResource, uri_for
) -> DataVersionsByPartition:
    lake = storage.get()
    versions = {}
    for key in laion_parts.get_partition_keys():
        uri = uri_for(sources, artifacts.part_index(key))
        if lake.exists(uri):
            versions[key] = DataVersion(lake.fingerprint(uri))
    return DataVersionsByPartition(versions)


def laion_assets(settings: FacelakeSettings) -> list:
    """Every LAION-Face asset and source, with code versions tied to the settings that shape their output."""
    laion = settings.laion
    download = Img2DatasetResource.from_settings(settings)

    @observable_source_asset(
        name="laion400m_meta",
        group_name=GROUP,
        partitions_def=laion_parts,
        description="The 32 laion400m metadata parts (SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE, NSFW, "
        "similarity), as released; observed by size and modification stamp.",
    )
    def laion400m_meta(
        laion_sources: LaionSourcesResource, storage: StorageResource
    ) -> DataVersionsByPartition:
        return _observe_parts(laion_sources, storage, lambda s, i: s.meta_uri(i))

    @observable_source_asset(
        name="laion_sample2detect",
        group_name=GROUP,
        partitions_def=laion_parts,
        description="The released batch-face RetinaFace detections, one sample2detect_{i}.pth per part.",
    )
    def laion_sample2detect(
        laion_sources: LaionSourcesResource, storage: StorageResource
    ) -> DataVersionsByPartition:
        return _observe_parts(laion_sources, storage, lambda s, i: s.sample2detect_uri(i))

    ids_config = {"face_ids_uri": laion.face_ids_uri}
    ids_version = code_version("1", ids_config)

    @asset(
        name="laion_face_ids",
        group_name=GROUP,
        code_version=ids_version,
        kinds={"parquet", "pytorch"},
        op_tags=GPU_FREE_TAGS,
        description="The released LAION-Face id list (laion_face_ids.pth, 32 splits), read with "
        "torch.load(weights_only=True) only, converted once into parquet (part, SAMPLE_ID).",
    )
    def laion_face_ids(
        context: AssetExecutionContext,
        config: CommitConfig,
        storage: StorageResource,
        laion_sources: LaionSourcesResource,
    ) -> MaterializeResult:
        lake = storage.get()
        source = laion_sources.ids_uri()
        artifact = artifacts.face_ids(lake)

        def write(attempt: Attempt) -> Written:
            out = attempt.uri("face_ids.parquet")
            stats = convert_face_ids(source, out, lake)
            extra = {"per_part": [int(n) for n in stats["rows_per_part"]]}
            return Written([attempt.entry(out, rows=stats["rows"])], rows=stats["rows"], extra=extra)

        outcome = materialize_partition(
            artifact,
            {**ids_config, "source": source_fingerprints(lake, [source])},
            ids_version,
            owner(context),
            write,
            force=config.force,
        )
        per_part = outcome.manifest.extra["per_part"]
        return materialize_result(context, artifact, outcome, {"source": source, "ids_per_part": per_part})

    optout_config = {"optout_uris": laion.optout_uris}
    optout_version = code_version("1", optout_config)

    @asset(
        name="laion_face_optout",
        group_name=GROUP,
        code_version=optout_version,
        kinds={"parquet"},
        op_tags=GPU_FREE_TAGS,
        description="SAMPLE_ID / URL blocklist of people who asked to be removed; applied before download and "
        "again by every later asset. Empty when no blocklist is configured.",
    )
    def laion_face_optout(
        context: AssetExecutionContext,
        config: CommitConfig,
        storage: StorageResource,
        laion_sources: LaionSourcesResource,
    ) -> MaterializeResult:
        lake = storage.get()
        sources = laion_sources.blocklist_uris()
        artifact = artifacts.optout(lake)

        def write(attempt: Attempt) -> Written:
            table = read_blocklists(sources, lake)
            out = attempt.uri("blocklist.parquet")
            with lake.open(out, "wb") as handle:
                pq.write_table(table, handle)
            return Written([attempt.entry(out, rows=table.num_rows)], rows=table.num_rows)

        outcome = materialize_partition(
            artifact,
            {"optout_uris": source_fingerprints(lake, sources)},
            optout_version,
            owner(context),
            write,
            force=config.force,
        )
        return materialize_result(context, artifact, outcome, {"blocklists": sources})

    meta_config = {"meta_uri_template": laion.meta_uri_template}
    meta_version = code_version("1", meta_config)

    @asset(
        name="laion_face_meta",
        group_name=GROUP,
        partitions_def=laion_parts,
        code_version=meta_version,
        deps=[laion400m_meta, laion_face_ids],
        kinds={"parquet", "polars"},
        op_tags=GPU_FREE_TAGS,
        description="One laion400m part filtered to the LAION-Face ids: the authors' rows in the authors' "
        "order, with the source part's Arrow types (nulls kept) and no index column.",
    )
    def laion_face_meta(
        context: AssetExecutionContext,
        config: CommitConfig,
        storage: StorageResource,
        laion_sources: LaionSourcesResource,
    ) -> MaterializeResult:
        lake = storage.get()
        part = context.partition_key
        index = artifacts.part_index(part)
        source = laion_sources.meta_uri(index)
        ids_artifact = artifacts.face_ids(lake)
        ids_manifest = ids_artifact.require_manifest()
        artifact = artifacts.meta(lake, part)

        def write(attempt: Attempt) -> Written:
            ids = read_part_ids(artifacts.committed_file(ids_artifact, ".parquet"), index, lake)
            out = attempt.uri(f"laion_face_part_{index:05d}.parquet")
            stats = filter_meta_part(source, ids, out, lake)
            return Written([attempt.entry(out, rows=stats["rows_out"])], rows=stats["rows_out"], extra=stats)

        run_config = {
            **meta_config,
            "source": source_fingerprints(lake, [source]),
            "face_ids": ids_manifest.content_hash,
        }
        outcome = materialize_partition(
            artifact, run_config, meta_version, owner(context), write, force=config.force
        )
        stats = outcome.manifest.extra
        return materialize_result(
            context,
            artifact,
            outcome,
            {"source": source, "rows_in": stats.get("rows_in", 0), "rows_out": stats.get("rows_out", 0)},
        )

    images_config = download.output_config()
    images_version = code_version("1", images_config)

    @asset(
        name="laion_face_images",
        group_name=GROUP,
        partitions_def=laion_parts,
        code_version=images_version,
        deps=[laion_face_meta, laion_face_optout],
        kinds={"webdataset"},
        op_tags={**GPU_FREE_TAGS, "facelake/network": "download"},
        check_specs=[AssetCheckSpec("success_rate", asset="laion_face_images")],
        description="img2dataset download of the part (webdataset shards, the authors' options). Resumes "
        "at shard granularity; retry_failed re-requests only failed SAMPLE_IDs into new shards.",
    )
    def laion_face_images(
        context: AssetExecutionContext,
        config: ImagesConfig,
        storage: StorageResource,
        img2dataset: Img2DatasetResource,
    ) -> MaterializeResult:
        lake = storage.get()
        part = context.partition_key
        meta_artifact = artifacts.meta(lake, part)
        meta_manifest = meta_artifact.require_manifest()
        blocklist_artifact = artifacts.optout(lake)
        blocklist_manifest = blocklist_artifact.require_manifest()
        artifact = artifacts.images(lake, part)

        def write(attempt: Attempt) -> Written:
            blocklist = read_parquet(lake, artifacts.committed_file(blocklist_artifact, ".parquet"))
            result = download_part(
                lake,
                attempt,
                meta_uri=artifacts.committed_file(meta_artifact, ".parquet"),
                meta_version=meta_manifest.content_hash,
                blocklist=blocklist,
                options=img2dataset.options(),
                retry_failed=config.retry_failed,
                restart=config.force,
                log=context.log.info,
            )
            return result.written

        run_config = {
            **img2dataset.output_config(),
            "meta": meta_manifest.content_hash,
            "optout": blocklist_manifest.content_hash,
        }
        outcome = materialize_partition(
            artifact,
            run_config,
            images_version,
            owner(context),
            write,
            force=config.force or config.retry_failed,
            lease_ttl_s=img2dataset.lease_ttl_s,
            keep=("shards/", "input/"),
        )
        summary = outcome.manifest.extra
        rate = float(summary.get("success_rate", 0.0))
        check = AssetCheckResult(
            check_name="success_rate",
            passed=rate >= img2dataset.min_success_rate,
            severity=AssetCheckSeverity.WARN,
            metadata={"success_rate": rate, "threshold": img2dataset.min_success_rate},
        )
        metadata = {
            "counts_by_status": summary.get("by_status", {}),
            "success_rate": rate,
            "images_per_second": round(float(summary.get("images_per_s", 0.0)), 2),
            "downloaded_bytes": summary.get("tar_bytes", 0),
            "shards": summary.get("shards", 0),
            "retried_samples": summary.get("retried_samples", 0),
            "robots_disallowed": summary.get("robots_disallowed", 0),
            "top_errors": summary.get("top_errors", {}),
        }
        return materialize_result(context, artifact, outcome, metadata, check_results=[check])

    detections_config = {"sample2detect_uri_template": laion.sample2detect_uri_template}
    detections_version = code_version("1", detections_config)

    @asset(
        name="laion_face_detections",
        group_name=GROUP,
        partitions_def=laion_parts,
        code_version=detections_version,
        deps=[laion_sample2detect, laion_face_optout, laion_face_meta],
        kinds={"parquet"},
        op_tags=GPU_FREE_TAGS,
        description="The released sample2detect_{i}.pth as a parquet table, one row per face (sample_id, "
        "face_index, box, 5 landmarks, score), joinable with the part's download parquet on SAMPLE_ID. "
        "Blocked samples are dropped.",
    )
    def laion_face_detections(
        context: AssetExecutionContext,
        config: CommitConfig,
        storage: StorageResource,
        laion_sources: LaionSourcesResource,
    ) -> MaterializeResult:
        lake = storage.get()
        part = context.partition_key
        index = artifacts.part_index(part)
        source = laion_sources.sample2detect_uri(index)
        blocklist_artifact = artifacts.optout(lake)
        blocklist_manifest = blocklist_artifact.require_manifest()
        meta_artifact = artifacts.meta(lake, part)
        meta_manifest = meta_artifact.require_manifest()
        artifact = artifacts.detections(lake, part)

        def write(attempt: Attempt) -> Written:
            out = attempt.uri(f"detections_{index:05d}.parquet")
            stats = convert_sample2detect(source, out, lake, part=index)
            blocked = blocked_sample_ids(
                read_parquet(lake, artifacts.committed_file(meta_artifact, ".parquet"), ["SAMPLE_ID", "URL"]),
                read_parquet(lake, artifacts.committed_file(blocklist_artifact, ".parquet")),
            )
            stats["blocked_faces"] = drop_rows_with_ids(lake, out, blocked, id_column="sample_id")
            rows = stats["faces"] - stats["blocked_faces"]
            return Written([attempt.entry(out, rows=rows)], rows=rows, extra=stats)

        run_config = {
            **detections_config,
            "source": source_fingerprints(lake, [source]),
            "optout": blocklist_manifest.content_hash,
            "meta": meta_manifest.content_hash,
        }
        outcome = materialize_partition(
            artifact, run_config, detections_version, owner(context), write, force=config.force
        )
        stats = outcome.manifest.extra
        return materialize_result(
            context,
            artifact,
            outcome,
            {
                "source": source,
                "samples": stats.get("samples", 0),
                "faces": stats.get("faces", 0),
                "blocked_faces": stats.get("blocked_faces", 0),
                "faces_per_sample": MetadataValue.json(stats.get("faces_per_sample", {})),
            },
        )

    @asset(
        name="laion_face_report",
        group_name=GROUP,
        code_version="1",
        deps=[laion_face_meta, laion_face_images, laion_face_detections],
        kinds={"duckdb", "sql"},
        op_tags=GPU_FREE_TAGS,
        description="Per-part report over the committed parquet (DuckDB views of sql/laion_face_views.sql): "
        "counts by download status, success rate, bytes, released faces and faces on downloaded samples.",
    )
    def laion_face_report(storage: StorageResource, catalog: CatalogResource) -> MaterializeResult:
        with catalog.connect(storage.get()) as conn:
            report = run_report(conn)
        totals = {
            "parts": report.num_rows,
            "samples": int(pc.sum(report["samples"]).as_py() or 0),
            "success": int(pc.sum(report["success"]).as_py() or 0),
        }
        return MaterializeResult(metadata={"report": table_metadata(report), **totals})

    return [
        laion400m_meta,
        laion_sample2detect,
        laion_face_ids,
        laion_face_optout,
        laion_face_meta,
        laion_face_images,
        laion_face_detections,
        laion_face_report,
    ]


LAION_PART_ASSETS = [AssetKey(k) for k in ("laion_face_meta", "laion_face_images", "laion_face_detections")]
LAION_GLOBAL_ASSETS = [AssetKey(k) for k in ("laion_face_ids", "laion_face_optout")]
