"""The exploratory plots of an SFHQ part, as PNG bytes (matplotlib's Agg canvas, no pyplot global state).

Each plot has a function that computes its numbers (tested) and one that draws them:

- :func:`mean_landmark_layout` / :func:`landmark_layout_plot`: the mean of the valid faces' 110 points, each
  face's points first normalised to its landmark box (``(x - x_min) / (x_max - x_min)``, same for y), over a
  seeded sample; coloured by the declared (ASSUMED) index groups;
- :func:`class_area_plot`: the distribution of each class's area fraction;
- :func:`measures_plot`: face / hair / background fractions, inter-ocular distance and roll (maps and
  landmarks), hairline height over the inter-ocular distance;
- :func:`hairline_summary` / :func:`hairline_plot`: how many maps have a hairline in the skin centre column,
  and the distribution of the hairline coverage;
- :func:`quantile_examples` / :func:`contact_sheet`: example images nearest each quantile of a measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from facelake.lake.images import decode_rgb
from facelake.lake.plots import figure_png
from facelake.sfhq.landmarks import table_points
from facelake.sfhq.layout import IMAGES, SfhqPart
from facelake.sfhq.reader import FileProblem, map_files
from facelake.sfhq.segmentation import CLASSES, FRACTION_COLUMNS
from facelake.sfhq.settings import LANDMARK_COUNT, LandmarkIndex


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _empty(axis: Any, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes)
    axis.set_xticks([])
    axis.set_yticks([])


# --- mean landmark layout --------------------------------------------------------------------------------


def mean_landmark_layout(landmarks: pa.Table, sample: int = 2000, seed: int = 0) -> tuple[np.ndarray, int]:
    """The mean box-normalised layout ``[110, 2]`` over a seeded sample of at most ``sample`` valid faces
    whose box has a positive width and height, and how many faces it averages (NaN layout for none)."""
    valid = np.asarray(landmarks.column("valid").to_pylist(), bool)
    points = table_points(landmarks)[valid].astype(np.float64)
    low, high = points.min(axis=1), points.max(axis=1)
    size = high - low
    usable = (size > 0).all(axis=1)
    points, low, size = points[usable], low[usable], size[usable]
    if len(points) > sample:
        keep = np.sort(np.random.default_rng(seed).choice(len(points), size=sample, replace=False))
        points, low, size = points[keep], low[keep], size[keep]
    if not len(points):
        return np.full((LANDMARK_COUNT, 2), np.nan), 0
    return ((points - low[:, None]) / size[:, None]).mean(axis=0), len(points)


def landmark_layout_plot(
    landmarks: pa.Table, index: LandmarkIndex, sample: int = 2000, seed: int = 0
) -> bytes:
    """Scatter of the mean layout, coloured by index group; says that the order is assumed."""
    layout, faces = mean_landmark_layout(landmarks, sample, seed)
    figure = _figure(5.2, 5.6)
    axis = figure.subplots()
    if faces == 0:
        _empty(axis, "no valid landmarks")
    else:
        assigned = np.zeros(LANDMARK_COUNT, bool)
        for group, indices in index.groups.items():
            axis.scatter(layout[indices, 0], layout[indices, 1], s=14, label=group)
            assigned[indices] = True
        rest = np.flatnonzero(~assigned)
        if rest.size:
            axis.scatter(layout[rest, 0], layout[rest, 1], s=10, c="grey", marker="x", label="unassigned")
        axis.set_xlim(-0.05, 1.05)
        axis.set_ylim(1.05, -0.05)
        axis.set_aspect("equal")
        axis.legend(fontsize=6, loc="lower right", ncol=2)
    state = "ASSUMED order" if index.assumed else "verified order"
    axis.set_title(f"mean landmark layout, {faces} faces (box-normalised; groups: {state})", fontsize=8)
    return figure_png(figure)


# --- class areas and measures ----------------------------------------------------------------------------


def class_area_plot(segmentations: pa.Table) -> bytes:
    """One histogram per class of its area fraction across the part's maps."""
    figure = _figure(12, 8.6)
    axes = figure.subplots(4, 5).reshape(-1)
    for axis, name, column in zip(axes, CLASSES, FRACTION_COLUMNS, strict=False):
        values = _column(segmentations, column)
        if values.size:
            axis.hist(values, bins=30, color="tab:blue")
            axis.set_title(f"{name} (mean {np.nanmean(values):.3f})", fontsize=8)
        else:
            _empty(axis, name)
        axis.tick_params(labelsize=6)
    axes[-1].axis("off")
    figure.suptitle(f"area fraction per class ({segmentations.num_rows} maps)")
    return figure_png(figure)


def measures_plot(segmentations: pa.Table, landmarks: pa.Table | None = None) -> bytes:
    """Histograms of the derived measures (maps; landmarks overlaid where they give the same measure)."""
    panels = (
        ("face_fraction", None, "face fraction"),
        ("hair_fraction", None, "hair fraction"),
        ("background_fraction", None, "background fraction"),
        ("inter_ocular", "inter_ocular", "inter-ocular distance (px)"),
        ("roll_deg", "roll_deg", "roll (degrees)"),
        ("hairline_height_iod", None, "hairline height / inter-ocular"),
    )
    figure = _figure(12, 6)
    for axis, (column, landmark_column, title) in zip(figure.subplots(2, 3).reshape(-1), panels, strict=True):
        values = _column(segmentations, column)
        values = values[np.isfinite(values)]
        drawn = False
        if values.size:
            axis.hist(values, bins=30, alpha=0.7, label="maps")
            drawn = True
        if landmarks is not None and landmark_column is not None:
            other = _column(landmarks, landmark_column)
            other = other[np.isfinite(other)]
            if other.size:
                axis.hist(other, bins=30, alpha=0.5, label="landmarks (assumed order)")
                axis.legend(fontsize=6)
                drawn = True
        if not drawn:
            _empty(axis, "no values")
        axis.set_title(title, fontsize=9)
        axis.tick_params(labelsize=7)
    return figure_png(figure)


