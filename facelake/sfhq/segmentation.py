"""Statistics of SFHQ's face-parsing maps: class areas, eye centres and the hairline, per image.

``segmentations/<name>.png`` is a mode-L PNG (a palette PNG is read as its indices) holding one of the 19
BiSeNet / CelebAMask-HQ classes per pixel (:data:`CLASSES`). Per map, in the continuous coordinates of
:mod:`facelake.sfhq.geometry` (pixel centres at ``+0.5``):

- ``frac_<class>``: the fraction of the map's pixels in each class (19 columns, summing to 1);
  ``face_fraction`` = classes 1-13 (skin, brows, eyes, glasses, ears, earring, nose, mouth, lips),
  ``hair_fraction`` = class 17, ``background_fraction`` = class 0;
- ``l_eye_x, l_eye_y`` / ``r_eye_x, r_eye_y``: centroids of classes 4 (``l_eye``) and 5 (``r_eye``), null
  when the class is absent; ``inter_ocular`` and ``roll_deg`` from them
  (:func:`facelake.sfhq.geometry.eye_line`: ordered by x, so the labels' side convention does not matter);
- the hairline, measured in ONE column, the skin centre column ``skin_center_x = floor(skin centroid x)``:
  ``hairline_y`` is the top edge (row index) of the topmost skin (class 1) pixel of that column when hair
  (class 17) lies anywhere above it in that column, else null (bald, hat, or no hair over the forehead);
  ``hairline_height = eye_line_y - hairline_y`` (pixels from the hairline down to the mean of the two eye
  centroids' y) and ``hairline_height_iod`` = that over ``inter_ocular``;
- ``hairline_coverage``: over every column that holds skin, the fraction whose topmost skin pixel has hair
  somewhere above it (1: hair all along the top of the skin; 0: none), null without skin.

A map that cannot be decoded, is not mode L/P, has another size than the images, or holds a label outside
0-18 is a problem row (``unreadable`` / ``invalid``, e.g. "labels outside 0-18: 25 (4096 px)") and has no
statistics row. Maps are decoded in a thread pool (PIL releases the GIL while decoding); class counts come
from PIL's C histogram, centroids and the hairline from boolean masks cropped to the class's bounding box.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from facelake.sfhq.geometry import eye_line
from facelake.sfhq.layout import INVALID, SEGMENTATIONS, PartScan, SfhqPart, problems_table
from facelake.sfhq.reader import FileProblem, map_files
from facelake.sfhq.settings import IMAGE_SIZE

CLASSES = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)
"""The 19 BiSeNet / CelebAMask-HQ face-parsing classes, by label (DESIGN §5)."""
N_CLASSES = len(CLASSES)
BACKGROUND, SKIN, L_EYE, R_EYE, HAIR = 0, 1, 4, 5, 17
FACE_CLASSES = tuple(range(1, 14))
"""Skin through lower lip: the face without hair, hat, neck and clothes."""
FRACTION_COLUMNS = tuple(f"frac_{name}" for name in CLASSES)

_MEASURES = (
    "face_fraction",
    "hair_fraction",
    "background_fraction",
    "l_eye_x",
    "l_eye_y",
    "r_eye_x",
    "r_eye_y",
    "inter_ocular",
    "roll_deg",
)
SEGMENTATION_SCHEMA = pa.schema(
    [pa.field("name", pa.string()), pa.field("width", pa.int32()), pa.field("height", pa.int32())]
    + [pa.field(column, pa.float32()) for column in (*FRACTION_COLUMNS, *_MEASURES)]
    + [pa.field("skin_center_x", pa.int32()), pa.field("hairline_y", pa.int32())]
    + [
        pa.field(column, pa.float32())
        for column in ("hairline_height", "hairline_height_iod", "hairline_coverage")
    ]
)
"""One row per usable map."""


@dataclass(frozen=True, eq=False)
class MapStats:
    """What one map gives before the batch-wise derived measures (NaN / -1 where absent)."""

    width: int
    height: int
    counts: np.ndarray  # int64 [19]
    eyes: np.ndarray  # float64 [4]: class-4 x, y, class-5 x, y (NaN when absent)
    skin_center_x: int  # -1 without skin
    hairline_y: int  # -1 without a hairline in the skin centre column
    hairline_coverage: float  # NaN without skin


STRIDE = 4
"""Sampling step of the coarse grid that finds a class's region before it is measured exactly."""


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Row and column bounds ``r0, r1, c0, c1`` (half-open) of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[r0:r1].any(axis=0))
    return r0, r1, int(cols[0]), int(cols[-1]) + 1


