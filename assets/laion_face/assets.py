"""LAION-Face assets: id list, opt-out blocklist, filtered metadata, downloaded images, released detections.

Each asset is a plan (:func:`assets.materializing.committed_asset`): it resolves its inputs, says what to
write and how to report it; committing manifest-last and the result are shared. Assets are built by
:func:`laion_assets` so code versions can carry the hash of the settings that change their output: editing
such a setting shows the asset as stale in the UI.
"""

# No "from __future__ import annotations" here: Dagster reads the asset functions' annotations at runtime.

import functools

import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    DataVersion,
    DataVersionsByPartition,
    MaterializeResult,
    MetadataValue,
    observable_source_asset,
)

from assets.materializing import (
    Commit,
    CommitConfig,
    Plan,
    Step,
    code_version,
    committed_asset,
    source_fingerprints,
)
from assets.partitions import laion_parts
from assets.pools import CPU_TAGS, cpu_asset
from facelake.catalog import run_report
from facelake.laion import artifacts
from facelake.laion.detections import convert_sample2detect
from facelake.laion.ids import convert_face_ids, read_part_ids
from facelake.laion.meta import filter_meta_part
from facelake.laion.optout import blocked_sample_ids, read_blocklists
from facelake.laion.part_download import download_part, drop_rows_with_ids
from facelake.lake.commit import Attempt, Manifest, Written
from facelake.lake.tables import read_parquet
from facelake.settings import FacelakeSettings
from resources import CatalogResource, Img2DatasetResource, LaionSourcesResource, StorageResource
from resources.catalog import table_metadata

GROUP = "laion_face"


class ImagesConfig(CommitConfig):
    """Run config of the download: resume is automatic; these ask for more."""

    retry_failed: bool = False
    """Re-request only the SAMPLE_IDs whose final status is not success, into new shards."""


laion_asset = functools.partial(cpu_asset, group_name=GROUP)
"""``@asset`` of this area: group ``laion_face``, the celery ``cpu`` queue."""
laion_committed = functools.partial(committed_asset, laion_asset, resources=("laion_sources",))
"""A committed asset of this area (:func:`assets.materializing.committed_asset`) that reads the sources."""


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


def _download_metadata(manifest: Manifest) -> dict:
    """The download's summary (committed in the manifest) as the images asset's metadata."""
    summary = manifest.extra
    return {
        "counts_by_status": summary.get("by_status", {}),
        "success_rate": float(summary.get("success_rate", 0.0)),
        "images_per_second": round(float(summary.get("images_per_s", 0.0)), 2),
        "downloaded_bytes": summary.get("tar_bytes", 0),
        "shards": summary.get("shards", 0),
        "retried_samples": summary.get("retried_samples", 0),
        "robots_disallowed": summary.get("robots_disallowed", 0),
        "top_errors": summary.get("top_errors", {}),
    }


def _success_rate_check(manifest: Manifest, threshold: float) -> AssetCheckResult:
    rate = float(manifest.extra.get("success_rate", 0.0))
    return AssetCheckResult(
        check_name="success_rate",
        passed=rate >= threshold,
        severity=AssetCheckSeverity.WARN,
        metadata={"success_rate": rate, "threshold": threshold},
    )


def _reported(manifest: Manifest, *keys: str) -> dict:
    """The manifest's extra values under ``keys`` (0 where absent)."""
    return {key: manifest.extra.get(key, 0) for key in keys}


