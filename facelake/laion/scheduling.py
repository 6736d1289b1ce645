"""Which partitions a schedule tick should request: pure planning, no orchestrator calls."""

from __future__ import annotations

from collections.abc import Iterable


def plan_part_requests(
    parts: Iterable[str], committed: set[str], in_flight: set[str], max_in_flight: int
) -> list[str]:
    """Parts, in order, that are neither committed nor in flight, up to the in-flight budget left."""
    budget = max(0, max_in_flight - len(in_flight))
    todo = [p for p in parts if p not in committed and p not in in_flight]
    return todo[:budget]
