"""The few lines every asset shares: run config, code versions with a config hash, and the result."""

from __future__ import annotations

from typing import Any

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
)

from facelake.lake.commit import CommitOutcome, PartitionArtifact
from facelake.lake.hashing import config_hash
from facelake.lake.storage import Storage


class CommitConfig(Config):
    """Run config every committed asset accepts."""

    force: bool = False
    """Rewrite the partition even if it is committed with the same config and code version."""


def code_version(base: str, config: dict[str, Any]) -> str:
    """A code version that changes with the output-relevant config, so a config change shows as stale."""
    return f"{base}+cfg.{config_hash(config, 8)}"


def source_fingerprints(lake: Storage, uris: list[str]) -> dict[str, str]:
    """Source files' fingerprints, part of a run's config: a replaced source file is a new config."""
    return {uri: lake.fingerprint(uri) if lake.exists(uri) else "missing" for uri in uris}


def owner(context: AssetExecutionContext) -> str:
    """The lease owner: the run, and the partition it writes."""
    partition = context.partition_key if context.has_partition_key else "all"
    return f"run {context.run_id} ({context.job_name}, partition {partition})"


def materialize_result(
    context: AssetExecutionContext,
    artifact: PartitionArtifact,
    outcome: CommitOutcome,
    metadata: dict[str, Any] | None = None,
    check_results: list[AssetCheckResult] | None = None,
) -> MaterializeResult:
    """MaterializeResult with the manifest's facts; the data version is content hash + config hash."""
    manifest = outcome.manifest
    base = {
        "uri": artifact.prefix,
        "rows": manifest.rows if manifest.rows is not None else 0,
        "files": len(manifest.files),
        "bytes": sum(f.size for f in manifest.files),
        "content_hash": manifest.content_hash,
        "config_hash": manifest.config_hash,
        "code_version": manifest.code_version,
        "reused_committed_partition": outcome.reused,
        "seconds": round(outcome.seconds, 3),
    }
    if outcome.reused:
        context.log.info(
            f"partition already committed with this config ({manifest.created_at}): nothing to do"
        )
    merged = {**base, **(metadata or {})}
    return MaterializeResult(
        metadata={k: _metadata_value(v) for k, v in merged.items()},
        data_version=DataVersion(f"{manifest.content_hash[:16]}-{manifest.config_hash}"),
        check_results=check_results,
    )


def _metadata_value(value: Any) -> Any:
    if isinstance(value, str) and (value.startswith("/") or "://" in value):
        return MetadataValue.url(value) if value.startswith("http") else MetadataValue.path(value)
    if isinstance(value, dict | list):
        return MetadataValue.json(value)
    return value