def _region(labels: np.ndarray, coarse: np.ndarray, label: int, count: int) -> tuple[np.ndarray, int, int]:
    """The mask of ``label`` on a window that holds all its ``count`` pixels, and the window's origin.

    The window is the class's bounding box on the coarse grid (every ``STRIDE``-th row and column) widened by
    a stride; if it misses any pixel (the pixel count says so) the whole map is used: exact either way."""
    hits = coarse == label
    if hits.any():
        r0, r1, c0, c1 = _bounds(hits)
        r0, c0 = max(0, (r0 - 1) * STRIDE + 1), max(0, (c0 - 1) * STRIDE + 1)
        r1, c1 = r1 * STRIDE, c1 * STRIDE
        mask = labels[r0:r1, c0:c1] == label
        if int(np.count_nonzero(mask)) == count:
            return mask, r0, c0
    return labels == label, 0, 0


def _centroid(
    mask: np.ndarray, count: int, r0: int = 0, c0: int = 0
) -> tuple[float, float, tuple[int, int, int, int]]:
    """Centroid (pixel centres) of a mask with ``count`` > 0 pixels whose window starts at row ``r0``, column
    ``c0``, from its projections on its bounding box (integer sums: exact), and that box in map coordinates."""
    b0, b1, a0, a1 = _bounds(mask)
    crop = mask[b0:b1, a0:a1]
    r0, r1, c0, c1 = r0 + b0, r0 + b1, c0 + a0, c0 + a1
    x_sum = int(crop.sum(axis=0, dtype=np.int64) @ np.arange(c0, c1, dtype=np.int64))
    y_sum = int(crop.sum(axis=1, dtype=np.int64) @ np.arange(r0, r1, dtype=np.int64))
    return x_sum / count + 0.5, y_sum / count + 0.5, (r0, r1, c0, c1)


def map_statistics(labels: np.ndarray, counts: np.ndarray | None = None) -> MapStats:
    """The statistics of one label map ``[H, W]`` uint8 (labels 0..18 checked by the caller).

    ``counts``: the per-label pixel counts if already known (PIL's histogram), else counted here.
    """
    labels = np.asarray(labels)
    height, width = labels.shape
    if counts is None:
        counts = np.bincount(labels.reshape(-1), minlength=N_CLASSES)
        if len(counts) > N_CLASSES:
            raise ValueError(
                f"labels outside 0-{N_CLASSES - 1}: {np.flatnonzero(counts[N_CLASSES:]) + N_CLASSES}"
            )
    counts = np.asarray(counts, np.int64)
    coarse = labels[::STRIDE, ::STRIDE]
    eyes = np.full(4, np.nan)
    for slot, label in enumerate((L_EYE, R_EYE)):
        if counts[label]:
            mask, r0, c0 = _region(labels, coarse, label, int(counts[label]))
            x, y, _ = _centroid(mask, int(counts[label]), r0, c0)
            eyes[2 * slot : 2 * slot + 2] = (x, y)
    center, hairline, coverage = -1, -1, float("nan")
    if counts[SKIN]:
        mask, r0, c0 = _region(labels, coarse, SKIN, int(counts[SKIN]))
        x, _, (r0_, r1, c0_, c1) = _centroid(mask, int(counts[SKIN]), r0, c0)
        center = int(np.floor(x))
        column = labels[:, center]
        top = int(np.argmax(column == SKIN))
        if column[top] == SKIN and (column[:top] == HAIR).any():
            hairline = top
        has_skin = mask[r0_ - r0 : r1 - r0, c0_ - c0 : c1 - c0].any(axis=0)  # over the skin's box columns
        # hair lies above a column's topmost skin pixel iff its first hair-or-skin pixel from the top is hair
        above = labels[:r1, c0_:c1]
        first = ((above == HAIR) | (above == SKIN)).argmax(axis=0)
        covered = has_skin & (above[first, np.arange(c1 - c0_)] == HAIR)
        coverage = int(covered.sum()) / int(has_skin.sum())
    return MapStats(width, height, counts, eyes, center, hairline, coverage)


def _pixels(image: Image.Image) -> np.ndarray:
    """The labels of a decoded L/P image as ``[H, W]`` uint8: a zero-copy view through Pillow's Arrow export
    when the image is one memory block (it keeps the image's memory alive), else a copy."""
    width, height = image.size
    try:
        exported = pa.array(image)
    except (ValueError, TypeError, AttributeError, NotImplementedError, pa.ArrowException):
        exported = None
    if exported is not None and exported.type == pa.uint8() and len(exported) == width * height:
        return exported.to_numpy(zero_copy_only=True).reshape(height, width)
    return np.asarray(image)