def laion_assets(settings: FacelakeSettings) -> list:
    """Every LAION-Face asset and source, with code versions tied to the settings that shape their output."""
    laion = settings.laion
    download = Img2DatasetResource.from_settings(settings)

    @observable_source_asset(
        name="laion400m_meta",
        group_name=GROUP,
        op_tags=CPU_TAGS,
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
        op_tags=CPU_TAGS,
        partitions_def=laion_parts,
        description="The released batch-face RetinaFace detections, one sample2detect_{i}.pth per part.",
    )
    def laion_sample2detect(
        laion_sources: LaionSourcesResource, storage: StorageResource
    ) -> DataVersionsByPartition:
        return _observe_parts(laion_sources, storage, lambda s, i: s.sample2detect_uri(i))

    ids_config = {"face_ids_uri": laion.face_ids_uri}

    @laion_committed(
        version=code_version("1", ids_config),
        kinds={"parquet", "pytorch"},
        description="The released LAION-Face id list (laion_face_ids.pth, 32 splits), read with "
        "torch.load(weights_only=True) only, converted once into parquet (part, SAMPLE_ID).",
    )
    def laion_face_ids(step: Step) -> Plan:
        lake, source = step.lake, step.resource("laion_sources").ids_uri()

        def write(attempt: Attempt) -> Written:
            out = attempt.uri("face_ids.parquet")
            stats = convert_face_ids(source, out, lake)
            extra = {"per_part": [int(n) for n in stats["rows_per_part"]]}
            return Written([attempt.entry(out, rows=stats["rows"])], rows=stats["rows"], extra=extra)

        run_config = {**ids_config, "source": source_fingerprints(lake, [source])}
        return Plan(
            Commit(artifacts.face_ids(lake), run_config, write, step.config.force),
            lambda manifest: {"source": source, "ids_per_part": manifest.extra["per_part"]},
        )

    @laion_committed(
        version=code_version("1", {"optout_uris": laion.optout_uris}),
        kinds={"parquet"},
        description="SAMPLE_ID / URL blocklist of people who asked to be removed; applied before download and "
        "again by every later asset. Empty when no blocklist is configured.",
    )
    def laion_face_optout(step: Step) -> Plan:
        lake = step.lake
        sources = step.resource("laion_sources").blocklist_uris()

        def write(attempt: Attempt) -> Written:
            table = read_blocklists(sources, lake)
            out = attempt.uri("blocklist.parquet")
            with lake.open(out, "wb") as handle:
                pq.write_table(table, handle)
            return Written([attempt.entry(out, rows=table.num_rows)], rows=table.num_rows)

        run_config = {"optout_uris": source_fingerprints(lake, sources)}
        return Plan(
            Commit(artifacts.optout(lake), run_config, write, step.config.force),
            lambda manifest: {"blocklists": sources},
        )

    meta_config = {"meta_uri_template": laion.meta_uri_template}

    @laion_committed(
        version=code_version("1", meta_config),
        partitions_def=laion_parts,
        deps=[laion400m_meta, laion_face_ids],
        kinds={"parquet", "polars"},
        description="One laion400m part filtered to the LAION-Face ids: the authors' rows in the authors' "
        "order, with the source part's Arrow types (nulls kept) and no index column.",
    )
    def laion_face_meta(step: Step) -> Plan:
        lake, index = step.lake, artifacts.part_index(step.part)
        source = step.resource("laion_sources").meta_uri(index)
        ids_artifact = artifacts.face_ids(lake)
        ids_manifest = ids_artifact.require_manifest()

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
        return Plan(
            Commit(artifacts.meta(lake, step.part), run_config, write, step.config.force),
            lambda manifest: {"source": source, **_reported(manifest, "rows_in", "rows_out")},
        )

    @laion_committed(
        version=code_version("1", download.output_config()),
        resources=("img2dataset",),
        config_type=ImagesConfig,
        name="laion_face_images",
        partitions_def=laion_parts,
        deps=[laion_face_meta, laion_face_optout],
        kinds={"webdataset"},
        op_tags={**CPU_TAGS, "facelake/network": "download"},
        check_specs=[AssetCheckSpec("success_rate", asset="laion_face_images")],
        description="img2dataset download of the part (webdataset shards, the authors' options). Resumes "
        "at shard granularity; retry_failed re-requests only failed SAMPLE_IDs into new shards.",
    )
    def laion_face_images(step: Step) -> Plan:
        lake, config = step.lake, step.config
        img2dataset: Img2DatasetResource = step.resource("img2dataset")
        meta_artifact = artifacts.meta(lake, step.part)
        meta_manifest = meta_artifact.require_manifest()
        blocklist_artifact = artifacts.optout(lake)
        blocklist_manifest = blocklist_artifact.require_manifest()

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
                log=step.context.log.info,
            )
            return result.written

        run_config = {
            **img2dataset.output_config(),
            "meta": meta_manifest.content_hash,
            "optout": blocklist_manifest.content_hash,
        }
        commit = Commit(
            artifacts.images(lake, step.part),
            run_config,
            write,
            force=config.force or config.retry_failed,
            options={"lease_ttl_s": img2dataset.lease_ttl_s, "keep": ("shards/", "input/")},
        )
        return Plan(
            commit,
            _download_metadata,
            lambda manifest: [_success_rate_check(manifest, img2dataset.min_success_rate)],
        )

    detections_config = {"sample2detect_uri_template": laion.sample2detect_uri_template}

    @laion_committed(
        version=code_version("1", detections_config),
        partitions_def=laion_parts,
        deps=[laion_sample2detect, laion_face_optout, laion_face_meta],
        kinds={"parquet"},
        description="The released sample2detect_{i}.pth as a parquet table, one row per face (sample_id, "
        "face_index, box, 5 landmarks, score), joinable with the part's download parquet on SAMPLE_ID. "
        "Blocked samples are dropped.",
    )
    def laion_face_detections(step: Step) -> Plan:
        lake, index = step.lake, artifacts.part_index(step.part)
        source = step.resource("laion_sources").sample2detect_uri(index)
        blocklist_artifact = artifacts.optout(lake)
        meta_artifact = artifacts.meta(lake, step.part)

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
            "optout": blocklist_artifact.require_manifest().content_hash,
            "meta": meta_artifact.require_manifest().content_hash,
        }
        return Plan(
            Commit(artifacts.detections(lake, step.part), run_config, write, step.config.force),
            lambda manifest: {
                "source": source,
                **_reported(manifest, "samples", "faces", "blocked_faces"),
                "faces_per_sample": MetadataValue.json(manifest.extra.get("faces_per_sample", {})),
            },
        )

    @laion_asset(
        name="laion_face_report",
        code_version="1",
        deps=[laion_face_meta, laion_face_images, laion_face_detections],
        kinds={"duckdb", "sql"},
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
