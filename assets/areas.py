"""One dataset area's Dagster definitions (assets, checks, jobs, schedules), collected by type."""

from collections.abc import Iterable

from dagster import AssetChecksDefinition, Definitions


def area_definitions(nodes: Iterable, jobs: Iterable = (), schedules: Iterable = ()) -> Definitions:
    """Definitions of an area: its asset checks told apart from its assets by type, not by position."""
    nodes = list(nodes)
    checks = [n for n in nodes if isinstance(n, AssetChecksDefinition)]
    assets = [n for n in nodes if not isinstance(n, AssetChecksDefinition)]
    return Definitions(assets=assets, asset_checks=checks, jobs=list(jobs), schedules=list(schedules))
