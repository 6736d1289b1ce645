"""Exact cross pairs of two sets of unit vectors: the top-K pairs of the whole product, and every pair at or
above a threshold, in one blocked pass that never holds N×M.

The K most similar pairs of ``queries × base`` (ties: smaller query row, then smaller base row) and every pair
with cosine ``>= threshold``, where the cosine is the float64 dot of the float32 unit rows. Blocks of the
product are screened in the fastest measured precision (:func:`facelake.vectors.gram.select_backend`) with the
proven bound ``b`` on the screening error (:meth:`~facelake.vectors.gram.GramBackend.error_bound`, scaled
for norms within 1e-6 of 1, plus float64's own). A running multiset ``S`` of the K largest screened values seen so far (distinct pairs) gives
``s_K``; every true top-K pair has exact value ``>= s_K − b`` and so screened value ``>= s_K − 2b``. Each block
keeps the entries at or above ``min(s_K − 2b, threshold − b)`` (tiled extraction,
:func:`facelake.clusters.dbscan.threshold_candidates`); the first block, before ``S`` holds K values, takes its
own K-th value as ``s_K``. The survivors of the final ``s_K`` are re-scored exactly and ranked. So the result
does not depend on the screen, the block size or the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from facelake.clusters.dbscan import float32_at_most, float64_bound, serial_on_cpu, threshold_candidates
from facelake.lake.progress import Progress
from facelake.vectors.gram import default_device, select_backend, strict_matmul
from facelake.vectors.neighbours import exact_dots, search_block, unit_rows

_INF = float("inf")
_NORM_SLACK = 1.0 + 1e-5
"""The unit-vector bound scaled for rows whose norms ``unit_rows`` leaves within 1e-6 of 1."""


@dataclass
class CrossPairs:
    """Pairs ``(rows[i], cols[i])`` best first, their exact ``cosine`` (float64), whether each is among the
    top K (``top``) and at or above the threshold (``above``), and how the search went (``stats``)."""

    rows: np.ndarray
    cols: np.ndarray
    cosine: np.ndarray
    top: np.ndarray
    above: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


def cross_pairs(
    queries: np.ndarray,
    base: np.ndarray,
    *,
    top_k: int = 200,
    threshold: float | None = None,
    screen: str = "auto",
    block: int | None = None,
    device: str | None = None,
    progress: Progress | None = None,
) -> CrossPairs:
    """The exact top-``top_k`` pairs of ``queries × base`` and every pair with cosine ``>= threshold`` (see the
    module doc). Rows are used as float32 unit vectors (re-normalised if they are not). ``progress`` advances by
    the pairs screened."""
    started = time.perf_counter()
    q, b = unit_rows(queries, "queries"), unit_rows(base, "base")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"queries are {q.shape[1]}-d but base is {b.shape[1]}-d")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    n, m, dim = len(q), len(b), q.shape[1]
    k = min(int(top_k), n * m)
    device = device or default_device()
    backend = select_backend(screen, dim, device)
    rows_per_block = search_block(device, block)
    bound = backend.error_bound(dim) * _NORM_SLACK + float64_bound(dim)
    thr_low = float32_at_most(float(threshold) - bound) if threshold is not None else _INF
    q_cpu, b_cpu = torch.from_numpy(q), torch.from_numpy(b)
    qs, bs = backend.prepare(q_cpu.to(device)), backend.prepare(b_cpu.to(device))
    best = torch.empty(0)
    parts: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []
    with strict_matmul(), torch.inference_mode():
        for i0 in range(0, n, rows_per_block):
            i1 = min(i0 + rows_per_block, n)
            for j0 in range(0, m, rows_per_block):
                j1 = min(j0 + rows_per_block, m)
                gram = backend.gram(qs[i0:i1], bs[j0:j1])
                kth = float(best[k - 1]) if k and len(best) == k else -_INF
                if k and len(best) < k and gram.numel() >= k:
                    kth = max(kth, float(gram.reshape(-1).topk(k).values[-1]))
                low = min(kth - 2.0 * bound if k else _INF, thr_low)
                if low < _INF:
                    with serial_on_cpu(backend.device):
                        rows, cols, _ = threshold_candidates(gram, float32_at_most(low), _INF, diagonal=False)
                    if len(rows):
                        values = gram[
                            torch.from_numpy(rows).to(gram.device), torch.from_numpy(cols).to(gram.device)
                        ]
                        values = values.float().cpu()
                        parts.append((rows + i0, cols + j0, values))
                        if k:
                            merged = torch.cat([best, values])
                            best = merged.topk(min(k, len(merged))).values
                if progress is not None:
                    progress.advance((i1 - i0) * (j1 - j0))
    screened_seconds = time.perf_counter() - started
    if parts:
        rows = np.concatenate([p[0] for p in parts]).astype(np.int64)
        cols = np.concatenate([p[1] for p in parts]).astype(np.int64)
        values = torch.cat([p[2] for p in parts]).numpy()
    else:
        rows = cols = np.zeros(0, np.int64)
        values = np.zeros(0, np.float32)
    candidates = len(rows)
    kth = float(best[k - 1]) if k and len(best) == k else -_INF
    floor = min(kth - 2.0 * bound if k else _INF, thr_low)
    keep = values >= floor
    rows, cols = rows[keep], cols[keep]
    exact = exact_dots(q_cpu, b_cpu, torch.from_numpy(rows), torch.from_numpy(cols)).numpy()
    order = np.lexsort((cols, rows, -exact))
    rows, cols, exact = rows[order], cols[order], exact[order]
    top = np.zeros(len(rows), bool)
    top[:k] = True
    above = exact >= float(threshold) if threshold is not None else np.zeros(len(rows), bool)
    wanted = top | above
    stats = {
        "screen": backend.name,
        "device": backend.device,
        "block": rows_per_block,
        "bound": bound,
        "pairs_screened": n * m,
        "candidates": candidates,
        "rechecked": int(keep.sum()),
        "seconds": round(time.perf_counter() - started, 4),
        "screen_seconds": round(screened_seconds, 4),
    }
    return CrossPairs(rows[wanted], cols[wanted], exact[wanted], top[wanted], above[wanted], stats)