def parse_map(name: str, data: bytes, size: int | None = IMAGE_SIZE) -> MapStats:
    """Decode one map's PNG bytes and compute its statistics; :class:`FileProblem` when it is unusable."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("L", "P"):
            raise FileProblem(INVALID, f"mode {image.mode}, expected L (one class label per pixel)")
        if size is not None and image.size != (size, size):
            raise FileProblem(INVALID, f"size {image.size[0]}x{image.size[1]}, expected {size}x{size}")
        image.load()
        histogram = np.asarray(image.histogram(), np.int64)
        labels = _pixels(image)
    outside = np.flatnonzero(histogram[N_CLASSES:]) + N_CLASSES
    if outside.size:
        shown = ", ".join(f"{label} ({histogram[label]} px)" for label in outside[:5])
        raise FileProblem(INVALID, f"labels outside 0-{N_CLASSES - 1}: {shown}")
    return map_statistics(labels, histogram[:N_CLASSES])


def _nullable(values: np.ndarray, kind: pa.DataType | None = None) -> pa.Array:
    kind = kind or pa.float32()
    values = np.asarray(values, np.float64)
    mask = ~np.isfinite(values)
    return pa.array(np.where(mask, 0, values).astype(kind.to_pandas_dtype()), kind, mask=mask)


def segmentation_table(names: Sequence[str], stats: Sequence[MapStats]) -> pa.Table:
    """The :data:`SEGMENTATION_SCHEMA` table of per-map statistics (derived measures computed at once)."""
    n = len(stats)
    counts = np.array([s.counts for s in stats], np.int64).reshape(n, N_CLASSES)
    pixels = np.array([s.width * s.height for s in stats], np.int64)
    fractions = (counts / np.maximum(pixels, 1)[:, None]).astype(np.float32)
    eyes = np.array([s.eyes for s in stats], np.float64).reshape(n, 4)
    iod, roll = eye_line(eyes[:, 0], eyes[:, 1], eyes[:, 2], eyes[:, 3])
    center = np.array([s.skin_center_x for s in stats], np.float64)
    hairline = np.array([s.hairline_y for s in stats], np.float64)
    center[center < 0], hairline[hairline < 0] = np.nan, np.nan
    height = (eyes[:, 1] + eyes[:, 3]) / 2 - hairline
    columns: dict[str, pa.Array] = {
        "name": pa.array(list(names), pa.string()),
        "width": pa.array([s.width for s in stats], pa.int32()),
        "height": pa.array([s.height for s in stats], pa.int32()),
    }
    for label, column in enumerate(FRACTION_COLUMNS):
        columns[column] = pa.array(fractions[:, label], pa.float32())
    face = counts[:, list(FACE_CLASSES)].sum(axis=1) / np.maximum(pixels, 1)
    columns["face_fraction"] = pa.array(face.astype(np.float32))
    columns["hair_fraction"] = pa.array(fractions[:, HAIR])
    columns["background_fraction"] = pa.array(fractions[:, BACKGROUND])
    for slot, column in enumerate(("l_eye_x", "l_eye_y", "r_eye_x", "r_eye_y")):
        columns[column] = _nullable(eyes[:, slot])
    columns["inter_ocular"] = _nullable(iod)
    columns["roll_deg"] = _nullable(roll)
    columns["skin_center_x"] = _nullable(center, pa.int32())
    columns["hairline_y"] = _nullable(hairline, pa.int32())
    columns["hairline_height"] = _nullable(height)
    columns["hairline_height_iod"] = _nullable(height / iod)
    columns["hairline_coverage"] = _nullable(np.array([s.hairline_coverage for s in stats], np.float64))
    return pa.table(columns, schema=SEGMENTATION_SCHEMA)


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """The statistics table and the maps that could not be used."""

    table: pa.Table
    problems: pa.Table


def read_segmentations(
    part: SfhqPart,
    names: Sequence[str],
    *,
    size: int | None = IMAGE_SIZE,
    threads: int | None = None,
    chunk: int = 8,
) -> SegmentationResult:
    """Statistics of ``names``' maps (decoded in a thread pool), in ``names`` order, and their problems."""
    kept: list[str] = []
    stats: list[MapStats] = []
    rows: list[tuple[str, str, str | None, str, str]] = []

    def parse(name: str, data: bytes) -> MapStats:
        return parse_map(name, data, size)

    for name, result in map_files(part, SEGMENTATIONS, names, parse, threads=threads, chunk=chunk):
        if isinstance(result, FileProblem):
            rows.append(
                (name, SEGMENTATIONS, part.relative(SEGMENTATIONS, name), result.kind, result.problem)
            )
        else:
            kept.append(name)
            stats.append(result)
    return SegmentationResult(segmentation_table(kept, stats), problems_table(rows))


def read_part_segmentations(scan: PartScan, **options) -> SegmentationResult:
    """:func:`read_segmentations` over every image of a scanned part that has a map."""
    return read_segmentations(scan.part, scan.names(SEGMENTATIONS), **options)
