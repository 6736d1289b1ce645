"""Each point's nearest gallery embedding, exactly, without scanning the whole gallery every step.

The gallery is fixed and points move little per step, so a neighbour list with a proven validity test (the
"Verlet list" of molecular dynamics) replaces most full scans. When a row's list is (re)built at position
``a`` it keeps the gallery rows with the ``k`` largest screened dots and a *ceiling*
``c = s̃_(k+1) + bound`` above every exact dot outside the list. Later, at position ``x`` with
``δ = ‖x − a‖``, every outside row ``g`` (a unit vector) has ``x·g ≤ a·g + δ ≤ c + δ``; so if the best exact
dot inside the list is strictly larger than ``c + δ``, it is the exact nearest gallery row of the whole
gallery (ties among the listed rows → smallest index, and no outside row can tie). Rows that fail the test
are rebuilt with one blocked scan of the gallery. The list's top row is tested first on its own against the
runner-up's ceiling ``s̃_(2) + bound`` (one dot per point: the common case once the points settle). Results
are identical to a full scan; only time changes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from facelake.vectors.gram import GramBackend
from facelake.vectors.neighbours import blocked_topk, cross_search, exact_dots, nearest_among, screening_bound

_MARGIN = 1e-9
"""Slack for float64 rounding in the validity test (the exact dots are float64 sums of float32 products)."""


class GallerySearch(NamedTuple):
    """How to scan the gallery: its float32 unit rows, the same rows prepared by ``backend``, rows per block."""

    gallery: torch.Tensor
    screened: torch.Tensor
    backend: GramBackend
    block: int


class GalleryCache:
    """Per-point candidate lists into a fixed gallery, with the anchor each list was built at."""

    def __init__(self, points: int, dim: int, size: int, device: str) -> None:
        self.size = size
        self.index = torch.zeros((points, size), dtype=torch.int64, device=device)
        self.ceiling = torch.full((points,), float("inf"), dtype=torch.float64, device=device)
        self.runner_up = torch.full((points,), float("inf"), dtype=torch.float64, device=device)
        self.anchor = torch.zeros((points, dim), dtype=torch.float32, device=device)
        self.scanned_rows = 0
        self.queried_rows = 0

    def nearest(
        self, rows: torch.Tensor, u: torch.Tensor, search: GallerySearch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact nearest gallery row (index, float64 dot) of the points ``rows`` now at ``u`` [b, d].

        Tested in three tiers, cheapest first: the list's top row against the runner-up's ceiling (one dot
        per point), then the whole list against the list's ceiling, then a rebuild by a gallery scan.
        """
        self.queried_rows += len(rows)
        gallery = search.gallery
        here = torch.arange(len(rows), device=u.device)
        where = self.index[rows, 0].clone()
        best = exact_dots(u, gallery, here, where)
        moved = torch.linalg.vector_norm((u - self.anchor[rows]).double(), dim=1)
        unsure = torch.nonzero(~(best > self.runner_up[rows] + moved + _MARGIN)).squeeze(1)
        if len(unsure):
            k = min(self.size, len(gallery))
            index, value = nearest_among(u[unsure], gallery, self.index[rows[unsure], :k])
            stale = torch.nonzero(~(value > self.ceiling[rows[unsure]] + moved[unsure] + _MARGIN)).squeeze(1)
            if len(stale):
                again = unsure[stale]
                index[stale], value[stale] = self._rebuild(rows[again], u[again], search)
            where[unsure], best[unsure] = index, value
        return where, best

    def _rebuild(
        self, rows: torch.Tensor, u: torch.Tensor, search: GallerySearch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.scanned_rows += len(rows)
        gallery, screened, backend, block = search
        m = len(gallery)
        k = min(self.size, m)
        values, index = blocked_topk(backend.prepare(u), screened, backend, block, min(k + 1, m))
        bound = max(screening_bound(backend, u), screening_bound(backend, gallery))
        self.index[rows, :k] = index[:, :k]
        self.ceiling[rows] = values[:, k].double() + bound if m > k else float("-inf")
        self.runner_up[rows] = values[:, 1].double() + bound if m > 1 else float("-inf")
        self.anchor[rows] = u
        where, best = nearest_among(u, gallery, index[:, :k])
        crowded = torch.nonzero(~(best > self.ceiling[rows] + _MARGIN)).squeeze(1)
        if len(
            crowded
        ):  # more than k gallery rows inside the band: never trusted, searched exactly each time
            self.ceiling[rows[crowded]] = float("inf")
            self.runner_up[rows[crowded]] = float("inf")
            where[crowded], best[crowded] = cross_search(
                u[crowded], gallery, backend, block, screened_base=screened
            )
        return where, best
