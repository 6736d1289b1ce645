"""Nearest-neighbour cosine analysis: the histogram that justifies a clustering eps.

The celebahq_512_id_clusters card (seed 003) plots each face's cosine to its nearest other face: two modes,
~0.8 (the neighbour is the same person) and ~0.25 (a different person who merely looks alike), with a valley
near 0.4 between them; DBSCAN's eps (a cosine *distance*) is read off that valley as ``1 − valley``.

:func:`analyse_nn_cosines` finds the modes and the valley automatically and robustly: the cosines are binned
on a fine grid over ``[-1, 1]`` and smoothed with a Gaussian kernel (a binned KDE, O(N + grid) whatever N
is), the bandwidth by Silverman's rule (with σ) unless given. The modes are the two highest local maxima of the
smoothed density that are at least ``min_separation`` apart, of which the lower reaches ``min_height`` of the
higher, *and* have a real dip between them (the minimum between them is at most ``1 − min_dip`` of the lower
peak), so tail wiggles and shoulders are not modes. The
valley is the minimum of the smoothed density between the two modes (the middle of the stretch where it is
lowest, when the density is flat there, e.g. an empty gap). :func:`nn_similarity_png` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from facelake.lake.plots import figure_png

GRID_STEP = 1e-3
"""Spacing of the grid (in cosine) the density is evaluated on."""
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(frozen=True, eq=False)
class ValleyAnalysis:
    """The smoothed nearest-neighbour cosine density, its two modes and the valley between them."""

    n: int
    grid: np.ndarray  # float64 [G]: cosine values on [-1, 1]
    density: np.ndarray  # float64 [G]: smoothed density (integrates to ~1)
    bandwidth: float  # Gaussian kernel sigma, in cosine
    modes: tuple[float, ...]  # (low, high) when bimodal, else the single highest peak (or nothing)
    valley: float | None  # cosine of the density minimum between the two modes
    quantiles: dict[str, float]
    min_separation: float
    min_dip: float

    @property
    def bimodal(self) -> bool:
        """Whether two separated modes with a real dip between them were found."""
        return self.valley is not None

    @property
    def suggested_eps(self) -> float | None:
        """The DBSCAN eps the valley suggests: cosine distance ``1 − valley`` (None if not bimodal)."""
        return None if self.valley is None else round(1.0 - self.valley, 4)

    def density_at(self, cosine: float) -> float:
        """The smoothed density at ``cosine`` (nearest grid point)."""
        return float(self.density[int(np.clip(np.rint((cosine + 1.0) / GRID_STEP), 0, len(self.grid) - 1))])

    def metadata(self) -> dict[str, Any]:
        """The analysis numbers for asset metadata and manifests (plain JSON types)."""
        out: dict[str, Any] = {
            "nn_points": self.n,
            "nn_bimodal": self.bimodal,
            "nn_bandwidth": round(self.bandwidth, 5),
            "nn_modes": [round(m, 4) for m in self.modes],
            "nn_valley": None if self.valley is None else round(self.valley, 4),
            "nn_suggested_eps": self.suggested_eps,
            "nn_cosine_quantiles": self.quantiles,
        }
        if self.bimodal:
            low, high = self.modes
            lower_peak = min(self.density_at(low), self.density_at(high))
            out["nn_valley_depth"] = round(1.0 - self.density_at(self.valley) / lower_peak, 4)
        return out


def silverman_bandwidth(values: np.ndarray) -> float:
    """Silverman's rule ``0.9 · σ · n^(−1/5)`` (at least two grid steps).

    The standard deviation, not ``min(σ, IQR/1.34)``: when one mode holds most points the IQR only sees that
    mode and the other would be under-smoothed into noise."""
    n = len(values)
    if n < 2:
        return 0.05
    return max(0.9 * float(np.std(values)) * n ** (-0.2), 2 * GRID_STEP)


def smoothed_density(values: np.ndarray, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """Binned Gaussian KDE of ``values`` (cosines) on a fixed grid over ``[-1, 1]``: (grid, density)."""
    size = round(2.0 / GRID_STEP) + 1
    grid = np.linspace(-1.0, 1.0, size)
    if len(values) == 0:
        return grid, np.zeros(size)
    index = np.clip(np.rint((np.clip(values, -1.0, 1.0) + 1.0) / GRID_STEP), 0, size - 1).astype(np.int64)
    counts = np.bincount(index, minlength=size).astype(np.float64)
    sigma = bandwidth / GRID_STEP
    half = min(int(np.ceil(5.0 * sigma)), size - 1)
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    density = np.convolve(counts, kernel, mode="same") / (len(values) * GRID_STEP)
    return grid, density


def _peaks(density: np.ndarray) -> np.ndarray:
    """Indices of local maxima (plateaus count once, at their left end), highest first."""
    left = np.concatenate([[-np.inf], density[:-1]])
    right = np.concatenate([density[1:], [-np.inf]])
    peaks = np.flatnonzero((density > left) & (density >= right) & (density > 0))
    return peaks[np.argsort(-density[peaks], kind="stable")]


def _two_modes(
    grid: np.ndarray, density: np.ndarray, min_separation: float, min_dip: float, min_height: float
) -> tuple[tuple[int, ...], int | None]:
    """The highest peak and the highest other peak separated from it with a real dip; and the valley index."""
    peaks = _peaks(density)
    if len(peaks) == 0:
        return (), None
    first = int(peaks[0])
    for other in peaks[1:]:
        other = int(other)
        if density[other] < min_height * density[first]:
            break  # peaks come highest first: the rest are tail noise
        if abs(grid[other] - grid[first]) < min_separation:
            continue
        lo, hi = sorted((first, other))
        between = density[lo : hi + 1]
        lowest = np.flatnonzero(between <= between.min() * (1 + 1e-9) + 1e-300)
        valley = lo + int(lowest[0] + lowest[-1]) // 2  # the middle of a flat (empty) stretch
        if density[valley] <= (1.0 - min_dip) * min(density[first], density[other]):
            return (lo, hi), valley
    return (first,), None


def analyse_nn_cosines(
    cosines: np.ndarray,
    *,
    bandwidth: float | None = None,
    min_separation: float = 0.1,
    min_dip: float = 0.25,
    min_height: float = 0.02,
) -> ValleyAnalysis:
    """Modes and valley of the nearest-neighbour cosines (see the module docstring for the rule).

    ``bandwidth`` is the Gaussian kernel's sigma in cosine (Silverman's rule if None); two peaks count as
    two modes if at least ``min_separation`` apart, the lower is at least ``min_height`` of the highest (tail
    noise is not a mode), and the density between them drops to at most ``1 − min_dip`` of the lower one.
    Non-finite cosines are refused.
    """
    values = np.asarray(cosines, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        raise ValueError("nearest-neighbour cosines contain NaN or infinite values")
    h = silverman_bandwidth(values) if bandwidth is None else float(bandwidth)
    if h <= 0:
        raise ValueError(f"bandwidth must be positive, got {h}")
    grid, density = smoothed_density(values, h)
    modes, valley = _two_modes(grid, density, min_separation, min_dip, min_height)
    quantiles = (
        {
            f"p{round(q * 100):02d}": round(float(v), 4)
            for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True)
        }
        if len(values)
        else {}
    )
    return ValleyAnalysis(
        n=len(values),
        grid=grid,
        density=density,
        bandwidth=h,
        modes=tuple(round(float(grid[i]), 6) for i in modes),
        valley=None if valley is None else round(float(grid[valley]), 6),
        quantiles=quantiles,
        min_separation=min_separation,
        min_dip=min_dip,
    )


def nn_similarity_png(
    cosines: np.ndarray,
    analysis: ValleyAnalysis,
    *,
    eps: float | None = None,
    eps_label: str = "",
    title: str = "nearest-neighbour cosine similarity",
    bins: int = 100,
) -> bytes:
    """PNG bytes: histogram of the NN cosines, the smoothed density, the modes, the valley and ``1 − eps``.

    Drawn with matplotlib's Agg canvas directly (no pyplot state, safe in worker threads).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(cosines, dtype=np.float64).reshape(-1)
    figure = Figure(figsize=(7.5, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    low = float(min(values.min(), 0.0)) - 0.05 if len(values) else -1.0
    if len(values):
        axes.hist(
            values, bins=bins, range=(low, 1.0), density=True, color="#9ecae1", label=f"{len(values):,} faces"
        )
    keep = analysis.grid >= low
    axes.plot(
        analysis.grid[keep],
        analysis.density[keep],
        color="#08519c",
        lw=1.5,
        label=f"KDE (h={analysis.bandwidth:.3f})",
    )
    for mode in analysis.modes:
        axes.axvline(mode, color="#08519c", ls=":", lw=1)
    if analysis.valley is not None:
        axes.axvline(analysis.valley, color="#cb181d", ls="--", lw=1.2, label=f"valley {analysis.valley:.3f}")
    if eps is not None:
        axes.axvline(
            1.0 - eps, color="#238b45", lw=1.5, label=f"1 − eps = {1.0 - eps:.3f} {eps_label}".rstrip()
        )
    axes.set_xlim(low, 1.0)
    axes.set_xlabel("cosine similarity to the nearest other face")
    axes.set_ylabel("density")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, loc="upper left")
    return figure_png(figure)
