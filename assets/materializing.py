"""The few lines every asset shares: run config, code versions with a config hash, the commit, the result.

An asset body resolves its inputs into a :class:`Commit` (the partition, the config that identifies its
output, how to write it) and returns :func:`commit_and_report`: commit manifest-last under this run's lease,
then the MaterializeResult with the manifest's facts and the asset's own metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
)

from facelake.lake.commit import (
    Attempt,
    CommitOutcome,
    Manifest,
    PartitionArtifact,
    Written,
    materialize_partition,
)
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


@dataclass
class Commit:
    """One asset run's commit: ``write`` fills an attempt of ``artifact``; ``run_config`` identifies the output
    (a committed partition with the same config and code version is reused unless ``force``)."""

    artifact: PartitionArtifact
    run_config: dict[str, Any]
    write: Callable[[Attempt], Written]
    force: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    """Further :func:`~facelake.lake.commit.materialize_partition` options (``lease_ttl_s``, ``keep``)."""


def failing_check(name: str, passed: bool, metadata: dict[str, Any] | None = None) -> AssetCheckResult:
    """An ERROR-severity check result; ``metadata`` keeps only its numbers (the facts a check shows)."""
    numbers = {
        k: v for k, v in (metadata or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return AssetCheckResult(
        check_name=name, passed=bool(passed), severity=AssetCheckSeverity.ERROR, metadata=numbers
    )


def commit_and_report(
    context: AssetExecutionContext,
    version: str,
    commit: Commit,
    report: Callable[[Manifest], dict[str, Any]] | None = None,
    checks: Callable[[Manifest], list[AssetCheckResult]] | None = None,
) -> MaterializeResult:
    """Commit ``commit`` manifest-last with this run as the lease owner, then report: the manifest's facts,
    ``report(manifest)`` and the ``checks(manifest)`` results."""
    outcome = materialize_partition(
        commit.artifact,
        commit.run_config,
        version,
        owner(context),
        commit.write,
        force=commit.force,
        **commit.options,
    )
    manifest = outcome.manifest
    return materialize_result(
        context,
        commit.artifact,
        outcome,
        report(manifest) if report else None,
        check_results=checks(manifest) if checks else None,
    )


@dataclass
class Step:
    """One run of a committed asset: its context and run config, the lake, and the partition key."""

    context: AssetExecutionContext
    config: CommitConfig
    lake: Storage

    @property
    def part(self) -> str:
        """The partition key (``all`` for an unpartitioned asset)."""
        return self.context.partition_key if self.context.has_partition_key else "all"

    def resource(self, name: str) -> Any:
        """The resource ``name`` (declared in :func:`committed_asset`'s ``resources``)."""
        return getattr(self.context.resources, name)


@dataclass
class Plan:
    """What a committed asset does in one run: the commit, then how to report the committed manifest."""

    commit: Commit
    report: Callable[[Manifest], dict[str, Any]] | None = None
    checks: Callable[[Manifest], list[AssetCheckResult]] | None = None


def lake_asset(
    decorator: Callable[..., Any],
    *,
    resources: tuple[str, ...] = (),
    config_type: type[CommitConfig] = CommitConfig,
    **asset_kwargs: Any,
) -> Callable[[Callable[[Step], MaterializeResult]], Any]:
    """Turn ``run(step) -> MaterializeResult`` into an asset made by ``decorator`` (e.g. ``cpu_asset``) that
    needs ``storage`` plus ``resources`` and takes run config ``config_type``."""

    def wrap(run: Callable[[Step], MaterializeResult]) -> Any:
        def body(context: AssetExecutionContext, config: CommitConfig) -> MaterializeResult:
            return run(Step(context, config, context.resources.storage.get()))

        # Dagster reads the context and run config types from the annotations (real types, not strings)
        body.__annotations__ = {
            "context": AssetExecutionContext,
            "config": config_type,
            "return": MaterializeResult,
        }
        body.__name__, body.__doc__ = run.__name__, run.__doc__
        return decorator(
            name=asset_kwargs.pop("name", run.__name__),
            required_resource_keys={"storage", *resources},
            **asset_kwargs,
        )(body)

    return wrap


def committed_asset(
    decorator: Callable[..., Any], *, version: str, **asset_kwargs: Any
) -> Callable[[Callable[[Step], Plan]], Any]:
    """Turn ``plan(step) -> Plan`` into an asset (see :func:`lake_asset` for the other arguments): resolve
    the lake, plan, commit manifest-last under this run's lease, report."""

    def wrap(plan: Callable[[Step], Plan]) -> Any:
        def run(step: Step) -> MaterializeResult:
            planned = plan(step)
            return commit_and_report(step.context, version, planned.commit, planned.report, planned.checks)

        run.__name__, run.__doc__ = plan.__name__, plan.__doc__
        return lake_asset(decorator, code_version=version, **asset_kwargs)(run)

    return wrap


def _metadata_value(value: Any) -> Any:
    if isinstance(value, str) and (value.startswith("/") or "://" in value):
        return MetadataValue.url(value) if value.startswith("http") else MetadataValue.path(value)
    if isinstance(value, dict | list):
        return MetadataValue.json(value)
    return value
