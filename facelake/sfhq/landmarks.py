"""The landmarks table of an SFHQ part: 110 points per image, face box, validity, eye-line measures.

Each ``landmarks/<name>.npz`` holds ``landmarks``, float ``[110, 2]`` of ``(x, y)`` in the 1024² image's
pixels (made at 256² and upscaled, seed ``000``). It is read with ``np.load(allow_pickle=False)``: an npz
carrying object arrays is refused, nothing in it runs. Per image:

- ``points``: the 110 points as ``fixed_size_list<fixed_size_list<float32, 2>, 110>``, exactly as stored;
- ``box``: ``[x_min, y_min, x_max, y_max]`` over the finite points (null if none is finite);
- ``valid``: every point finite and inside the image, ``0 <= x <= size`` and ``0 <= y <= size``;
  ``invalid_reason`` says which points break it (invalid rows stay in the table AND are reported as
  problems of kind ``invalid``);
- the eye centres (means of the ``left_eye`` and ``right_eye`` groups of the declared, ASSUMED
  :class:`facelake.sfhq.settings.LandmarkIndex`), the inter-ocular distance and roll
  (:func:`facelake.sfhq.geometry.eye_line`); null when an eye group holds a non-finite point.

A file that cannot be read, lacks the ``landmarks`` key or has another shape is a problem row (``unreadable``
or ``invalid``), never a crash. The statistics are computed on the stacked ``[N, 110, 2]`` array at once.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from facelake.sfhq.geometry import eye_line
from facelake.sfhq.layout import INVALID, LANDMARKS, PartScan, SfhqPart, problems_table
from facelake.sfhq.reader import FileProblem, map_files
from facelake.sfhq.settings import IMAGE_SIZE, LANDMARK_COUNT, LandmarkIndex

KEY = "landmarks"
POINT_TYPE = pa.list_(pa.list_(pa.float32(), 2), LANDMARK_COUNT)
LANDMARKS_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string()),
        pa.field("points", POINT_TYPE),
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("valid", pa.bool_()),
        pa.field("invalid_reason", pa.string()),
        pa.field("left_eye_x", pa.float32()),
        pa.field("left_eye_y", pa.float32()),
        pa.field("right_eye_x", pa.float32()),
        pa.field("right_eye_y", pa.float32()),
        pa.field("inter_ocular", pa.float32()),
        pa.field("roll_deg", pa.float32()),
    ]
)
"""One row per readable landmarks file."""


def parse_landmarks(name: str, data: bytes) -> np.ndarray:
    """The ``[110, 2]`` float32 points of one npz file's bytes; :class:`FileProblem` if they are not that."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        if KEY not in npz.files:
            raise FileProblem(INVALID, f"no {KEY!r} array in the npz (it holds {sorted(npz.files)})")
        points = npz[KEY]
    if points.shape != (LANDMARK_COUNT, 2):
        raise FileProblem(INVALID, f"{KEY!r} has shape {points.shape}, expected ({LANDMARK_COUNT}, 2)")
    if not (np.issubdtype(points.dtype, np.floating) or np.issubdtype(points.dtype, np.integer)):
        raise FileProblem(INVALID, f"{KEY!r} has dtype {points.dtype}, expected numbers")
    return points.astype(np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class LandmarkMeasures:
    """The per-image statistics of stacked points ``[N, 110, 2]`` (arrays of length N)."""

    box: np.ndarray  # float32 [N, 4], NaN where no point is finite
    valid: np.ndarray  # bool [N]
    invalid_reason: list[str | None]
    left_eye: np.ndarray  # float32 [N, 2], NaN when the group has a non-finite point
    right_eye: np.ndarray  # float32 [N, 2]
    inter_ocular: np.ndarray  # float32 [N]
    roll_deg: np.ndarray  # float32 [N]


def _reason(finite: np.ndarray, inside: np.ndarray, points: np.ndarray, size: int) -> str | None:
    """Why one face's points are invalid (None if they are not)."""
    parts = []
    bad = np.flatnonzero(~finite)
    if bad.size:
        parts.append(f"non-finite point(s) {bad[:10].tolist()}{' ...' if bad.size > 10 else ''}")
    out = np.flatnonzero(finite & ~inside)
    if out.size:
        shown = ", ".join(f"{i} ({points[i, 0]:g}, {points[i, 1]:g})" for i in out[:5])
        more = f" and {out.size - 5} more" if out.size > 5 else ""
        parts.append(f"point(s) outside 0..{size}: {shown}{more}")
    return "; ".join(parts) or None


def measure_points(points: np.ndarray, index: LandmarkIndex, size: int = IMAGE_SIZE) -> LandmarkMeasures:
    """Box, validity and eye-line measures of stacked points ``[N, 110, 2]``, all at once."""
    points = np.asarray(points, np.float32).reshape(-1, LANDMARK_COUNT, 2)
    n = len(points)
    finite = np.isfinite(points).all(axis=2)  # [N, 110]
    inside = finite & (points >= 0).all(axis=2) & (points <= size).all(axis=2)
    valid = inside.all(axis=1)
    masked = np.where(finite[..., None], points, np.nan)
    box = np.full((n, 4), np.nan, np.float32)
    some = finite.any(axis=1)
    if some.any():
        box[some, :2] = np.nanmin(masked[some], axis=1)
        box[some, 2:] = np.nanmax(masked[some], axis=1)
    reasons = [None if ok else _reason(finite[i], inside[i], points[i], size) for i, ok in enumerate(valid)]
    eyes = [points[:, index.groups[g]].astype(np.float64).mean(axis=1) for g in ("left_eye", "right_eye")]
    iod, roll = eye_line(eyes[0][:, 0], eyes[0][:, 1], eyes[1][:, 0], eyes[1][:, 1])
    return LandmarkMeasures(
        box,
        valid,
        reasons,
        eyes[0].astype(np.float32),
        eyes[1].astype(np.float32),
        iod.astype(np.float32),
        roll.astype(np.float32),
    )


def _nullable(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, np.float32)
    return pa.array(values, pa.float32(), mask=~np.isfinite(values))


def landmarks_table(
    names: Sequence[str], points: np.ndarray, index: LandmarkIndex, size: int = IMAGE_SIZE
) -> pa.Table:
    """The :data:`LANDMARKS_SCHEMA` table of stacked points ``[N, 110, 2]``; the index label is recorded in
    the schema metadata (``landmark_index``, ``landmark_index_assumed``)."""
    points = np.ascontiguousarray(points, np.float32).reshape(-1, LANDMARK_COUNT, 2)
    measures = measure_points(points, index, size)
    flat = pa.array(points.reshape(-1), pa.float32())
    nested = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, 2), LANDMARK_COUNT)
    box_ok = np.isfinite(measures.box).all(axis=1)
    box = pa.FixedSizeListArray.from_arrays(
        pa.array(np.nan_to_num(measures.box).reshape(-1), pa.float32()), 4, mask=pa.array(~box_ok)
    )
    columns = {
        "name": pa.array(list(names), pa.string()),
        "points": nested,
        "box": box,
        "valid": pa.array(measures.valid, pa.bool_()),
        "invalid_reason": pa.array(measures.invalid_reason, pa.string()),
        "left_eye_x": _nullable(measures.left_eye[:, 0]),
        "left_eye_y": _nullable(measures.left_eye[:, 1]),
        "right_eye_x": _nullable(measures.right_eye[:, 0]),
        "right_eye_y": _nullable(measures.right_eye[:, 1]),
        "inter_ocular": _nullable(measures.inter_ocular),
        "roll_deg": _nullable(measures.roll_deg),
    }
    metadata = {
        "landmark_index": json.dumps(index.model_dump(), sort_keys=True),
        "landmark_index_assumed": str(index.assumed).lower(),
        "landmark_index_label": index.label(),
    }
    return pa.table(columns, schema=LANDMARKS_SCHEMA.with_metadata(metadata))