@dataclass(frozen=True)
class HairlineSummary:
    """Maps with a hairline in the skin centre column, without one (skin but no hair above), without skin;
    and the hairline coverage's mean and quartiles over the maps with skin."""

    with_hairline: int
    without_hairline: int
    without_skin: int
    coverage_mean: float
    coverage_quartiles: tuple[float, float, float]


def hairline_summary(segmentations: pa.Table) -> HairlineSummary:
    """The numbers of :func:`hairline_plot`."""
    hairline = _column(segmentations, "hairline_y")
    center = _column(segmentations, "skin_center_x")
    coverage = _column(segmentations, "hairline_coverage")
    skin = np.isfinite(center)
    found = skin & np.isfinite(hairline)
    covered = coverage[np.isfinite(coverage)]
    quartiles = (
        tuple(float(q) for q in np.quantile(covered, (0.25, 0.5, 0.75))) if covered.size else (np.nan,) * 3
    )
    return HairlineSummary(
        int(found.sum()),
        int((skin & ~found).sum()),
        int((~skin).sum()),
        float(covered.mean()) if covered.size else float("nan"),
        quartiles,  # type: ignore[arg-type]
    )


def hairline_plot(segmentations: pa.Table) -> bytes:
    """Hairline coverage histogram, and the maps with / without a hairline in the skin centre column."""
    summary = hairline_summary(segmentations)
    figure = _figure(10, 3.6)
    left, right = figure.subplots(1, 2)
    coverage = _column(segmentations, "hairline_coverage")
    coverage = coverage[np.isfinite(coverage)]
    if coverage.size:
        left.hist(coverage, bins=np.linspace(0, 1, 21))
    else:
        _empty(left, "no skin in any map")
    left.set_title(f"hairline coverage (mean {summary.coverage_mean:.3f})", fontsize=9)
    left.set_xlabel("fraction of skin columns with hair above the skin")
    labels = ["hairline", "no hair above skin", "no skin"]
    counts = [summary.with_hairline, summary.without_hairline, summary.without_skin]
    right.bar(labels, counts, color=["tab:green", "tab:orange", "tab:grey"])
    for x, count in enumerate(counts):
        right.text(x, count, str(count), ha="center", va="bottom", fontsize=8)
    right.set_title("hairline in the skin centre column", fontsize=9)
    return figure_png(figure)


# --- examples per quantile -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantileExamples:
    """The names whose ``measure`` is nearest its ``quantile`` value ``value``."""

    quantile: float
    value: float
    names: list[str]


def quantile_examples(
    table: pa.Table,
    measure: str,
    quantiles: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    per_quantile: int = 4,
) -> list[QuantileExamples]:
    """For each quantile of ``measure`` (rows with a value), the ``per_quantile`` names nearest that value
    (ties: table order); a name is shown once, at its first quantile."""
    if measure not in table.column_names:
        raise KeyError(f"no column {measure!r} to take quantiles of (columns: {table.column_names})")
    values = _column(table, measure)
    names = np.asarray(table.column("name").to_pylist(), object)
    finite = np.isfinite(values)
    values, names = values[finite], names[finite]
    if not values.size:
        return []
    used: set[str] = set()
    examples = []
    for q in quantiles:
        value = float(np.quantile(values, q))
        order = np.lexsort((np.arange(len(values)), np.abs(values - value)))
        picked = [str(names[i]) for i in order if names[i] not in used][:per_quantile]
        used.update(picked)
        examples.append(QuantileExamples(float(q), value, picked))
    return examples


def contact_sheet(
    part: SfhqPart,
    examples: Sequence[QuantileExamples],
    measure: str,
    *,
    thumb: int = 128,
    threads: int | None = None,
) -> bytes:
    """A grid of thumbnails, one row per quantile, titled with the quantile and the measure's value."""
    names = [name for example in examples for name in example.names]

    def load(name: str, data: bytes) -> np.ndarray:
        image = Image.fromarray(decode_rgb(data))
        image.thumbnail((thumb, thumb))
        return np.asarray(image)

    thumbs = {name: result for name, result in map_files(part, IMAGES, names, load, threads=threads)}
    columns = max((len(e.names) for e in examples), default=1) or 1
    figure = _figure(1.6 * columns + 1.2, 1.7 * max(len(examples), 1) + 0.4)
    axes = np.asarray(figure.subplots(max(len(examples), 1), columns, squeeze=False))
    for row, example in enumerate(examples):
        for col in range(columns):
            axis = axes[row, col]
            axis.set_xticks([])
            axis.set_yticks([])
            if col >= len(example.names):
                axis.axis("off")
                continue
            name = example.names[col]
            picture = thumbs.get(name)
            if isinstance(picture, np.ndarray):
                axis.imshow(picture)
            else:
                problem = picture.problem if isinstance(picture, FileProblem) else "missing"
                _empty(axis, f"unreadable\n{problem[:30]}")
            axis.set_xlabel(name, fontsize=5)
        axes[row, 0].set_ylabel(f"q={example.quantile:g}\n{measure}={example.value:.3g}", fontsize=7)
    if not examples:
        _empty(axes[0, 0], f"no values of {measure}")
    figure.suptitle(f"examples per quantile of {measure}", fontsize=9)
    return figure_png(figure)
