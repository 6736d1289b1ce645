"""One dataset area's Dagster definitions (assets, checks, jobs, schedules), collected by type."""

from collections.abc import Iterable

from dagster import (
    AssetChecksDefinition,
    AssetSelection,
    Definitions,
    PartitionsDefinition,
    define_asset_job,
)

from assets.pools import GPU_RUN_TAGS


def area_definitions(nodes: Iterable, jobs: Iterable = (), schedules: Iterable = ()) -> Definitions:
    """Definitions of an area: its asset checks told apart from its assets by type, not by position."""
    nodes = list(nodes)
    checks = [n for n in nodes if isinstance(n, AssetChecksDefinition)]
    assets = [n for n in nodes if not isinstance(n, AssetChecksDefinition)]
    return Definitions(assets=assets, asset_checks=checks, jobs=list(jobs), schedules=list(schedules))


def asset_job(
    name: str,
    assets: Iterable,
    description: str,
    tags: dict | None = None,
    partitions_def: PartitionsDefinition | None = None,
):
    """A job over ``assets`` (names or keys); ``tags`` are its definition and run tags, so every launch path
    (UI, schedule, backfill) tags its runs."""
    return define_asset_job(
        name,
        selection=AssetSelection.assets(*assets),
        tags=tags,
        description=description,
        partitions_def=partitions_def,
    )


def gpu_job(name: str, assets: Iterable, description: str):
    """:func:`asset_job` whose runs carry the GPU run tag (the run queue holds them to the GPU limit)."""
    return asset_job(name, assets, description, tags=GPU_RUN_TAGS)