def table_points(table: pa.Table) -> np.ndarray:
    """The ``points`` column as float32 ``[N, 110, 2]``."""
    column = table.column("points").combine_chunks()
    return column.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, LANDMARK_COUNT, 2)


@dataclass(frozen=True, eq=False)
class LandmarksResult:
    """The landmarks table and the problems met on the way (unreadable files, invalid rows)."""

    table: pa.Table
    problems: pa.Table


def read_landmarks(
    part: SfhqPart,
    names: Sequence[str],
    index: LandmarkIndex | None = None,
    *,
    size: int = IMAGE_SIZE,
    threads: int | None = None,
    batch: int = 4096,
) -> LandmarksResult:
    """Read ``names``' landmark files (in a thread pool) into one table, in ``names`` order.

    Rows are computed in batches of ``batch`` files. Unreadable or malformed files and invalid rows are
    problem rows (modality ``landmarks``); invalid rows stay in the table with ``valid = false``.
    """
    index = index or LandmarkIndex()
    kept_names: list[str] = []
    stacked: list[np.ndarray] = []
    rows: list[tuple[str, str, str | None, str, str]] = []
    tables = [landmarks_table([], np.zeros((0, LANDMARK_COUNT, 2), np.float32), index, size)]

    def flush() -> None:
        if kept_names:
            tables.append(landmarks_table(kept_names, np.stack(stacked), index, size))
            kept_names.clear()
            stacked.clear()

    for name, result in map_files(part, LANDMARKS, names, parse_landmarks, threads=threads, chunk=64):
        if isinstance(result, FileProblem):
            rows.append((name, LANDMARKS, part.relative(LANDMARKS, name), result.kind, result.problem))
            continue
        kept_names.append(name)
        stacked.append(result)
        if len(kept_names) >= batch:
            flush()
    flush()
    table = pa.concat_tables(tables)
    for name, reason in zip(table["name"].to_pylist(), table["invalid_reason"].to_pylist(), strict=True):
        if reason is not None:
            rows.append((name, LANDMARKS, part.relative(LANDMARKS, name), INVALID, reason))
    return LandmarksResult(table, problems_table(rows))


def read_part_landmarks(scan: PartScan, index: LandmarkIndex | None = None, **options) -> LandmarksResult:
    """:func:`read_landmarks` over every image of a scanned part that has a landmarks file."""
    return read_landmarks(scan.part, scan.names(LANDMARKS), index, **options)
