"""Exact nearest-neighbour statistics of packed points: the minimum angle, NN cosines, gallery distance."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from facelake.vectors.gram import default_device, select_backend
from facelake.vectors.neighbours import (
    auto_backend,
    cross_search,
    search_block,
    self_search,
    unit_rows,
)


def packing_metrics(
    points: np.ndarray,
    gallery: np.ndarray | None = None,
    *,
    screen: str = "auto",
    device: str | None = None,
    block: int | None = None,
    bins: int = 50,
) -> dict[str, Any]:
    """Exact nearest-neighbour statistics of ``points`` (and their distance to ``gallery``), in blocks.

    min_angle_deg, mean/max_nn_cosine, nn_cosine_quantiles {p01,p05,p50,p95,p99}, nn_cosine_histogram
    {edges, counts} (``bins`` equal bins), mean_gallery_distance (mean_i min_g 1 − cos; None without a
    gallery), count, dim. The objective is ``mean_nn_cosine + α · mean_gallery_distance``.
    """
    unit = unit_rows(points, "points")
    device = device or default_device()
    rows = torch.from_numpy(unit).to(device)
    backend = auto_backend(rows, screen, device)
    size = search_block(device, block)
    _, dots = self_search(rows, backend, search_block(device, block, len(rows)))
    metrics = nn_metrics(dots.cpu().numpy(), bins)
    metrics.update(count=int(unit.shape[0]), dim=int(unit.shape[1]), mean_gallery_distance=None)
    if gallery is not None:
        base = torch.from_numpy(unit_rows(gallery, "gallery")).to(device)
        _, gdots = cross_search(rows, base, select_backend(screen, unit.shape[1], device), size)
        metrics["mean_gallery_distance"] = float(np.mean(1.0 - gdots.cpu().numpy()))
    return metrics


def angle_deg(cosine: float) -> float:
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def nn_metrics(dots: np.ndarray, bins: int = 50) -> dict[str, Any]:
    cos = dots.astype(np.float32)
    quantiles = np.quantile(cos.astype(np.float64), [0.01, 0.05, 0.5, 0.95, 0.99])
    counts, edges = np.histogram(cos, bins=bins)
    return {
        "min_angle_deg": angle_deg(float(dots.max())),
        "mean_nn_cosine": float(dots.mean()),
        "max_nn_cosine": float(cos.max()),
        "nn_cosine_quantiles": dict(
            zip(("p01", "p05", "p50", "p95", "p99"), map(float, quantiles), strict=True)
        ),
        "nn_cosine_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def progress_metrics(dots: torch.Tensor) -> dict[str, float]:
    """The minimum angle and mean NN cosine of rows whose nearest-neighbour dots are ``dots``."""
    return {"min_angle_deg": angle_deg(float(dots.max())), "mean_nn_cosine": float(dots.mean())}
